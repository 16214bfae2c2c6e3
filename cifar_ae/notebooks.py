"""What the research notebooks call: setup, tables, figures, the trial and model cells' helpers, comparisons.

A notebook imports this as ``nb`` and stays a narrative: every cell is a call into `cifar_ae` or `augment`, or
a cell the reader edits (the trial, the model). Tables are plain `Table` objects (HTML in Jupyter and in the
exported HTML, Markdown, or aligned text when printed): no pandas. Headless execution lives in
`cifar_ae.notebooks_run`. Importing this module imports neither TensorFlow nor Keras; `setup` does, quietly.
"""
from __future__ import annotations

import html
import io
import json
import os
from pathlib import Path

from .notebooks_run import runs_root

# --------------------------------------------------------------------------- notebook helpers: setup and display

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _check_checkout():
    """Warn when the imported cifar_ae is not this notebook's checkout (two clones, one venv: the editable install
    points at one of them, and autoreload would apply edits from the other tree)."""
    here = Path.cwd().resolve()
    repo = next((p for p in (here, *here.parents) if (p / "cifar_ae" / "__init__.py").is_file()), None)
    imported = Path(__file__).resolve().parent.parent
    if repo is not None and repo != imported:
        message = (f"this notebook is in {repo}, but cifar_ae is imported from {imported}: edits to {repo / 'cifar_ae'} "
                   f"will not apply. Fix: `pip install -e {repo}`, or start Jupyter with PYTHONPATH={repo}.")
        import warnings
        warnings.warn(message, stacklevel=3)
        print("WARNING: " + message)


def setup(preset, seed, cifar10_dir=None, runs=None, autoreload=True) -> Path:
    """First cell after the parameters: check them, point data and runs, show Figures inline, and turn on IPython's
    autoreload, so an edit to cifar_ae/ or augment/ applies when a cell is rerun (no kernel restart). Returns RUNS."""
    from .trials import PRESETS
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}.")
    if cifar10_dir:
        os.environ["CIFAR10_DIR"] = str(Path(cifar10_dir).expanduser())  # an upstream run trained on demand sees it too
    root = runs_root(runs)
    _check_checkout()
    from .quiet import quiet_tensorflow
    quiet_tensorflow()
    try:
        from IPython import get_ipython
        from matplotlib.figure import Figure
        ip = get_ipython()
        if ip is not None:  # a bare matplotlib Figure (plots.*, augment.figures.*) renders as a PNG
            ip.display_formatter.formatters["image/png"].for_type(Figure, _png)
            if autoreload:
                if not any(e.endswith("autoreload") for e in ip.extension_manager.loaded):
                    ip.run_line_magic("load_ext", "autoreload")
                ip.run_line_magic("autoreload", "2")
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
    """A run's checked metrics and config (cifar_ae.completeness): a damaged one is a one-line error naming it."""
    from .completeness import require_usable
    status = require_usable(run)
    return status.metrics, status.config


def _overrides(config) -> dict:
    """What a run changed against the registered trial of its name, by meaning (report.changed_fields: model_args
    written out at their defaults are no change); {} for the trial as registered or a trial not registered."""
    from .report import changed_fields
    from .trials import TRIALS
    if config.get("trial", {}).get("name") not in TRIALS:
        return {}
    return changed_fields(config)


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


def trial_table(trial, preset) -> Table:
    """What a trial is (a name in cifar_ae.trials.TRIALS, or the Trial of the notebook's trial cell): model,
    optimizer, data, augmentation, length at this preset."""
    from .trials import get_trial
    t = get_trial(trial) if isinstance(trial, str) else trial
    name = t.name
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


def baseline_run(name, preset, seed, runs):
    """The trial as registered (the baseline an edited trial cell is compared with): its complete run, else None."""
    return find_run(name, preset, seed, runs)


def compare(baseline, run):
    """The edited run beside its baseline: training curves overlaid and metrics side by side (cifar_ae.report).
    Shows the figure and returns the table; says so when there is nothing to compare."""
    from IPython.display import display
    from .report import compare_figure, compare_rows, run_name
    if run is None:
        print("(no run: skipped)")
        return None
    if baseline is None or Path(baseline).resolve() == Path(run).resolve():
        what = "no baseline run yet" if baseline is None else "this run is the baseline (the trial or recipe row as defined)"
        print(f"{what}: edit the trial or model cell (or set CHANGES / VARIANT) and rerun to train a variant beside it")
        return None
    display(compare_figure(baseline, run))
    header, rows = compare_rows(baseline, run)
    return Table(header, rows, f"baseline {run_name({'run': baseline})} against {run_name({'run': run})}; "
                               "difference = variant minus baseline.")


