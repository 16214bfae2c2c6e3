"""Headless execution of the research notebooks, and the filter that commits them clean.

    python -m cifar_ae notebooks --preset smoke v0 v1     # every notebook if no NAME is given
    python -m cifar_ae notebooks --preset quick v1 -p COMPARE_UPSAMPLING=False   # other parameters: -p NAME=VALUE

executes `notebooks/<stem>.ipynb` with papermill into `<runs>/notebooks/<stem>/<preset>-s<seed>/`:
`<stem>.ipynb` (executed, with outputs), `<stem>.html` (nbconvert, readable without Jupyter) and
`timing.json` (wall time, parameters, and each trial run the notebook used: reused or trained, its numbers).
Papermill runs the notebooks on the Jupyter kernel named ``python3`` (ipykernel's, installed with it).

Every notebook starts with a cell tagged ``parameters`` (PRESET, SEED, CIFAR10_DIR, RUNS, FORCE, and for the study
notebooks VARIANT and CHANGES) that papermill overrides. The display helpers the notebooks call are in
`cifar_ae.notebooks`.

Committed notebooks carry no outputs; ``python -m cifar_ae.notebooks_run strip FILE...`` cleans them (also as a
pre-commit hook and a git clean filter: see .pre-commit-config.yaml and .gitattributes).
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .atomic import write_atomic
from .runs import named_folder

REPO_DIR = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_DIR / "notebooks"
KERNEL = "python3"
PARAMETERS = ("PRESET", "SEED", "CIFAR10_DIR", "RUNS")  # every notebook's parameters cell has these


@dataclass(frozen=True)
class NotebookSpec:
    stem: str                 # notebooks/<stem>.ipynb
    alias: str                # short name for the command line
    runs: tuple               # (trial, variant or None) for each run folder the notebook uses
    title: str


# A variant is a trial run with fields changed (run_trial(..., variant="upsampling", model_args={...})). Its run
# key differs, so it lives in <runs>/<trial>/<preset>-s<seed>-<variant> and never reuses or overwrites the plain run.

NOTEBOOKS = {s.stem: s for s in [
    NotebookSpec("cifar_classification_v0", "v0", (("v0-mlp-ae", None), ("v0-dense", None), ("v0-conv1d", None)),
                 "MLP autoencoder, then dense and 1D-CNN classifiers on its features"),
    NotebookSpec("cifar_classification_v1", "v1",
                 (("v1-cnn-ae", None), ("v1-cnn-ae", "upsampling"), ("v1-feature-classifier", None)),
                 "Conv autoencoder (Conv2DTranspose vs UpSampling2D), classifier on frozen features, t-SNE"),
    NotebookSpec("cifar_classification_v2_no_augmentation", "v2-noaug", (("v2-joint-noaug", None),),
                 "Joint reconstruction + classification, no augmentation"),
    NotebookSpec("cifar_classification_v2_with_augmentation_adam", "v2-aug-adam", (("v2-joint-aug-adam", None),),
                 "Joint training with augmentation and class weights, Adam"),
    NotebookSpec("cifar_classification_v2_with_augmentation_sgd", "v2-aug-sgd", (("v2-joint-aug-sgd", None),),
                 "Joint training with augmentation, SGD, two-Dense head"),
    NotebookSpec("beyond_the_study_v3", "v3", (("v3-joint-resnet-patch", None),),
                 "The residual joint model, its tricks, the ablation and the time-to-accuracy curve"),
    # an experiment row's run lies in <runs>/<file>/<row>/<preset>-s<seed>: its "trial" here is that path's start
    NotebookSpec("beyond_the_study_v4", "v4", (("v4_honest/recon80", None),),
                 "The honest joint model: the recipe, the joint check, its controls, the frontier and the protocol"),
    NotebookSpec("anomaly_detection", "anomaly", (),
                 "Anomaly detection from the autoencoders: one-class, held-out classes, corruptions"),
]}


class NotebookFailed(ValueError):
    """A notebook raised while executing; the message names the cell and where the executed copy is."""


# --------------------------------------------------------------------------- names and folders

def resolve(names) -> list[NotebookSpec]:
    """Notebook stems, aliases (v0, v1, v2-noaug, ...), paths or trial names -> specs; none -> all notebooks."""
    if not names:
        return list(NOTEBOOKS.values())
    specs = []
    for name in names:
        key = Path(str(name)).name.removesuffix(".ipynb")
        match = [s for s in NOTEBOOKS.values()
                 if key in (s.stem, s.alias) or any(t == key and v is None for t, v in s.runs)]
        if len(match) != 1:
            valid = ", ".join(f"{s.alias} ({s.stem})" for s in NOTEBOOKS.values())
            raise ValueError(f"unknown notebook '{name}'; valid notebooks: {valid}.")
        if match[0] not in specs:
            specs.append(match[0])
    return specs


def runs_root(runs=None) -> Path:
    """The trial runs root: `runs`, else $CIFAR_AE_RUNS, else the repo's runs/ (not the notebook's folder)."""
    return Path(runs or os.environ.get("CIFAR_AE_RUNS") or REPO_DIR / "runs").expanduser().resolve()


def output_dir(spec, preset, seed, out=None, runs=None) -> Path:
    return Path(out or runs_root(runs) / "notebooks") / spec.stem / f"{preset}-s{seed}"


def notebook_parameters(path) -> dict:
    """Names and default values assigned in a notebook's `parameters` cell."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
    raise ValueError(f"{path}: no cell tagged 'parameters'.")


