"""Experiments as data: a TOML file per line of research (experiments/*.toml), one runner, tables from run folders.

A file names a base trial, a preset, seeds and named rows. A row is Trial changes on top of its parent (another
row of the file, ``"<file>:<row>"`` for a row of another file, or a registered trial; the file's base by default),
with a one-line ``why``. Every row is built and validated as a Trial when the file is read, before anything trains.

    python -m cifar_ae experiment experiments/v4.toml [--rows A B] [--seeds 0 1 2] [--preset P] [--commands]

Each run lives in ``<runs>/<experiment>/<row>/<preset>-s<seed>``; its identity (the key) and resume are run_trial's,
so a complete run with the same key is reused and a killed one resumes. TOML has no null: the string "None" stands
for Python's None wherever a change is written.
"""
from __future__ import annotations

import csv
import json
import math
import shlex
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .completeness import reportable, require_usable
from .data import CLASS_NAMES, STUDY_REDUCED_CLASSES
from .trials import PRESETS, TRIALS, Trial, TrialError, check_epochs, check_name, check_seed

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
FILE_KEYS = {"description": str, "base": str, "preset": str, "seeds": list, "epochs": int, "pflops": float,
             "test_every_epoch": bool, "goals": list, "rows": dict, "named": list, "frontier": bool,
             "select_max_val_mse": float}
ROW_KEYS = {"why": str, "changes": dict, "parent": str, "epochs": int, "formerly": str}
GOAL_KEYS = {"name": str, "pflops": float, "test_accuracy": float, "recon_mse": float, "seeds": int}
MERGED_FIELDS = ("model_args", "presets")  # a row's changes merge into these dicts; every other field is replaced


class ExperimentError(TrialError):
    """An experiment file or row is invalid; the message names the file, the row and the fix."""


@dataclass(frozen=True)
class Row:
    name: str
    trial: Trial
    why: str
    parent: str
    epochs: int | None = None
    formerly: str | None = None
    changes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path
    description: str
    base: str
    preset: str
    seeds: tuple
    rows: dict
    epochs: int | None = None
    pflops: float | None = None
    test_every_epoch: bool = False
    goals: tuple = ()
    named: tuple = ()  # rows a figure keeps in colour (the rest are grey)
    frontier: bool = False  # the table also draws accuracy against reconstruction MSE (<name>_frontier.png)
    select_max_val_mse: float | None = None  # the protocol's choice (select_row): its hold-out MSE bound

    def folder(self, runs_root, row, preset, seed) -> Path:
        return Path(runs_root) / self.name / row / f"{preset}-s{seed}"


def _none(value):
    """TOML's stand-in for None ("None") back to None, in nested dicts and lists too."""
    if value == "None":
        return None
    if isinstance(value, dict):
        return {k: _none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_none(v) for v in value]
    return value


def _check_keys(where, table, allowed):
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ExperimentError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}.")
    for key, kind in allowed.items():
        value = table.get(key)
        accepted = (int, float) if kind is float else kind  # TOML writes 1 for 1.0
        if value is not None and (isinstance(value, bool) != (kind is bool) or not isinstance(value, accepted)):
            raise ExperimentError(f"{where}: {key} must be a {kind.__name__}; got {value!r}.")


def apply_changes(trial: Trial, name: str, description: str, changes: dict) -> Trial:
    """`trial` renamed, with `changes` applied: model_args and each preset's settings merged, the rest replaced."""
    merged = dict(changes)
    fixed = sorted({"name", "description", "study"} & set(merged))
    if fixed:
        raise TrialError(f"{fixed[0]!r} is not a change a row can make (a row's name is its table key, its "
                         "description its why); remove it from changes.")
    if isinstance(merged.get("model_args"), dict):
        merged["model_args"] = {**trial.model_args, **merged["model_args"]}
    if isinstance(merged.get("presets"), dict):
        merged["presets"] = {**trial.presets, **{p: {**trial.presets.get(p, {}), **s} if isinstance(s, dict) else s
                                                 for p, s in merged["presets"].items()}}
    return trial.replace(name=name, description=description, **merged)


