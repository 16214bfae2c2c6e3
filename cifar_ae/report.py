"""Markdown table of every run folder's metrics, with the study's number beside ours."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import runs as R
from .completeness import RunDamaged, read_history, read_json, reportable, require_usable
from .data import CLASS_NAMES
from .trials import PRESETS


def collect_runs(root) -> list[dict]:
    """metrics.json + config.json of every complete run (or kept record) under `root`, sorted by trial, preset,
    seed. A damaged folder is skipped with a one-line warning (cifar_ae.completeness), and the rest go on."""
    runs = []
    for metrics_path in sorted(Path(root).glob("**/metrics.json")):
        status = reportable(metrics_path.parent)
        if not status.usable:
            continue
        runs.append({"run": str(status.run), "metrics": status.metrics, "config": status.config})
    return sorted(runs, key=lambda r: (str(r["metrics"]["trial"]), str(r["metrics"]["preset"]), r["metrics"]["seed"]))


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def markdown_table(runs) -> str:
    head = ["trial", "preset", "seed", "test acc", "study acc", "balanced acc", "recon MSE", "study MSE", "PSNR dB",
            "epochs", "train img/s", "train s"] + [f"recall {c}" for c in CLASS_NAMES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m, study = r["metrics"], r["metrics"].get("study", {})
        recalls = [_fmt(m.get("per_class", {}).get(c, {}).get("recall"), ".2f") for c in CLASS_NAMES]
        row = [m.get("trial", "?"), m.get("preset", "?"), str(m.get("seed", "")),
               _fmt(m.get("test_accuracy"), ".4f"), _fmt(study.get("test_accuracy"), ".2f"),
               _fmt(m.get("balanced_accuracy"), ".4f"), _fmt(m.get("recon_mse"), ".5f"), _fmt(study.get("recon_mse"), ".4f"),
               _fmt(m.get("recon_psnr"), ".2f"), str(m.get("epochs", "")), _fmt(m.get("train_images_per_second"), ".0f"),
               _fmt(m.get("train_seconds", m.get("train_seconds_this_session")), ".0f")] + recalls
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the study's table (`study` preset)

STUDY_TRIALS = ("v0-mlp-ae", "v0-dense", "v0-conv1d", "v1-cnn-ae", "v1-feature-classifier", "v2-joint-noaug",
                "v2-joint-aug-adam", "v2-joint-aug-sgd")
ACC_TOLERANCE, MSE_TOLERANCE = 0.02, 0.25  # "reproduced": within 2 points of accuracy, or 25% of the MSE


def _history(run) -> dict:
    return read_history(Path(run) / "history.csv", f"restore it, or rerun {run}'s command.")


def verdict(ours, theirs, metric) -> str:
    """reproduced / better / worse against the study's number, with the tolerances above."""
    if ours is None or theirs is None:
        return ""
    if metric == "recon_mse":
        ratio = ours / theirs
        return "reproduced" if round(abs(ratio - 1), 9) <= MSE_TOLERANCE else ("better" if ratio < 1 else "worse")
    diff = ours - theirs  # rounded: 0.88 - 0.86 is 0.020000000000000018 in floating point, and 2 points reproduce
    return "reproduced" if round(abs(diff), 9) <= ACC_TOLERANCE else ("better" if diff > 0 else "worse")


def _mean_sd(values):
    import statistics
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _upstream_config(root, upstream_run) -> dict:
    """A classifier's encoder run's config, found as <root>/<trial>/<folder> (the kept copy); {} if it is not there
    or is not what a run writes (a hand-edited file does not stop the table)."""
    if not isinstance(upstream_run, str) or not upstream_run:
        return {}
    try:
        run = R.inside(root, Path(root) / Path(upstream_run).parent.name / Path(upstream_run).name)
        config = R.read_config(run) or {}
    except (R.RunConflict, R.TrialError, AttributeError, OSError):
        return {}
    return config if isinstance(config, dict) else {}


