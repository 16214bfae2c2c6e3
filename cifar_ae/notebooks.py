"""The research notebooks: headless execution into run folders, and the display helpers the notebooks share.

    python -m cifar_ae notebooks --preset smoke v0 v1     # every notebook if no NAME is given
    python -m cifar_ae notebooks --preset quick v1 -p COMPARE_UPSAMPLING=False   # other parameters: -p NAME=VALUE

executes `notebooks/<stem>.ipynb` with papermill into `<runs>/notebooks/<stem>/<preset>-s<seed>/`:
`<stem>.ipynb` (executed, with outputs), `<stem>.html` (nbconvert, readable without Jupyter) and
`timing.json` (wall time, parameters, and each trial run the notebook used: reused or trained, its numbers).
Papermill runs the notebooks on the Jupyter kernel named ``python3`` (``python -m ipykernel install --user``).

Every notebook starts with a cell tagged ``parameters`` (PRESET, SEED, CIFAR10_DIR, RUNS, FORCE) that papermill
overrides, and only calls `cifar_ae` / `augment`: nothing is defined in a notebook. Tables are plain `Table`
objects (HTML in Jupyter and in the exported HTML, Markdown, or aligned text when printed): no pandas.

Committed notebooks carry no outputs; ``python -m cifar_ae.notebooks strip FILE...`` cleans them (also as a
pre-commit hook and a git clean filter: see .pre-commit-config.yaml and .gitattributes).
"""
from __future__ import annotations

import ast
import html
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_DIR / "notebooks"
KERNEL = "python3"
PARAMETERS = ("PRESET", "SEED", "CIFAR10_DIR", "RUNS", "FORCE")  # every notebook's parameters cell has these


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
    run = Path(runs) / trial / (f"{preset}-s{seed}" + (f"-{variant}" if variant else ""))  # cifar_ae.runs' names
    metrics_path = run / "metrics.json"
    rec = {"trial": trial, "variant": variant, "run": str(run)}
    if not metrics_path.is_file():
        return {**rec, "status": "missing"}
    m = json.loads(metrics_path.read_text())
    rec["status"] = "trained" if force or metrics_path.stat().st_mtime >= started else "reused"
    for k in ("test_accuracy", "balanced_accuracy", "recon_mse", "recon_psnr", "epochs", "train_seconds_this_session", "study"):
        if k in m:
            rec[k] = m[k]
    return rec


def _clean_streams(nb):
    """Merge stream outputs and keep only what a terminal would show after carriage returns (progress bars)."""
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    return nb


def export_html(nb, path):
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter().from_notebook_node(nb)
    tmp = Path(path).with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)
    return Path(path)


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
    params = {**(parameters or {}), "PRESET": preset, "SEED": int(seed), "RUNS": str(runs_root(runs)), "FORCE": bool(force)}
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
        pm.execute_notebook(str(source), str(out_nb), parameters=params, kernel_name=kernel, cwd=str(NOTEBOOK_DIR),
                            progress_bar=progress_bar)
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
    tmp = folder / ".timing.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, folder / "timing.json")
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


def parse_params(items) -> dict:
    """["KEY=VALUE", ...] -> {KEY: python literal or string}."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"bad parameter '{item}'; write NAME=VALUE, e.g. COMPARE_UPSAMPLING=False.")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def run_notebooks(names, preset="quick", seed=0, runs=None, out=None, cifar10_dir=None, force=False,
                  params=(), progress_bar=False) -> list[dict]:
    """The `notebooks` subcommand: execute each notebook, print one line each; raise NotebookFailed if any failed."""
    specs = resolve(names)  # every name and parameter is checked before anything runs
    extra = parse_params(params)
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


# --------------------------------------------------------------------------- notebook helpers: setup and display

def _import_tensorflow_quietly():
    """Import TensorFlow with C-level stderr muted: its import-time absl/oneDNN lines would otherwise land in the
    first cell's output of every notebook. Python errors still show (they go through sys.stderr, not fd 2)."""
    if "tensorflow" in sys.modules:
        return
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    except Exception:
        pass  # the real import (cifar_ae.training) raises it again, visibly
    finally:
        os.dup2(saved, 2)
        os.close(saved), os.close(devnull)