def load_experiment(path, _loading=()) -> Experiment:
    """Read, validate and build every row of an experiment file; errors name the file, the row and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"{path}: no such experiment file; the files are in {EXPERIMENTS_DIR} "
                              f"({', '.join(p.name for p in sorted(EXPERIMENTS_DIR.glob('*.toml')))}).")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ExperimentError(f"{path}: not valid TOML ({e}); fix the file's syntax.") from None
    _check_keys(str(path), data, FILE_KEYS)
    for key in ("description", "base", "preset", "seeds", "rows"):
        if key not in data:
            raise ExperimentError(f"{path}: missing {key!r}; every experiment names a description, a base trial, "
                                  "a preset, seeds and rows.")
    name = check_name(path.stem, "experiment")
    if data["preset"] not in PRESETS:
        raise ExperimentError(f"{path}: unknown preset {data['preset']!r}; valid presets: {', '.join(PRESETS)}.")
    try:
        seeds = tuple(check_seed(s) for s in data["seeds"])
        if data.get("epochs") is not None:
            check_epochs(data["epochs"])
    except TrialError as e:
        raise ExperimentError(f"{path}: {e}") from None
    if data.get("epochs") is not None and data.get("pflops") is not None:
        raise ExperimentError(f"{path}: give epochs or pflops, not both.")
    goals = []
    for i, goal in enumerate(data.get("goals", [])):
        _check_keys(f"{path}: goals[{i}]", goal if isinstance(goal, dict) else {"?": goal}, GOAL_KEYS)
        goals.append(goal)
    rows, raw = {}, data["rows"]
    loading = (*_loading, path.resolve())

    def build(row_name, chain=()):
        if row_name in rows:
            return rows[row_name]
        where = f"{path}: row {row_name!r}"
        if row_name in chain:
            raise ExperimentError(f"{where}: its parents loop ({' -> '.join([*chain, row_name])}); break the loop.")
        table = raw[row_name]
        if not isinstance(table, dict):
            raise ExperimentError(f"{where}: must be a table with why = ... and changes = {{...}}.")
        _check_keys(where, table, ROW_KEYS)
        check_name(row_name, "row")
        if not table.get("why"):
            raise ExperimentError(f"{where}: needs a one-line why = \"...\" (what the row tests).")
        parent = table.get("parent", data["base"])
        trial = parent_trial(parent, raw, build, chain + (row_name,), where, loading)
        changes = _none(table.get("changes", {}))
        try:
            built = apply_changes(trial, f"{name}.{row_name}", table["why"], changes)
            epochs = table.get("epochs", data.get("epochs"))
            if epochs is not None:
                check_epochs(epochs)
        except TrialError as e:
            message = str(e).replace(f"trial '{name}.{row_name}': ", "").replace(f" for '{name}.{row_name}'", "")
            raise ExperimentError(f"{where}: {message} Fix its changes.") from None
        rows[row_name] = Row(row_name, built, table["why"], parent, epochs, table.get("formerly"), changes)
        return rows[row_name]

    for row_name in raw:
        build(row_name)
    named = tuple(data.get("named", ()))
    unknown = [r for r in named if r not in rows]
    if unknown:
        raise ExperimentError(f"{path}: named row {unknown[0]!r} is not a row; valid rows: {', '.join(rows)}.")
    return Experiment(name, path, data["description"], data["base"], data["preset"], seeds,
                      {r: rows[r] for r in raw}, data.get("epochs"), data.get("pflops"),
                      bool(data.get("test_every_epoch", False)), tuple(goals), named, bool(data.get("frontier", False)),
                      data.get("select_max_val_mse"))


def parent_trial(parent, raw, build, chain, where, loading) -> Trial:
    """The Trial a row starts from: a row of this file, "<file>:<row>" (a row of experiments/<file>.toml) or a
    registered trial."""
    if parent in raw:
        return build(parent, chain).trial
    if ":" in parent:
        stem, _, row = parent.partition(":")
        other = EXPERIMENTS_DIR / f"{stem}.toml"
        if other.resolve() in loading:
            raise ExperimentError(f"{where}: parent {parent!r} refers back to a file being read; break the loop.")
        experiment = load_experiment(other, loading)
        if row not in experiment.rows:
            raise ExperimentError(f"{where}: parent {parent!r}: {other.name} has no row {row!r}; its rows: "
                                  f"{', '.join(experiment.rows)}.")
        return experiment.rows[row].trial
    if parent in TRIALS:
        return TRIALS[parent]
    import difflib
    close = difflib.get_close_matches(parent, [*raw, *TRIALS], n=3)
    raise ExperimentError(f"{where}: parent {parent!r} is neither a row of this file nor a registered trial"
                          + (f"; did you mean {', '.join(close)}?" if close else f"; registered: {', '.join(TRIALS)}."))


def find_row(reference) -> tuple[Experiment, Row]:
    """The experiment and row named "<file>:<row>" (a row of experiments/<file>.toml), e.g. "v4_honest:recon40"."""
    stem, colon, row = str(reference).partition(":")
    if not colon or not stem or not row:
        raise ExperimentError(f"{reference!r} is not an experiment row; name one as <file>:<row>, e.g. "
                              "v4_honest:recon40 (files: experiments/*.toml).")
    experiment = load_experiment(EXPERIMENTS_DIR / f"{stem}.toml")
    return experiment, experiment.rows[select(experiment, [row])[0]]


def row_trial(reference) -> Trial:
    """The Trial of a row named "<file>:<row>" (a row of experiments/<file>.toml), e.g. row_trial("v4:narrow")."""
    return find_row(reference)[1].trial


def run_row(reference, preset, seed, runs_root, trial=None, variant=None, epochs=None, **kwargs):
    """Train (or reuse) an experiment row ("<file>:<row>") at `preset` and `seed`, as `experiment` would: the row's
    compute (its epochs at this preset) and its per-epoch test scoring where the file asks for it. As defined
    (`trial` None or unchanged against the row's, no `variant`, no other epochs) it runs in the row's own folder,
    <runs>/<file>/<row>/<preset>-s<seed>, the one `experiment` fills; anything else is a variant in a folder of its
    own, <runs>/<file>.<row>/<preset>-s<seed>-<digest or variant>, so it never stands in for the row."""
    experiment, row = find_row(reference)
    return _run_row(experiment, row, preset, seed, runs_root, trial, variant, epochs, **kwargs)


def _run_row(experiment, row, preset, seed, runs_root, trial=None, variant=None, epochs=None, **kwargs):
    from .runs import trial_changes
    from .training import run_trial
    own_epochs = row_epochs(experiment, row, preset, seed)
    callbacks = [test_every_epoch_callback(row.trial.tta_flip)] if experiment.test_every_epoch else []
    as_defined = (variant is None and (trial is None or not trial_changes(row.trial, trial))
                  and (epochs is None or epochs == own_epochs))
    if as_defined:
        return run_trial(row.trial, preset, seed, runs_root, epochs=own_epochs, callbacks=callbacks,
                         folder=experiment.folder(runs_root, row.name, preset, seed), **kwargs)
    return run_trial(trial if trial is not None else row.trial, preset, seed, runs_root,
                     epochs=own_epochs if epochs is None else epochs, callbacks=callbacks, variant=variant, **kwargs)


def all_experiments() -> dict:
    return {p.stem: load_experiment(p) for p in sorted(EXPERIMENTS_DIR.glob("*.toml"))}


def select(experiment, rows=None) -> list:
    unknown = [r for r in rows or [] if r not in experiment.rows]
    if unknown:
        import difflib
        close = difflib.get_close_matches(unknown[0], list(experiment.rows), n=3)
        raise ExperimentError(f"{experiment.path}: no row {unknown[0]!r}" +
                              (f"; did you mean {', '.join(close)}?" if close else f"; rows: {', '.join(experiment.rows)}."))
    return list(rows or experiment.rows)


def row_epochs(experiment, row, preset, seed) -> int | None:
    """The epochs a row runs: its own or the file's, or the epochs that fit the file's compute budget (pflops) at
    the file's own preset (another preset, e.g. smoke, runs its own epochs: a budget is for the data it was set for)."""
    if row.epochs is not None or experiment.pflops is None or preset != experiment.preset:
        return row.epochs
    from .training import plan_data_size, trial_flops
    images = plan_data_size(row.trial, preset, seed)
    return max(1, math.floor(experiment.pflops * 1e15 / (trial_flops(row.trial) * images)))


def missing(experiment, rows, seeds, preset, runs_root) -> list:
    """(row, seed) pairs without a complete run folder (or a kept record of one)."""
    from .completeness import run_status
    return [(r, s) for r in rows for s in seeds
            if not run_status(experiment.folder(runs_root, r, preset, s)).usable]


def commands(experiment, rows, seeds, preset, runs_root) -> list:
    """One shell command per missing run: for a scheduler (a SLURM array, GNU parallel, xargs -P) on machines that
    share the runs root; the run lock refuses a second writer."""
    return [f"python -m cifar_ae experiment {shlex.quote(str(experiment.path))} --rows {shlex.quote(r)} --seeds {s} "
            f"--preset {preset} --runs {shlex.quote(str(runs_root))}"
            for r, s in missing(experiment, rows, seeds, preset, runs_root)]


def run_experiment(experiment, rows=None, seeds=None, preset=None, runs_root="runs", verbose=2) -> list:
    """Train what is missing, one run at a time (complete runs are reused by key); returns the run folders."""
    rows, seeds, preset = select(experiment, rows), seeds or experiment.seeds, preset or experiment.preset
    done = []
    for row_name in rows:
        for seed in seeds:
            print(f"[{experiment.name}] {row_name} {preset} seed {seed}", flush=True)
            done.append(_run_row(experiment, experiment.rows[row_name], preset, seed, runs_root, verbose=verbose))
    return done


def test_every_epoch_callback(tta_flip=False):
    """A callback that scores the full test set after every epoch into history.csv (test_accuracy, test_recon_mse;
    the label averaged with the mirror's when tta_flip): the accuracy-against-compute curve, for reporting only (the
    kept model is chosen on validation)."""
    import keras
    import numpy as np
    from .data import load_cifar10

    class TestEveryEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            data = load_cifar10()
            self.x, self.y = data.x_test.astype(np.float32) / 255.0, data.y_test

        def on_epoch_end(self, epoch, logs=None):
            from .inference import predict
            out = predict(self.model, self.x, 512)
            probs = out["label"] if isinstance(out, dict) else out
            if tta_flip:
                mirror = predict(self.model, self.x[:, :, ::-1], 512)
                probs = (probs + (mirror["label"] if isinstance(mirror, dict) else mirror)) / 2
            if logs is not None:
                logs["test_accuracy"] = float(np.mean(probs.argmax(1) == self.y))
                if isinstance(out, dict) and "reconstruction" in out:
                    logs["test_recon_mse"] = float(np.mean((out["reconstruction"] - self.x) ** 2))

    return TestEveryEpoch()


# --------------------------------------------------------------------------- tables, from run folders only

def _history_column(run, key):
    path = Path(run) / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key) not in (None, "")]