def _upstream_epochs(root, upstream_run) -> int | None:
    """The epochs setting of a classifier's encoder run; None if its config is not found."""
    settings = _upstream_config(root, upstream_run).get("settings")
    epochs = settings.get("epochs") if isinstance(settings, dict) else None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def _upstream_changed(root, upstream_run) -> dict:
    """What a classifier's encoder run changed against its registered trial (e.g. a net registered since), its
    length aside: {"upstream <trial>": changes}, or {}."""
    config = _upstream_config(root, upstream_run)
    if not isinstance(config.get("trial"), dict):
        return {}
    changed = {k: v for k, v in changed_fields(config).items() if k != "epochs"}
    return {f"upstream {config['trial'].get('name')}": changed} if changed else {}


def _train_accuracy_at(run, epoch) -> float | None:
    """Training accuracy in history.csv's row for `epoch` (1-based; the csv counts from 0), found by its epoch
    column, so a missing cell or a repeated row cannot shift it onto another epoch."""
    import csv
    path = Path(run) / "history.csv"
    if not path.is_file() or not epoch:
        return None
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("epoch") not in (None, "") and int(float(r["epoch"])) == epoch - 1:
                v = r.get("label_accuracy") or r.get("accuracy")
                return float(v) if v not in (None, "") else None
    return None


def study_groups(root, name, preset="study") -> list[tuple[dict, list]]:
    """A trial's runs on `preset`, grouped so that only like runs are averaged: one group per length (the epochs
    setting, and that of a classifier's encoder) and definition (what the run changed against the registered
    trial, e.g. a trial edited since). Each run key counts once. Uncapped groups come first, then by cap."""
    from .runs import canonical
    groups, seen = {}, set()
    for r in collect_runs(Path(root) / name):
        if r["metrics"].get("preset") != preset or r["metrics"].get("trial") != name:
            continue
        key = r["config"].get("key_digest") or r["run"]
        if key in seen:
            continue
        seen.add(key)
        changed = {k: v for k, v in changed_fields(r["config"]).items() if k != "epochs"} if r["config"].get("trial") else {}
        changed.update(_upstream_changed(root, r["config"].get("upstream_run")))
        length = (r["config"].get("settings", {}).get("epochs"), _upstream_epochs(root, r["config"].get("upstream_run")))
        groups.setdefault((length, json.dumps(canonical(changed), sort_keys=True)), ([length, changed], []))[1].append(r)
    full = PRESETS[preset]["epochs"]

    def order(item):
        (epochs, up_epochs), changed = item[0]
        return epochs != full, -(epochs or 0), -(up_epochs or full), changed
    return [(dict(epochs=g[0][0], upstream_epochs=g[0][1], changed=g[1]), runs)
            for _, (g, runs) in sorted(groups.items(), key=order)]


def study_rows(root, trials=STUDY_TRIALS, preset="study") -> list[dict]:
    """One record per trial and group (study_groups: a capped run is never averaged with an uncapped one): its
    runs on `preset`, mean and sd over seeds, verdict."""
    rows = []
    for name in trials:
        for group, runs in study_groups(root, name, preset):
            rows.append(_study_row(root, name, group, runs, preset))
    return rows