def find_run(name, preset, seed, runs):
    """The complete run folder of a trial if there is one (e.g. a baseline to compare with), else None."""
    from .completeness import run_status
    from .training import run_dir_for
    run = run_dir_for(name, preset, seed, runs)
    return run if run_status(run).usable else None


def model_summary(trial, preset, seed, runs, upstream=None, **changes):
    """Build the trial's model as run_trial will (a classifier loads its upstream encoder, frozen, training that
    autoencoder first if needed; `upstream`: an edited autoencoder Trial) and summarise it, with its training FLOPs
    per image. `trial`: a name or the notebook's Trial."""
    from . import compute
    from .training import build_model, check_buildable, resolve_trial, run_trial
    t = resolve_trial(trial, **changes)
    check_buildable(t)
    upstream_dir = None
    if t.upstream is not None:
        upstream_dir = run_trial(upstream if upstream is not None else t.upstream, preset, seed, runs, verbose=0)
    model, upstream = build_model(t, upstream_dir)
    if upstream:
        print(f"frozen encoder from {upstream}")
    model.summary(line_length=110)
    print(f"training: {compute.train_flops_per_image(model) / 1e9:.3f} GFLOP per image (cifar_ae.compute)")
    return None


def run_trial_if(train, name, preset, seed, out_dir=None, variant=None, **kwargs):
    """run_trial(...) when `train`; otherwise the existing complete run folder, or None (the cells after show nothing)."""
    from .completeness import run_status
    from .training import run_dir_for, run_trial
    if train:
        return run_trial(name, preset, seed, out_dir=out_dir, variant=variant, **kwargs)
    run = run_dir_for(name, preset, seed, out_dir)
    run = run.with_name(f"{run.name}-{variant}") if variant else run
    if run_status(run).usable:  # a complete run, or a kept record of one: the cells after read its numbers
        print(f"[{name}] complete run found at {run}")
        return run
    print(f"[{name}] skipped: no complete run at {run} and training is switched off by a parameter")
    return None


def row_folder(reference, preset, seed, runs):
    """The complete run folder of an experiment row ("<file>:<row>") at this preset and seed, else None: the
    baseline a notebook whose recipe is that row compares an edited trial with."""
    from .completeness import run_status
    from .experiments import find_row
    experiment, row = find_row(reference)
    run = experiment.folder(runs, row.name, preset, seed)
    return run if run_status(run).usable else None


def train_row(trial, reference, preset, seed, runs, variant=None, **kwargs) -> Path:
    """Train (or reuse) a notebook's trial whose recipe is an experiment row ("<file>:<row>"), at the row's compute:
    unedited, in the row's own folder (<runs>/<file>/<row>/<preset>-s<seed>); edited or with a `variant`, beside
    it (experiments.run_row)."""
    from . import experiments
    return experiments.run_row(reference, preset, seed, runs, trial=trial, variant=variant, **kwargs)


def joint_check(trial) -> None:
    """Print whether the trial's decoder reads only the code its classifier reads (experiments.pixel_bypass, as
    the tables say it): a model with a pixel bypass is a control, not a joint result."""
    from .experiments import pixel_bypass
    bypass = pixel_bypass(trial)
    if bypass is None:
        print(f"{trial.name}: trains no decoder (task {trial.task!r}, or reconstruction weight 0): nothing to check")
    elif bypass:
        print(f"{trial.name}: PIXEL BYPASS: the decoder can read the pixels past the classifier's code, so this "
              "model is a control, not a joint result")
    else:
        print(f"{trial.name}: joint: the decoder reads only the code the classifier's head reads (no pixel bypass)")


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
        elif name == "tsne" and _settings(run).get("tsne_points", 1) < 20:
            print(f"no t-SNE for this run: its preset ({_settings(run).get('preset', '?')}) skips it "
                  f"(tsne_points={_settings(run).get('tsne_points')}); run `quick` or longer to see it")
        else:
            print(f"no {path} (this run has no {name} figure)")