def record(run) -> dict:
    """One run's numbers for a table: accuracy, per-class recall, MSE, compute, params, training speed."""
    status = require_usable(run)
    m, config = status.metrics, status.config
    seconds = _history_column(run, "train_seconds")
    speed = [config["train_images"] / s for s in seconds if s > 0]
    val = _history_column(run, "val_label_accuracy") or _history_column(run, "val_accuracy")
    return {"run": str(run), "seed": m.get("seed"), "test_accuracy": m.get("test_accuracy"),
            "val_accuracy": max(val) if val else None,  # the best epoch's: what rows are chosen by, not test
            # the kept (last) epoch's hold-out accuracy and reconstruction MSE: the model a frontier point is
            "val_accuracy_last": val[-1] if val else None,
            "val_recon_mse": (_history_column(run, "val_reconstruction_mse") or [None])[-1],
            "recall": {c: v["recall"] for c, v in m.get("per_class", {}).items()}, "recon_mse": m.get("recon_mse"),
            "epochs": m.get("epochs"), "train_pflops": m.get("train_pflops"), "params": m.get("params"),
            "train_gflops_per_image": None if config.get("train_flops_per_image") is None
            else config["train_flops_per_image"] / 1e9,
            "images_per_second": round(statistics.median(speed), 1) if speed else None,
            "precision": config.get("precision"), "machine": config.get("machine"),
            "code_version": config.get("code_version"),
            # a logit-adjusted run's validation evidence (eval-only, so the per-epoch val curve cannot show it)
            "val_balanced_accuracy": m.get("val_balanced_accuracy"),
            "val_balanced_accuracy_without_logit_adjustment": m.get("val_balanced_accuracy_without_logit_adjustment")}