def _study_row(root, name, group, runs, preset) -> dict:
    metric = "test_accuracy" if any("test_accuracy" in r["metrics"] for r in runs) else "recon_mse"
    runs = [r for r in runs if metric in r["metrics"]]
    values = [r["metrics"][metric] for r in runs]
    mean, sd = _mean_sd(values)
    from .trials import TRIALS  # the study's numbers are the trial's (a fact about the study, not the run)
    study_ref = TRIALS[name].study if name in TRIALS else runs[0]["metrics"].get("study", {})
    study = study_ref.get(metric)
    full = PRESETS[preset]["epochs"]
    cap = group["epochs"] if group["epochs"] and group["epochs"] < full else None
    up_cap = group["upstream_epochs"] if group["upstream_epochs"] and group["upstream_epochs"] < full else None
    stopped = [bool(r["metrics"].get("stopped_early")) for r in runs]
    train_accs, kept, ran, seconds, cpu = [], [], [], 0.0, 0.0
    for r in runs:
        h, m = _history(r["run"]), r["metrics"]
        best = m.get("best_epoch") or len(next(iter(h.values()), [])) or None
        acc = _train_accuracy_at(r["run"], best)
        if acc is not None:
            train_accs.append(acc)
        kept.append(best)
        ran.append(m.get("epochs"))
        seconds += sum(h.get("epoch_seconds", []))
        cpu += sum(h.get("train_user_seconds", [])) + sum(h.get("train_sys_seconds", []))
    machines, code = [], sorted({str((r["config"].get("code_version") or {}).get("git_commit") or "?")[:7] for r in runs})
    for r in runs:
        machine = r["config"].get("machine", {})
        where = (", ".join(g["name"] for g in machine.get("gpus", [])) or machine.get("cpu_model", "?")) if machine else "?"
        if where not in machines:
            machines.append(where)
    recalls = {}
    for c in CLASS_NAMES:
        vals = [r["metrics"]["per_class"][c]["recall"] for r in runs if "per_class" in r["metrics"]]
        if vals:
            recalls[c] = _mean_sd(vals)[0]
    return {"trial": name, "changed": group["changed"], "metric": metric,
            "seeds": [r["metrics"]["seed"] for r in runs], "values": values,
            "mean": mean, "sd": sd, "study": study, "verdict": verdict(mean, study, metric),
            "train_accuracy": _mean_sd(train_accs)[0], "study_train_accuracy": study_ref.get("train_accuracy"),
            "kept_epochs": kept, "epochs_run": ran,
            # a run that stopped early, before its cap, ran the study's length: that cap did not bind
            "stopped_early": stopped, "cap": cap if cap and not all(stopped) else None,
            "unreached_cap": cap if cap and any(stopped) else None, "upstream_cap": up_cap,  # a capped encoder: capped
            "wall_seconds": round(seconds), "cpu_seconds": round(cpu),
            "where": ", ".join(machines), "code_versions": code, "recall": recalls, "runs": [r["run"] for r in runs],
            "train_key": "loss" if metric == "recon_mse" else None}


def _value(v, metric):
    if v is None:
        return ""
    return f"{v:.5f}" if metric == "recon_mse" else f"{100 * v:.1f}%"


def describe_changes(changed) -> str:
    """'convs_per_block=1, batch_size=64' or 'on v1-cnn-ae with convs_per_block=1': what changed_fields found."""
    parts = []
    for key, value in changed.items():
        if key.startswith("upstream ") and isinstance(value, dict):
            parts.append(f"on {key.split(' ', 1)[1]} with {describe_changes(value)}")
        elif key == "model_args" and isinstance(value, dict):
            parts += [f"{arg}={v}" for arg, v in value.items()]
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def _label(row) -> str:
    """The trial's name, and what its runs changed against the registered trial, if anything."""
    changed = row.get("changed") or {}
    return row["trial"] + (f" ({describe_changes(changed)})" if changed else "")