# --------------------------------------------------------------------------- headless execution

def _check_kernel(kernel):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise ValueError(f"no Jupyter kernel named '{kernel}'; install one with `python -m ipykernel install --user`.") from None


def _run_record(trial, variant, preset, seed, runs, started, force):
    run = named_folder(runs, trial, preset, seed, variant or None)
    metrics_path = run / "metrics.json"
    rec = {"trial": trial, "variant": variant, "run": str(run)}
    if not metrics_path.is_file():
        return {**rec, "status": "missing"}
    m = json.loads(metrics_path.read_text())
    rec["status"] = "trained" if force or metrics_path.stat().st_mtime >= started else "reused"
    for k in ("test_accuracy", "balanced_accuracy", "recon_mse", "recon_psnr", "epochs", "train_seconds", "study"):
        if k in m:
            rec[k] = m[k]
    return rec


def _clean_streams(nb):
    """Merge stream outputs and keep only what a terminal would show after carriage returns (progress bars)."""
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = terminal_text(out["text"])
    return nb


def terminal_text(text: str) -> str:
    """What a terminal shows for `text`: a carriage return goes back to the line's start and a backspace one
    character left, each overwriting what follows (the Keras progress bar's redraws), so only the final state stays."""
    lines, line, pos = [], [], 0
    for ch in text:
        if ch == "\n":
            lines.append("".join(line).rstrip())
            line, pos = [], 0
        elif ch == "\r":
            pos = 0
        elif ch == "\b":
            pos = max(0, pos - 1)
        else:
            if pos < len(line):
                line[pos] = ch
            else:
                line.append(ch)
            pos += 1
    return "\n".join(lines + ["".join(line).rstrip()])


def export_html(nb, path):
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter().from_notebook_node(nb)
    return write_atomic(path, lambda tmp: tmp.write_text(body, encoding="utf-8"))