def summarize(records) -> dict:
    """Mean (and sd across seeds) of a row's records."""
    def mean_sd(key, get=None):
        vals = [(get or (lambda r: r.get(key)))(r) for r in records]
        vals = [v for v in vals if v is not None]
        if not vals:
            return None, None
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)
    out = {"seeds": [r["seed"] for r in records], "runs": [r["run"] for r in records],
           "test_accuracy_by_seed": {r["seed"]: r["test_accuracy"] for r in records}}
    for key in ("test_accuracy", "val_accuracy", "val_accuracy_last", "recon_mse", "val_recon_mse", "train_pflops", "images_per_second",
                "val_balanced_accuracy", "val_balanced_accuracy_without_logit_adjustment"):
        out[key], out[f"{key}_sd"] = mean_sd(key)
    for key in ("params", "train_gflops_per_image", "epochs", "precision"):
        out[key] = records[0].get(key)
    out["recall"] = {c: mean_sd(None, lambda r, c=c: r["recall"].get(c))[0] for c in CLASS_NAMES}
    return out


def pct(v, sd=None):
    if v is None:
        return ""
    return f"{100 * v:.2f}%" + ("" if sd is None else f" ± {100 * sd:.2f}")


def reduced_recall(summary) -> str:
    """Recall of the three classes the study halved, e.g. 'bird 61 / deer 70 / truck 85'."""
    return " / ".join(f"{c} {100 * summary['recall'][c]:.0f}" for c in STUDY_REDUCED_CLASSES
                      if summary["recall"].get(c) is not None)