def study_markdown(rows, title="The study's table at the study's length", preset="study") -> str:
    lines = [f"# {title}", "",
             "Generated by `python -m cifar_ae report --study --runs results/runs/study --output results` (or "
             "tools/study_runs.py, which trains the runs) from the run folders' small files. `study` preset: up "
             "to 100 epochs, early stopping on the validation metric (patience 10), the best validation epoch kept; "
             "the full 10,000-image test set scored once at the end. A run capped below 100 epochs says so in "
             "*length*; its verdict is for that length, not the study's, and seeds are averaged only at one length (a "
             "capped and an uncapped run of a trial are two rows). Verdict: reproduced = within 2 points of "
             "accuracy or 25% of the MSE.", "",
             "| trial | metric | ours (mean ± sd) | seeds | study | difference | verdict | train acc (study's) | kept epoch | "
             "length | where, time |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    header = lines[-2:]
    # the trials as registered first (one whose only runs are side rows says so, in its place); then runs of a trial
    # as it was registered before an edit (issue 44's earlier nets), each marked with what it changes
    current = {r["trial"] for r in rows if not r.get("changed")}
    missing = [{"trial": t, "missing": True} for t in STUDY_TRIALS if t not in current and any(r["trial"] == t for r in rows)]
    order = {t: i for i, t in enumerate(STUDY_TRIALS)}
    rows = (sorted([r for r in rows if not r.get("changed")] + missing, key=lambda r: order.get(r["trial"], len(order)))
            + [r for r in rows if r.get("changed")])
    from .trials import TRIALS
    for i, r in enumerate(rows):
        if r.get("missing"):
            metric, study = next(iter(TRIALS[r["trial"]].study.items()), ("", None))
            lines.append(f"| {r['trial']} | {'test MSE' if metric == 'recon_mse' else 'test acc'} | not run yet as "
                         f"registered | | {_value(study, metric)} | | | | | | |")
            continue
        if r.get("changed") and (i == 0 or not rows[i - 1].get("changed")):
            lines += ["", "Runs of the trials as they were registered before an edit (side rows: each names what it "
                      "changes against today's trial; `git checkout` the run's code version to rerun one):", "",
                      *header]
        metric = "test MSE" if r["metric"] == "recon_mse" else "test acc"
        ours = _value(r["mean"], r["metric"]) + ("" if r["sd"] is None else
                                                  f" ± {r['sd']:.5f}" if r["metric"] == "recon_mse" else f" ± {100 * r['sd']:.1f}")
        if r["study"] is None:
            diff = ""
        elif r["metric"] == "recon_mse":
            diff = f"x{r['mean'] / r['study']:.2f}"
        else:
            diff = f"{100 * (r['mean'] - r['study']):+.1f} pt"
        limit = r["cap"] or PRESETS[preset]["epochs"]
        length = ", ".join(f"{n} of {limit}" + (" (early stop)" if s else "") for n, s in zip(r["epochs_run"], r["stopped_early"]))
        length = (f"capped at {r['cap']} epochs: " if r["cap"] else "") + length
        if r.get("unreached_cap") and not r["cap"]:
            length += f" (its cap of {r['unreached_cap']} not reached)"
        if r.get("upstream_cap"):
            length += f"; its autoencoder capped at {r['upstream_cap']} epochs"
        capped = r["cap"] or r.get("upstream_cap")
        where = f"{r['where']}; {r['wall_seconds'] / 60:.0f} min wall (pauses included), {r['cpu_seconds'] / 60:.0f} CPU-min"
        lines.append(f"| {_label(r)} | {metric} | {ours} | {', '.join(map(str, r['seeds']))} | "
                     f"{_value(r['study'], r['metric'])} | {diff} | {r['verdict']}{' (capped)' if capped else ''} | "
                     f"{_value(r['train_accuracy'], 'acc')}"
                     + (f" ({_value(r['study_train_accuracy'], 'acc')})" if r.get("study_train_accuracy") else "")
                     + f" | {', '.join(map(str, r['kept_epochs']))} | {length} | {where} |")
    with_recall = [r for r in rows if r.get("recall")]
    if with_recall:
        lines += ["", "Per-class test recall (mean over seeds; bird, deer and truck had half the training images):", "",
                  "| trial | " + " | ".join(CLASS_NAMES) + " |", "|---|" + "---|" * len(CLASS_NAMES)]
        for r in with_recall:
            lines.append(f"| {_label(r)} | " + " | ".join(f"{100 * r['recall'][c]:.0f}%" for c in CLASS_NAMES) + " |")
    return "\n".join(lines) + "\n"


def write_study_tables(root, results_dir, preset="study") -> list:
    """results/study.md from the study trials' runs under root (and study.json with the numbers)."""
    from .evaluate import write_json_atomic, write_text_atomic
    rows = study_rows(root, preset=preset)
    if not rows:
        return []
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results_dir / "study.md", study_markdown(rows, preset=preset))
    write_json_atomic(results_dir / "study.json", {"rows": rows})
    return [results_dir / "study.md", results_dir / "study.json"]


# --------------------------------------------------------------------------- comparing runs (a variant and its baseline)

def load_run(run) -> dict:
    """A run folder's metrics.json, config.json and history.csv, checked (cifar_ae.completeness.require_usable)."""
    status = require_usable(run)
    return {"run": Path(run), "metrics": status.metrics, "config": status.config, "history": _history(run)}


def load_runs(runs) -> list:
    """load_run for each; a damaged or unfinished folder is skipped with a one-line warning (none left: an error)."""
    loaded = []
    for run in runs:
        if isinstance(run, dict):
            loaded.append(run)
            continue
        try:
            loaded.append(load_run(run))
        except (RunDamaged, FileNotFoundError) as e:
            print(f"warning: skipped {e}", file=sys.stderr)
    if not loaded:
        raise FileNotFoundError(f"none of {', '.join(map(str, runs))} is a complete run folder; see the warnings "
                                "above.")
    return loaded


