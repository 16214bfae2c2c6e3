"""A search's record: every trial (hyperparameters, scores, seconds, memory, who ran it), its table and figure,
and the best configuration saved as a rerunnable trial."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .. import evaluate as E
from ..atomic import write_atomic
from ..trials import Trial
from .space import UPSTREAM, classifier_model_args, joint_model_args

SIDECAR = "cifar_ae_trial.json"  # per trial: which tuner ran it, seconds, memory

HP_ORDER = ["encoder_blocks", "convs_per_block", "filters", "kernel_size", "block", "head_blocks", "head_filters",
            "dense_units", "dropout", "reconstruction_weight", "optimizer", "learning_rate_adam",
            "learning_rate_sgd", "batch_size", "class_weight"]


def _active_values(hp) -> dict:
    values = dict(hp.values)
    try:
        active = {p.name for p in hp.space if hp.is_active(p)}
        values = {k: v for k, v in values.items() if k in active or k.startswith("tuner/")}
    except Exception:  # a trial from another keras-tuner version: keep every value
        pass
    return values


def _metric(trial, name):
    try:
        return float(trial.metrics.get_last_value(name)) if trial.metrics.exists(name) else None
    except (TypeError, ValueError):
        return None


def collect_trials(project_dir, trials=None, objective=None) -> list[dict]:
    """One record per trial: hyperparameters, status, validation scores, seconds and which tuner ran it.

    Reads keras-tuner's trial_*/trial.json (the chief's or single process' oracle writes them) and our sidecar.
    """
    from keras_tuner.src.engine import trial as trial_module
    project_dir = Path(project_dir)
    if trials is None:
        trials = [trial_module.Trial.load(str(p)) for p in sorted(project_dir.glob("trial_*/trial.json"))]
    rows = []
    for tr in sorted(trials, key=lambda t: str(t.trial_id)):
        side_path = project_dir / f"trial_{tr.trial_id}" / SIDECAR
        side = json.loads(side_path.read_text()) if side_path.is_file() else {}
        prefix = "val_label_" if _metric(tr, "val_label_balanced_accuracy") is not None else "val_"
        lr = tr.hyperparameters.values.get("learning_rate_" + str(tr.hyperparameters.values.get("optimizer", "")))
        rows.append({
            "trial_id": tr.trial_id, "status": tr.status,
            "score": None if tr.score is None or (isinstance(tr.score, float) and math.isnan(tr.score)) else float(tr.score),
            "val_balanced_accuracy": _metric(tr, prefix + "balanced_accuracy"),
            "val_accuracy": _metric(tr, prefix + "accuracy"),
            "val_loss": _metric(tr, "val_loss"),
            "val_recon_mse": _metric(tr, "val_reconstruction_mse"),
            "best_epoch": None if tr.best_step is None else int(tr.best_step) + 1,
            "fit_seconds": _metric(tr, "fit_seconds"),
            "train_images_per_second": _metric(tr, "train_images_per_second"),
            "seconds": side.get("seconds", _metric(tr, "fit_seconds")),
            "tuner_id": side.get("tuner_id"), "rss_mb_after": side.get("rss_mb_after"),
            "learning_rate": lr,
            "hyperparameters": _active_values(tr.hyperparameters),
            "message": (tr.message or "").strip().splitlines()[-1] if tr.message else None,
        })
    return rows


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:.0f}"
        return f"{v:.3g}" if abs(v) < 0.01 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def trials_markdown(rows, best_id=None) -> str:
    hps = [k for k in HP_ORDER if any(k in r["hyperparameters"] for r in rows)]
    hps += sorted({k for r in rows for k in r["hyperparameters"]} - set(hps))
    head = ["trial", "tuner", "status", "val bal. acc (objective)", "val acc"] + hps + ["seconds", "RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = " **best**" if r["trial_id"] == best_id else ""
        cells = [f"{r['trial_id']}{mark}", r["tuner_id"] or "", r["status"], _fmt(r["score"]), _fmt(r["val_accuracy"])]
        cells += [_fmt(r["hyperparameters"].get(k)) for k in hps] + [_fmt(r["seconds"]), _fmt(r["rss_mb_after"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scores_figure(rows, title=""):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 4.0))
    ax = fig.add_subplot()
    done = [r for r in rows if r["score"] is not None]
    workers = sorted({r["tuner_id"] or "?" for r in done})
    for w in workers:
        pts = [(int(r["trial_id"]), r["score"]) for r in done if (r["tuner_id"] or "?") == w]
        ax.scatter(*zip(*pts), s=36, label=f"val balanced acc ({w})" if len(workers) > 1 else "val balanced acc", zorder=3)
    acc = [(int(r["trial_id"]), r["val_accuracy"]) for r in done if r["val_accuracy"] is not None]
    if acc:
        ax.scatter(*zip(*acc), s=30, facecolors="none", edgecolors="grey", label="val accuracy", zorder=2)
    if done:
        order = sorted(done, key=lambda r: int(r["trial_id"]))
        xs = [int(r["trial_id"]) for r in order]
        ax.step(xs, np.maximum.accumulate([r["score"] for r in order]), where="post", color="black", lw=1,
                label="best so far")
        best = max(done, key=lambda r: r["score"])
        ax.annotate(f"best: {best['score']:.3f}", (int(best["trial_id"]), best["score"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    failed = [int(r["trial_id"]) for r in rows if r["score"] is None]
    if failed:
        ax.scatter(failed, [0] * len(failed), marker="x", color="red", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation score")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def tuned_trial_record(hypermodel, values, name, description) -> dict:
    """The best configuration as a trials.Trial record (a dict), rerunnable with `train NAME`."""
    common = dict(optimizer=values["optimizer"], learning_rate=float(values["learning_rate"]),
                  batch_size=int(values["batch_size"]),
                  class_weight=None if values["class_weight"] == "none" else values["class_weight"])
    if hypermodel.task == "joint":
        t = Trial(name, description, task="joint", model="joint_model", model_args=joint_model_args(values),
                  loss_weights={"reconstruction": float(values["reconstruction_weight"]), "label": 1.0},
                  presets={"quick": {"epochs": 3}, "full": {"epochs": 100}}, **common)
    else:
        t = Trial(name, description, task="classifier", model="feature_classifier", upstream=UPSTREAM,
                  model_args=classifier_model_args(values), presets={"quick": {"epochs": 5}, "full": {"epochs": 50}},
                  **common)
    # only what differs from Trial's defaults: the record stays valid as Trial gains fields
    import dataclasses
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(Trial) if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING}
    return {k: v for k, v in t.to_dict().items() if k in ("name", "description", "task", "model") or v != defaults[k]}


def save_tuned_trial(record, path) -> Path:
    """Add or replace `record` (by name) in the tuned-trials JSON that trials.py loads."""
    from ..trials import TRIALS, TUNED_NAMES, load_tuned_trials
    path = Path(path)
    if record["name"] in TRIALS and record["name"] not in TUNED_NAMES:
        raise ValueError(f"'{record['name']}' is a study trial; pick another --save-trial name.")
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc.setdefault("about", "Trials saved by `python -m cifar_ae tune`; cifar_ae/trials.py adds them to TRIALS, "
                            "so `python -m cifar_ae train NAME` reruns them.")
    doc["trials"] = [r for r in doc.get("trials", []) if r.get("name") != record["name"]] + [record]
    path.parent.mkdir(parents=True, exist_ok=True)
    E.write_json_atomic(path, doc)
    load_tuned_trials(path)
    return path


def write_markdown(summary, path) -> Path:
    """results/tuning.md from a tuning.json summary: what was searched, the best trial, the table of all."""
    rows, best, test = summary["trials"], summary["best"], summary["best"]["test"]
    name = summary["saved_trial"]["name"]
    md = [f"# Hyperparameter search: {summary['tuner']}, {summary['model']}, `{summary['preset']}` preset", "",
          f"Generated by `{summary['command']}` ({len(rows)} trials; project `{summary['project_dir']}`).", "",
          f"Objective: {summary['objective']['what']} ({summary['data']['train_images']} training and "
          f"{summary['data']['val_images']} validation images, {summary['settings']['epochs']} epoch(s) per trial). "
          f"The test set ({test['test_images']} images) was scored once, for the best trial.", "",
          f"**Best: trial {best['trial_id']}**, val balanced accuracy {best['val_balanced_accuracy']:.4f} "
          f"(val accuracy {_fmt(best['val_accuracy'])}); **test accuracy {test['test_accuracy']:.4f}**, "
          f"test balanced accuracy {test['balanced_accuracy']:.4f}.", "",
          f"Saved as trial `{name}`: `python -m cifar_ae train {name} --preset quick`.", "",
          "![scores](tuning_scores.png)", "", trials_markdown(rows, best["trial_id"])]
    return write_atomic(path, lambda tmp: tmp.write_text("\n".join(md)))