def goal_verdict(goals, s) -> str:
    """The tightest goal whose budget this row fits: met, or how far short (test accuracy, MSE, seeds)."""
    goal = next((g for g in sorted(goals, key=lambda g: g["pflops"]) if s["train_pflops"] <= g["pflops"] + 1e-9), None)
    if goal is None:
        return f"over every goal's budget ({max(g['pflops'] for g in goals)} PFLOP)"
    short = []
    if s["test_accuracy"] < goal["test_accuracy"]:
        short.append(f"{100 * (goal['test_accuracy'] - s['test_accuracy']):.2f} pt short")
    if "recon_mse" in goal and (s["recon_mse"] is None or s["recon_mse"] > goal["recon_mse"]):
        short.append(f"MSE over {goal['recon_mse']}")
    if len(s["seeds"]) < goal.get("seeds", 1):
        short.append(f"{len(s['seeds'])} of {goal['seeds']} seeds")
    return f"{goal['name']}: " + ("**met**" if not short else ", ".join(short))


def collect(experiment, runs_root, preset=None) -> list:
    """(row, preset, summary) for every row and preset with complete runs, in the file's row order."""
    found = []
    for row_name in experiment.rows:
        folder = Path(runs_root) / experiment.name / row_name
        presets = [preset] if preset else sorted({p.name.rsplit("-s", 1)[0] for p in folder.glob("*-s*")},
                                                 key=list(PRESETS).index)
        for p in presets:
            runs = sorted((run for run in folder.glob(f"{p}-s*") if run.name[len(p) + 2:].isdigit() and reportable(run).usable),
                          key=lambda run: int(run.name[len(p) + 2:]))
            if runs:
                found.append((row_name, p, summarize([record(run) for run in runs])))
    return found