def redraw_figures(run) -> list:
    """A run folder's figures from its small files: curves.png (history.csv), confusion_matrix.png (metrics.json)
    and class_distribution.png (config.json's class counts). Returns the paths written."""
    import numpy as np
    from .plots import class_distribution, confusion_matrix, save, training_curves
    run = Path(run)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run}: no config.json; is it a run folder (<runs>/<experiment>/<row>/<preset>-s<seed>)?")
    written, history = [], _history(run)
    if history:
        written.append(save(training_curves(history), run / "figures" / "curves.png"))
    fix = f"restore it, or rerun {run}'s command."
    metrics = read_json(run / "metrics.json", fix) if (run / "metrics.json").is_file() else {}
    if "confusion_matrix" in metrics:
        written.append(save(confusion_matrix(metrics["confusion_matrix"], CLASS_NAMES), run / "figures" / "confusion_matrix.png"))
    counts = read_json(run / "config.json", fix).get("train_class_counts")
    if counts:
        labels = np.repeat(np.arange(len(counts)), counts)
        written.append(save(class_distribution(labels, CLASS_NAMES), run / "figures" / "class_distribution.png"))
    return written


def changed_fields(config) -> dict:
    """What a run changed against its trial as registered: Trial fields and preset settings (epochs, ...)."""
    from .runs import canonical, trial_changes
    from .trials import TRIALS
    t = config.get("trial", {})
    base = TRIALS.get(t.get("name"))
    if base is None:
        return {"trial": "not a registered trial"}
    out = {k: v for k, v in trial_changes(base, t).items() if k != "presets"}  # settings: below
    preset = config.get("preset")
    if preset in PRESETS:
        reg_settings = canonical(base.settings(preset))
        out.update({k: v for k, v in canonical(config.get("settings", {})).items()
                    if k != "workers" and reg_settings.get(k) != v})
    return out


def run_name(r) -> str:
    """<trial>/<folder>, as the run is found on disk."""
    return f"{Path(r['run']).parent.name}/{Path(r['run']).name}"


def compare_rows(*runs) -> tuple[list, list]:
    """(header, rows): each run's headline numbers and per-class recall side by side, and the last run minus the
    first (a variant against its baseline)."""
    loaded = load_runs(runs)
    header = ["metric"] + [run_name(r) for r in loaded] + (["difference"] if len(loaded) == 2 else [])

    def row(label, get, fmt, diff_fmt):
        values = [get(r) for r in loaded]
        cells = [label] + ["" if v is None else fmt(v) for v in values]
        if len(loaded) == 2:
            cells.append("" if None in values else diff_fmt(values[1] - values[0]))
        return cells

    pct, pts = (lambda v: f"{100 * v:.1f}%"), (lambda d: f"{100 * d:+.1f} pt")
    m = lambda key: (lambda r: r["metrics"].get(key))  # noqa: E731
    rows = [["changed", *[", ".join(f"{k}={v}" for k, v in changed_fields(r["config"]).items()) or "(as registered)"
                          for r in loaded]] + ([""] if len(loaded) == 2 else []),
            row("test accuracy", m("test_accuracy"), pct, pts),
            row("balanced accuracy", m("balanced_accuracy"), pct, pts),
            row("reconstruction MSE", m("recon_mse"), lambda v: f"{v:.5f}", lambda d: f"{d:+.5f}"),
            row("epochs run", lambda r: r["metrics"].get("epochs"), str, lambda d: f"{d:+d}"),
            row("best epoch", m("best_epoch"), str, lambda d: f"{d:+d}"),
            row("training PFLOPs", m("train_pflops"), lambda v: f"{v:.4f}", lambda d: f"{d:+.4f}")]
    for c in CLASS_NAMES:
        rows.append(row(f"recall {c}", lambda r, c=c: r["metrics"].get("per_class", {}).get(c, {}).get("recall"),
                        pct, pts))
    rows = [r for r in rows if any(cell != "" for cell in r[1:])]
    return header, rows


def compare_markdown(*runs) -> str:
    header, rows = compare_rows(*runs)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compare_figure(*runs):
    """The runs' training curves overlaid (cifar_ae.plots.compare_curves), one colour per run."""
    from .plots import compare_curves
    loaded = load_runs(runs)
    return compare_curves({run_name(r): r["history"] for r in loaded}, title=" vs ".join(run_name(r) for r in loaded))