if "ipykernel" in sys.modules:  # in a notebook kernel only; the CLI never imports TensorFlow through this module
    _import_tensorflow_quietly()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def setup(preset, seed, cifar10_dir=None, runs=None) -> Path:
    """First cell after the parameters: check them, point data and runs, show Figures inline. Returns RUNS."""
    from .trials import PRESETS
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if cifar10_dir:
        os.environ["CIFAR10_DIR"] = str(Path(cifar10_dir).expanduser())  # an upstream run trained on demand sees it too
    root = runs_root(runs)
    try:
        from IPython import get_ipython
        from matplotlib.figure import Figure
        ip = get_ipython()
        if ip is not None:  # a bare matplotlib Figure (plots.*, augment.figures.*) renders as a PNG
            ip.display_formatter.formatters["image/png"].for_type(Figure, _png)
    except ImportError:
        pass
    settings = PRESETS[preset]
    print(f"preset {preset!r} (train images: {settings['train_images'] or 'all of the subset'}, test images: "
          f"{settings['test_images'] or 10000}, epochs: per trial), seed {seed}")
    print(f"CIFAR-10: {os.environ.get('CIFAR10_DIR') or 'keras cache / download (CIFAR10_DIR unset)'}")
    print(f"runs under: {root}")
    return root


class Table:
    """A small table: HTML in Jupyter and exported HTML, Markdown via _repr_markdown_, aligned text via str()."""

    def __init__(self, header, rows, caption=""):
        self.header = [str(h) for h in header]
        self.rows = [["" if v is None else str(v) for v in row] for row in rows]
        self.caption = caption

    def to_dicts(self):
        return [dict(zip(self.header, row)) for row in self.rows]

    def _repr_html_(self):
        cell = lambda tag, v: f"<{tag} style='text-align:left'>{html.escape(v)}</{tag}>"  # noqa: E731
        head = "".join(cell("th", h) for h in self.header)
        body = "".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in self.rows)
        caption = f"<caption style='caption-side:bottom;text-align:left'>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _repr_markdown_(self):
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + (f"\n\n{self.caption}" if self.caption else "")

    def __str__(self):
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        fmt = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
        lines = [fmt(self.header), fmt(["-" * w for w in widths])] + [fmt(r) for r in self.rows]
        return "\n".join(lines) + (f"\n{self.caption}" if self.caption else "")

    __repr__ = __str__


def _load_run(run):
    run = Path(run)
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    return metrics, config


def _overrides(config) -> dict:
    """Fields where a run's trial differs from the registered trial of that name (a variant), else {}."""
    from .trials import TRIALS
    t = config.get("trial", {})
    base = TRIALS.get(t.get("name"))
    if base is None:
        return {}
    registered = json.loads(json.dumps(base.to_dict()))
    return {k: v for k, v in t.items() if registered.get(k) != v}


def run_label(run) -> str:
    metrics, config = _load_run(run)
    over = _overrides(config)
    return metrics.get("trial", Path(run).parent.name) + (f" ({', '.join(f'{k}={v}' for k, v in over.items())})" if over else "")


def data_table(data) -> Table:
    """Images per class in this run's training, validation and test sets; the study halved three classes."""
    import numpy as np
    from .data import STUDY_REDUCED_CLASSES
    names = data["class_names"]
    counts = {s: np.bincount(data[f"y_{s}"], minlength=len(names)) for s in ("train", "val", "test")}
    rows = [[name + (" (halved)" if name in STUDY_REDUCED_CLASSES else ""), *(int(counts[s][i]) for s in counts)]
            for i, name in enumerate(names)]
    rows.append(["total", *(int(c.sum()) for c in counts.values())])
    return Table(["class", "train", "validation", "test"], rows,
                 f"data: {data['source']}; validation is held out of the training subset, test is CIFAR-10's test set.")