BYPASS_LABELS = {True: "**yes** (control)", False: "no", None: ""}
_BYPASS: dict = {}


def pixel_bypass(trial) -> bool | None:
    """For a joint row: whether its decoder can read the pixels other than through the code its classifier reads
    (models.pixel_bypass on the row's model, built once per model and arguments); None for other tasks and for
    rows that train no decoder (reconstruction weight 0)."""
    if trial.task != "joint" or trial.upstream is not None or (trial.loss_weights or {}).get("reconstruction") == 0:
        return None  # no decoder trained: nothing for a bypass to carry
    key = (trial.model, json.dumps(trial.model_args, sort_keys=True, default=str))
    if key not in _BYPASS:
        from .bypass import pixel_bypass as graph_has_bypass
        from .models import BUILDERS
        _BYPASS[key] = graph_has_bypass(BUILDERS[trial.model](**trial.model_args))
    return _BYPASS[key]


def select_row(rows, max_val_mse) -> dict | None:
    """The selection protocol (docs/v4.md) on a table's rows: among honest joint rows (a trained decoder, no pixel
    bypass) whose hold-out MSE at the kept epoch is within the bound, the best hold-out accuracy at that epoch.
    Test numbers take no part. None when no row qualifies yet."""
    eligible = [r for r in rows if r["pixel_bypass"] is False and r.get("val_recon_mse") is not None
                and r["val_recon_mse"] <= max_val_mse and r.get("val_accuracy_last") is not None]
    return max(eligible, key=lambda r: r["val_accuracy_last"], default=None)


def confirmed_selection(experiment, runs_root) -> dict | None:
    """For a confirmation file (its rows' parent is a row of a file with a selection protocol, e.g.
    "v4_honest:recon80"): the selection runs of the row it confirms, recorded apart from its own runs, and whether its
    seeds are fresh (no run of the selection, of any candidate row, used them). None for any other file."""
    found = {row.parent: find_row(row.parent) for row in experiment.rows.values() if row.parent and ":" in row.parent}
    selections = {parent: found_row for parent, found_row in found.items() if found_row[0].select_max_val_mse is not None}
    if not selections:
        return None
    if len(selections) > 1:
        raise ExperimentError(f"experiments/{experiment.name}.toml confirms {len(selections)} selections "
                              f"({', '.join(sorted(selections))}); a confirmation file confirms one.")
    (parent, (other, row)), = selections.items()
    candidates = collect(other, runs_root, other.preset)
    chosen = next((s for name, _, s in candidates if name == row.name), None)
    used = {seed for _, _, s in candidates for seed in s["seeds"]}
    return {"row": parent, "preset": other.preset, "table": f"results/{other.name}.md",
            "seeds": chosen["seeds"] if chosen else [], "runs": chosen["runs"] if chosen else [],
            "val_accuracy_last": chosen["val_accuracy_last"] if chosen else None,
            "val_recon_mse": chosen["val_recon_mse"] if chosen else None,
            "confirmation_seeds": list(experiment.seeds), "fresh_seeds": not used & set(experiment.seeds)}