@contextlib.contextmanager
def _package_on_kernel_path():
    """The kernel imports the cifar_ae this process runs, even from a checkout whose `pip install -e .` points
    elsewhere (or is missing): the kernel inherits PYTHONPATH, with this repo first."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_DIR)] + ([old] if old else []))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def execute(name, preset="quick", seed=0, runs=None, out=None, cifar10_dir=None, force=False, parameters=None,
            kernel=KERNEL, progress_bar=False) -> dict:
    """Execute one notebook with papermill; returns the timing record (also written as timing.json).

    The executed notebook and its HTML are written even when a cell fails: then record["ok"] is False and
    record["error"] says which cell raised what.
    """
    import nbformat
    import papermill as pm
    from .trials import PRESETS
    (spec,) = resolve([name])
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}.")
    source = NOTEBOOK_DIR / f"{spec.stem}.ipynb"
    defaults = notebook_parameters(source)
    params = {**(parameters or {}), "PRESET": preset, "SEED": int(seed), "RUNS": str(runs_root(runs))}
    if "FORCE" in defaults or force:  # the anomaly notebook has no FORCE: asking for one there is an error below
        params["FORCE"] = bool(force)
    cifar10_dir = cifar10_dir or os.environ.get("CIFAR10_DIR")  # resolved here: the kernel runs in notebooks/
    if cifar10_dir:
        params["CIFAR10_DIR"] = str(Path(cifar10_dir).expanduser().resolve())
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]} for {spec.stem}; valid parameters: {', '.join(defaults)}.")
    _check_kernel(kernel)
    folder = output_dir(spec, preset, seed, out, runs)
    folder.mkdir(parents=True, exist_ok=True)
    out_nb, out_html = folder / f"{spec.stem}.ipynb", folder / f"{spec.stem}.html"

    started_wall, t0 = time.time(), time.perf_counter()
    error = None
    try:
        with _package_on_kernel_path():
            pm.execute_notebook(str(source), str(out_nb), parameters=params, kernel_name=kernel,
                                cwd=str(NOTEBOOK_DIR), progress_bar=progress_bar)
    except pm.PapermillExecutionError as e:
        error = f"In [{e.exec_count}] raised {e.ename}: {e.evalue}".splitlines()[0]
    except Exception as e:  # the kernel died (e.g. out of memory) or would not start
        error = f"{type(e).__name__}: {e}".splitlines()[0]
    seconds = time.perf_counter() - t0

    if out_nb.is_file():
        nb = _clean_streams(nbformat.read(out_nb, as_version=4))
        nbformat.write(nb, out_nb)
        export_html(nb, out_html)
    record = {"notebook": spec.stem, "source": str(source), "preset": preset, "seed": int(seed), "parameters": params,
              "kernel": kernel, "ok": error is None, "error": error,
              "started": datetime.fromtimestamp(started_wall, timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(seconds, 1), "output": str(out_nb), "html": str(out_html),
              "runs": [_run_record(t, v, preset, seed, Path(params["RUNS"]), started_wall - 1, force) for t, v in spec.runs]}
    write_atomic(folder / "timing.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    return record


def _fmt_run(r) -> str:
    label = r["trial"] + (f" [{r['variant']}]" if r["variant"] else "")
    if r["status"] == "missing":
        return f"{label} missing"
    parts = []
    if "recon_mse" in r:
        parts.append(f"MSE {r['recon_mse']:.5f}")
    if "test_accuracy" in r:
        parts.append(f"acc {100 * r['test_accuracy']:.1f}%")
    return f"{label} {' '.join(parts)} ({r['status']})"


def run_notebooks(names, preset="quick", seed=0, runs=None, out=None, cifar10_dir=None, force=False,
                  params=(), progress_bar=False) -> list[dict]:
    """The `notebooks` subcommand: execute each notebook, print one line each; raise NotebookFailed if any failed."""
    specs = resolve(names)  # every name and parameter is checked before anything runs
    from .runinfo import parse_assignments
    extra = parse_assignments(params, "-p", "COMPARE_UPSAMPLING=False")
    declared = {spec.stem: notebook_parameters(NOTEBOOK_DIR / f"{spec.stem}.ipynb") for spec in specs}
    for key in extra:  # a parameter goes to the notebooks that declare it (e.g. COMPARE_UPSAMPLING: v1 only)
        if not any(key in d for d in declared.values()):
            raise ValueError(f"unknown parameter {key} for {', '.join(declared)}; valid parameters: "
                             f"{', '.join(dict.fromkeys(k for d in declared.values() for k in d))}.")
    records = []
    for spec in specs:
        mine = {k: v for k, v in extra.items() if k in declared[spec.stem]}
        rec = execute(spec.stem, preset, seed, runs, out, cifar10_dir, force, mine, progress_bar=progress_bar)
        records.append(rec)
        status = "ok" if rec["ok"] else f"FAILED ({rec['error']})"
        print(f"{spec.stem} {preset}-s{seed}: {status} in {rec['seconds']:.1f} s -> {rec['html']}")
        print("    " + "; ".join(_fmt_run(r) for r in rec["runs"]))
    failed = [r for r in records if not r["ok"]]
    if failed:
        raise NotebookFailed(f"{len(failed)} notebook(s) failed: " + "; ".join(
            f"{r['notebook']}: {r['error']} (see {r['html']})" for r in failed))
    return records


def _timing_run(x) -> str:
    label = x["trial"] + (f" [{x['variant']}]" if x.get("variant") else "")
    took = x.get("train_seconds")
    metrics = Path(x["run"]) / "metrics.json"
    if took is None and metrics.is_file():  # a record written before timing.json carried it
        took = json.loads(metrics.read_text()).get("train_seconds")
    return f"{label} {x['status']}" + (f" ({took / 60:.1f} min training)" if took and x["status"] == "trained" else "")


def timing_table(root) -> str:
    """Markdown: one row per executed notebook under `root` (its timing.json files): wall time, and each trial
    run it trained or reused, with that run's own training time."""
    rows = []
    for path in sorted(Path(root).rglob("timing.json")):
        r = json.loads(path.read_text())
        result = "ok" if r["ok"] else f"FAILED: {r['error']}"
        runs = "; ".join(_timing_run(x) for x in r["runs"]) or "(its runs are trained inside the notebook)"
        rows.append(f"| {r['notebook']} | {r['preset']}-s{r['seed']} | {result} | {r['seconds'] / 60:.1f} | "
                    f"{r['started']} | {runs} |")
    if not rows:
        raise FileNotFoundError(f"no timing.json under {root}; run `python -m cifar_ae notebooks` first.")
    return ("| notebook | preset | result | minutes | started | trial runs |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


# --------------------------------------------------------------------------- clean committed notebooks

def strip_notebook(nb):
    """Drop outputs, execution counts, run-specific metadata and papermill's injected cell; keep tags."""
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        for key in ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime"):
            cell.metadata.pop(key, None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    for key in ("papermill", "widgets", "signature"):
        nb.metadata.pop(key, None)
    if "language_info" in nb.metadata:
        nb.metadata["language_info"] = {"name": nb.metadata["language_info"].get("name", "python")}
    return nb


def problems(nb) -> list[str]:
    """Why a notebook is not clean enough to commit (outputs, execution counts, papermill metadata)."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.get("outputs"):
            found.append(f"cell {i} has outputs")
        if cell.cell_type == "code" and cell.get("execution_count") is not None:
            found.append(f"cell {i} has execution count {cell.execution_count}")
        if "papermill" in cell.metadata or "execution" in cell.metadata:
            found.append(f"cell {i} has execution metadata")
    if "papermill" in nb.metadata:
        found.append("notebook has papermill metadata")
    return found


def _strip_main(argv) -> int:
    import nbformat
    if argv[:1] == ["--stdin"]:  # git clean filter: notebook on stdin, stripped notebook on stdout
        nb = strip_notebook(nbformat.read(sys.stdin, as_version=4))
        sys.stdout.write(nbformat.writes(nb) + "\n")
        return 0
    changed = 0
    for path in argv:
        text = Path(path).read_text(encoding="utf-8")
        nb = strip_notebook(nbformat.reads(text, as_version=4))
        new = nbformat.writes(nb) + "\n"
        if new != text:
            Path(path).write_text(new, encoding="utf-8")
            print(f"stripped {path}")
            changed += 1
    return 1 if changed else 0  # pre-commit: a hook that changed files fails, so the change gets staged


if __name__ == "__main__":
    if sys.argv[1:2] != ["strip"]:
        sys.exit("usage: python -m cifar_ae.notebooks_run strip (--stdin | NOTEBOOK...)")
    sys.exit(_strip_main(sys.argv[2:]))