def class_weight_table(trial, data, method=None) -> Table:
    """The trial's per-class weights (cifar_ae.data.class_weights) on this run's training labels.

    Every class ends with the same total weight (images x weight). A trial without class weights shows what
    `method` (default 'inverse') would give.
    """
    import numpy as np
    from .data import class_weights
    method = method or trial.class_weight or "inverse"
    y, names = np.asarray(data["y_train"]).reshape(-1), data["class_names"]
    counts = np.bincount(y, minlength=len(names))
    w = class_weights(y, method)
    rows = [[name, int(counts[i]), f"{w[i]:.3f}", f"{counts[i] * w[i]:.0f}"] for i, name in enumerate(names)]
    used = (f"{trial.name} trains with class_weight='{trial.class_weight}'" if trial.class_weight else
            f"{trial.name} trains unweighted (class_weight=None); shown: what '{method}' would give")
    return Table(["class", "train images", "weight", "images x weight"], rows,
                 f"{used}. {'Each' if trial.class_weight else 'With weights, each'} image's label loss is multiplied "
                 "by its class's weight; the reconstruction loss stays unweighted.")


def trial_table(name, preset) -> Table:
    """What a trial is (cifar_ae.trials.TRIALS): model, optimizer, data, augmentation, length at this preset."""
    from .trials import get_trial
    t = get_trial(name)
    s = t.settings(preset)
    rows = [["description", t.description], ["task / model", f"{t.task} / {t.model}"],
            ["model_args", t.model_args or "defaults"], ["upstream (frozen encoder)", t.upstream or "-"],
            ["optimizer", f"{t.optimizer}, learning rate {t.learning_rate}, batch {t.batch_size}"],
            ["training set / validation", f"{t.train_set} / {t.validation}"],
            ["augmentation", t.augmentation or "none"], ["class weights", t.class_weight or "none"],
            ["loss weights", t.loss_weights or "-"],
            [f"epochs at '{preset}'", f"{s['epochs']} (full: {t.settings('full')['epochs']})"],
            ["study reported", ", ".join(f"{k} {v}" for k, v in t.study.items()) or "-"]]
    return Table(["field", name], rows)


def find_run(name, preset, seed, runs):
    """The complete run folder of a trial if there is one (e.g. a baseline to compare with), else None."""
    from .training import is_complete, run_dir_for
    run = run_dir_for(name, preset, seed, runs)
    return run if is_complete(run) else None


def model_summary(name, preset, seed, runs, **overrides):
    """Build the trial's model as run_trial will (a classifier loads its upstream encoder, frozen) and summarise it."""
    from .trials import get_trial
    from .training import build_model
    model, upstream = build_model(get_trial(name, **overrides), preset, seed, runs)
    if upstream:
        print(f"frozen encoder from {upstream}")
    model.summary(line_length=110)
    return None


def run_trial_if(train, name, preset, seed, out_dir=None, variant=None, **kwargs):
    """run_trial(...) when `train`; otherwise the existing complete run folder, or None (the cells after show nothing)."""
    from .training import is_complete, run_dir_for, run_trial
    if train:
        return run_trial(name, preset, seed, out_dir=out_dir, variant=variant, **kwargs)
    run = run_dir_for(name, preset, seed, out_dir)
    run = run.with_name(f"{run.name}-{variant}") if variant else run
    if is_complete(run):
        print(f"[{name}] complete run found at {run}")
        return run
    print(f"[{name}] skipped: no complete run at {run} and training is switched off by a parameter")
    return None


FIGURES = ("class_distribution", "curves", "reconstructions", "confusion_matrix", "tsne")


def show_figures(run, *names):
    """Display a run's saved figures (figures/<name>.png), all of FIGURES that exist if no name is given."""
    from IPython.display import Image, display
    if run is None:
        print("(no run: skipped)")
        return
    folder = Path(run) / "figures"
    for name in names or [n for n in FIGURES if (folder / f"{n}.png").is_file()]:
        path = folder / f"{name}.png"
        if path.is_file():
            display(Image(filename=str(path)))
        else:
            print(f"no {path} (this run has no {name} figure)")