def table(experiment, runs_root, preset=None, command=None) -> tuple[str, dict]:
    """The experiment's table (Markdown) and its record (JSON), from run folders only."""
    found = collect(experiment, runs_root, preset)
    goals = experiment.goals
    show_val_mse = experiment.frontier  # a frontier is chosen on the hold-out: its MSE there, beside test's
    lines = ["| row | preset | seeds | epochs | PFLOP | val acc (best epoch) | test acc | "
             + ("val acc (last epoch) | val MSE (last epoch) | " if show_val_mse else "") + "test MSE | pixel bypass | "
             "bird / deer / truck recall |" + (" goal |" if goals else "") + " why |",
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if show_val_mse else "") + ("---|" if goals else "")
             + "---|"]
    rows = []
    for row_name, preset_name, s in found:
        row = experiment.rows[row_name]
        bypass = pixel_bypass(row.trial)
        verdict = goal_verdict(goals, s) if goals else None
        if verdict and bypass:  # a goal asks for reconstruction from the shared code: a bypass row cannot meet it
            verdict = "not counted: pixel bypass (a control)"
        mse = "" if s["recon_mse"] is None else f"{s['recon_mse']:.5f}"
        pflops = "" if s["train_pflops"] is None else f"{s['train_pflops']:.3f}"
        lines.append(f"| {row_name} | {preset_name} | {', '.join(map(str, s['seeds']))} | {s['epochs']} | {pflops} | "
                     f"{pct(s['val_accuracy'], s['val_accuracy_sd'])} | {pct(s['test_accuracy'], s['test_accuracy_sd'])} "
                     + ("" if not show_val_mse else f"| {pct(s['val_accuracy_last'])} | "
                        + ("" if s["val_recon_mse"] is None else f"{s['val_recon_mse']:.5f}") + " ")
                     + f"| {mse} | {BYPASS_LABELS[bypass]} | {reduced_recall(s)} |" + (f" {verdict} |" if goals else "")
                     + f" {row.why} |")
        rows.append({"row": row_name, "preset": preset_name, "why": row.why, "parent": row.parent,
                     "formerly": row.formerly, "goal": verdict, "pixel_bypass": bypass, **s})
    command = command or f"python -m cifar_ae experiment experiments/{experiment.name}.toml --table-only"
    selected, chosen_text = None, ""
    if experiment.select_max_val_mse is not None:
        at_preset = [r for r in rows if r["preset"] == experiment.preset]  # the selection's compute, not smoke's
        chosen = select_row(at_preset, experiment.select_max_val_mse)
        ran = {r["row"] for r in at_preset}
        not_run = [name for name, row in experiment.rows.items() if name not in ran and pixel_bypass(row.trial) is False]
        selected = {"row": chosen and chosen["row"], "preset": experiment.preset, "provisional": bool(not_run),
                    "not_run": not_run, "max_val_mse": experiment.select_max_val_mse,
                    "rule": "the best hold-out accuracy (last epoch) among rows with no pixel bypass, a trained "
                            "decoder and hold-out MSE within the bound"}
        chosen_text = (f"\n**Chosen on the hold-out{' so far' if not_run else ''}**, from the `{experiment.preset}` "
                       f"rows above ({selected['rule']}, {experiment.select_max_val_mse}): "
                       + (f"`{chosen['row']}`, {pct(chosen['val_accuracy_last'])} at hold-out MSE "
                          f"{chosen['val_recon_mse']:.5f}." if chosen else "no row qualifies yet.")
                       + (f" Provisional: not run yet: {', '.join(not_run)}."
                          if not_run else "") + "\n")
    confirms = confirmed_selection(experiment, runs_root)
    if confirms:
        chosen_text += (f"\n**Confirmation runs, apart from the selection runs.** The rows above are confirmation "
                        f"runs (seeds {', '.join(map(str, confirms['confirmation_seeds']))}). They confirm "
                        f"`{confirms['row']}`, chosen in [{confirms['table']}]({Path(confirms['table']).name}) from its "
                        f"selection runs (`{confirms['preset']}`, seeds {', '.join(map(str, confirms['seeds'])) or 'none yet'}"
                        + (f": hold-out {pct(confirms['val_accuracy_last'])} at MSE {confirms['val_recon_mse']:.5f}"
                           if confirms["val_recon_mse"] is not None else "") + "). "
                        + ("No confirmation seed took part in choosing." if confirms["fresh_seeds"] else
                           "**A confirmation seed also chose the row: these are not fresh seeds.**") + "\n")
    text = (f"# {experiment.name}: {experiment.description}\n\nGenerated by `{command}` from run folders "
            f"({sum(len(r['seeds']) for r in rows)} runs). Validation is the 2,000 held-out training images (none for "
            "rows trained on every image); choose on it, not on test. Test accuracy is the full 10,000-image test set, "
            "mean ± sd over seeds. Pixel bypass (joint rows): the decoder can read the pixels other than through the "
            "code the classifier reads (cifar_ae.bypass), so the row is a control and meets no goal."
            "\n\n" + "\n".join(lines) + "\n" + chosen_text)
    return text, {"experiment": experiment.name, "file": f"experiments/{experiment.name}.toml", "command": command,
                  "goals": list(goals), **({"selected": selected} if selected else {}),
                  **({"selection": confirms} if confirms else {}), "rows": rows}