def _settings(run) -> dict:
    config = json.loads((Path(run) / "config.json").read_text()) if (Path(run) / "config.json").is_file() else {}
    return {**config.get("settings", {}), "preset": config.get("preset")}


def auroc_table(run):
    """An anomaly run's AUROC table (auroc.md) under the notebook's own headings (its '#' title left out)."""
    from IPython.display import Markdown
    text = (Path(run) / "auroc.md").read_text()
    return Markdown(text.split("\n", 1)[1] if text.startswith("#") else text)


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


# --------------------------------------------------------------------------- beyond the study (v3)

def results_dir(results=None) -> Path:
    """Where the committed run files and tables are: `results`, else the repo's results/."""
    from .notebooks_run import REPO_DIR
    return Path(results).expanduser() if results else REPO_DIR / "results"


def tricks_table(trial) -> Table:
    """Each trick of cifar_ae.tricks.TRICKS: what it does, its value in this trial, and whether it is on."""
    from .tricks import MODEL_ARG_TRICKS, TRICKS
    rows = [[field, what, repr(getattr(trial, field)), repr(off), "on" if getattr(trial, field) != off else "off"]
            for field, what, off in TRICKS]
    from .models import BUILDERS
    from .training import builder_defaults
    args = {**(builder_defaults(trial.model) if trial.model in BUILDERS else {}), **trial.model_args}
    rows += [[f"model_args.{key}", what, repr(args[key]), repr(off), "on" if args[key] != off else "off"]
             for key, what, off in MODEL_ARG_TRICKS if key in args]
    return Table(["Trial field", "trick", f"{trial.name}", "off", ""], rows)


AIRBENCH94 = ("airbench94 (published; 50,000 balanced images)", 0.36, 0.9401)


def experiment_table(results, name):
    """An experiment's generated table (results/<name>.md, from its run folders), as Markdown."""
    from IPython.display import Markdown
    path = Path(results) / f"{name}.md"
    if not path.is_file():
        print(f"no {path}; make it with: python -m cifar_ae experiment experiments/{name}.toml --table-only")
        return None
    return Markdown(path.read_text().split("\n", 1)[1])  # without its '#' title: the notebook has its own headings


def accuracy_against_compute(results, names=("v3", "v4")):
    """Test accuracy per epoch against training PFLOPs for these experiments' rows (experiments.accuracy_against_compute)."""
    from .experiments import EXPERIMENTS_DIR, accuracy_against_compute, load_experiment
    experiments = [load_experiment(EXPERIMENTS_DIR / f"{n}.toml") for n in names]
    return accuracy_against_compute(experiments, Path(results) / "runs", reference=AIRBENCH94)


def accuracy_against_mse(results, name):
    """An experiment's accuracy-against-reconstruction-MSE frontier (plots.accuracy_against_mse), drawn from its
    generated table's JSON (results/<name>.json): validation points filled, test hollow, the controls marked."""
    from .plots import accuracy_against_mse as frontier
    from .safejson import load_json
    path = Path(results) / f"{name}.json"
    if not path.is_file():
        print(f"no {path}; make it with: python -m cifar_ae experiment experiments/{name}.toml --table-only")
        return None
    record = load_json(path)
    return frontier(record["rows"], f"{name}: {record.get('file', '')}", (record.get("selected") or {}).get("max_val_mse"))


def probe_table(results, rows, probe="probe"):
    """These rows of the linear probe's generated table (results/<probe>.md, from its probe folders), as Markdown;
    a row not probed yet is named with the command that fits it."""
    from IPython.display import Markdown
    path = Path(results) / f"{probe}.md"
    if not path.is_file():
        print(f"no {path} yet; make it with: python -m cifar_ae probe experiments/probes/{probe}.toml")
        return None
    lines = path.read_text().splitlines()
    header = [l for l in lines if l.startswith("| row |") or l.startswith("|---")]
    found = {l.split("|")[1].strip(): l for l in lines if l.startswith("| ") and not l.startswith("| row |")}
    missing = [r for r in rows if r not in found]
    if missing:
        print(f"not probed yet: {', '.join(missing)}; fit them with: python -m cifar_ae probe "
              f"experiments/probes/{probe}.toml --rows {' '.join(missing)}")
    if not any(r in found for r in rows):
        return None
    return Markdown("\n".join(header + [found[r] for r in rows if r in found]))