def per_class_report(run) -> Table:
    """Precision, recall and F1 per class next to how many training images the class had."""
    from .data import STUDY_REDUCED_CLASSES
    metrics, config = _load_run(run)
    train_counts = config.get("train_class_counts", [])
    rows = []
    for i, (name, m) in enumerate(metrics["per_class"].items()):
        rows.append([name + (" (halved)" if name in STUDY_REDUCED_CLASSES else ""),
                     train_counts[i] if i < len(train_counts) else "", f"{m['precision']:.2f}", f"{m['recall']:.2f}",
                     f"{m['f1']:.2f}", m["support"]])
    return Table(["class", "train images", "precision", "recall", "F1", "test images"], rows,
                 f"{run_label(run)}: accuracy {100 * metrics['test_accuracy']:.1f}%, balanced accuracy "
                 f"{100 * metrics['balanced_accuracy']:.1f}% on {metrics['test_images']} test images.")


STUDY_METRICS = (("recon_mse", "reconstruction MSE"), ("test_accuracy", "test accuracy"))


def study_comparison(*runs) -> Table:
    """Each run's measured numbers (metrics.json) beside the study's (the trial's `study` field).

    A variant (a run whose trial fields were overridden) gets no study number: the study's is for the plain trial.
    """
    from .trials import TRIALS
    rows = []
    for run in [r for r in runs if r is not None]:
        metrics, config = _load_run(run)
        name = metrics.get("trial")
        variant = bool(_overrides(config))
        study = {} if variant else (metrics.get("study") or getattr(TRIALS.get(name), "study", {}))
        for key, label in STUDY_METRICS:
            if key not in metrics:
                continue
            ours, theirs = metrics[key], study.get(key)
            if key == "test_accuracy":
                cells = [f"{100 * ours:.1f}%", "" if theirs is None else f"{100 * theirs:.0f}%",
                         "" if theirs is None else f"{100 * (ours - theirs):+.1f} points"]
            else:
                cells = [f"{ours:.5f}", "" if theirs is None else f"{theirs:.4f}",
                         "" if theirs is None else f"x{ours / theirs:.2f}"]
            epochs = metrics.get("epochs")
            rows.append([run_label(run), f"{metrics.get('preset')}, {epochs} epoch{'' if epochs == 1 else 's'}", label, *cells])
    full = {m.get("trial"): TRIALS[m["trial"]].settings("full")["epochs"] for m in (_load_run(r)[0] for r in runs if r is not None)
            if m.get("trial") in TRIALS}
    caption = ("The study's numbers come from full-length training (" + ", ".join(f"{k}: {v} epochs" for k, v in full.items())
               + "); a shorter preset's numbers are indicative, not a reproduction.")
    return Table(["run", "preset", "metric", "this run", "study", "difference"], rows, caption)


def examples(data, classes=("airplane", "bird", "cat", "truck"), split="train"):
    """The first training (or test) image of each named class, as uint8 arrays for the augment figures."""
    import numpy as np
    from .data import class_index
    x, y = data[f"x_{split}"], np.asarray(data[f"y_{split}"]).reshape(-1)
    return [x[np.flatnonzero(y == class_index(c))[0]] for c in classes]


def augmented_samples(images, augmentation, n=8, seed=0):
    """What training sees: each image (rows), then `n` outputs of the trial's augmenter (policy, pad-crop, flip)."""
    import numpy as np
    from matplotlib.figure import Figure
    from augment import make_augmenter
    augmenter = make_augmenter(augmentation)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(0.95 * (n + 1) + 0.9, 0.95 * len(images) + 0.7), layout="constrained")
    axes = fig.subplots(len(images), n + 1, squeeze=False)
    for row, img in enumerate(images):
        batch = augmenter(np.repeat(np.asarray(img)[None], n, axis=0), rng)
        for col, shown in enumerate([img, *batch]):
            axes[row, col].imshow(shown, interpolation="nearest")
            axes[row, col].set_xticks([]), axes[row, col].set_yticks([])
    axes[0, 0].set_title("original", fontsize=8)
    fig.suptitle(f"{augmenter!r}: {n} samples per image", fontsize=9)
    return fig


if __name__ == "__main__":
    if sys.argv[1:2] != ["strip"]:
        sys.exit("usage: python -m cifar_ae.notebooks strip (--stdin | NOTEBOOK...)")
    sys.exit(_strip_main(sys.argv[2:]))