def write_table(experiment, runs_root, output_dir, preset=None, command=None) -> Path:
    """<output_dir>/<experiment>.md and .json, each written atomically; returns the .md path."""
    from .evaluate import write_json_atomic, write_text_atomic
    text, result = table(experiment, runs_root, preset, command)
    output = Path(output_dir) / f"{experiment.name}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, text)
    write_json_atomic(output.with_suffix(".json"), result)
    if experiment.frontier and result["rows"]:
        from .plots import accuracy_against_mse, save
        save(accuracy_against_mse(result["rows"], f"{experiment.name}: {experiment.description}",
                                  experiment.select_max_val_mse),
             output.with_name(f"{experiment.name}_frontier.png"))
    return output


def curves(experiment, runs_root) -> list:
    """(label, named, [(pflops, test accuracy)]) for every row and preset, seed 0's run (or the first seed's): a
    point per epoch where the runs scored the test set after every epoch (test_every_epoch), else the final test
    accuracy at the run's total compute. A row with a pixel bypass says so in its label."""
    out = []
    for row_name, preset_name, s in collect(experiment, runs_root):
        run = Path(s["runs"][0])
        acc = _history_column(run, "test_accuracy")
        config = json.loads((run / "config.json").read_text())
        per_image = config.get("train_flops_per_image")
        label = f"{experiment.name}/{row_name} ({preset_name})"
        if pixel_bypass(experiment.rows[row_name].trial):
            label += " [pixel bypass]"
        if acc and per_image:
            step = per_image * config["train_images"] / 1e15
            out.append((label, row_name in experiment.named, [(step * (i + 1), a) for i, a in enumerate(acc)]))
        else:
            first = record(run)  # the same run as the per-epoch curves: seed 0's (or the first seed's)
            if first["train_pflops"] and first["test_accuracy"] is not None:
                out.append((label, row_name in experiment.named, [(first["train_pflops"], first["test_accuracy"])]))
    return out


def accuracy_against_compute(experiments, runs_root, reference=None):
    """Test accuracy per epoch against training PFLOPs for every row of these experiments: the named rows in
    colour with a legend outside the axes, the rest grey. reference: (label, pflops, accuracy), a published point."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4.8))
    ax = fig.add_subplot()
    colour = 0
    for experiment in experiments:
        for label, named, points in curves(experiment, runs_root):
            x, y = zip(*points)
            final_only = len(points) == 1  # a row scored on test once, at the end: a larger point
            if named:
                ax.plot(x, [100 * v for v in y], marker="D" if final_only else "o", ms=7 if final_only else 3,
                        lw=1.6, color=f"C{colour % 10}", label=label, zorder=4 if final_only else 3)
                colour += 1
            else:
                ax.plot(x, [100 * v for v in y], marker="D" if final_only else None, ms=4, lw=0.8, color="0.75",
                        zorder=2)
    ax.plot([], [], lw=0.8, color="0.75", label="other rows")
    if reference:
        ax.scatter([reference[1]], [100 * reference[2]], marker="*", s=160, color="black", label=reference[0], zorder=5)
    ax.set_xlabel("training PFLOPs (cifar_ae.compute)")
    ax.set_ylabel("test accuracy (%): per epoch, or final (diamond)")
    ax.set_ylim(60, 96)  # peak-LR dips far below would squash the curves that matter
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig
