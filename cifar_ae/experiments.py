"""Experiments as data: rows of Trial changes against one base trial, each row a `run_trial` into <root>/<row>/
(variant = the row's name), and every table built from those run folders only. The ablation, the encoder-block
comparison and the augmentation comparison are such loops (benchmarks/).
"""
from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from .data import CLASS_NAMES, STUDY_REDUCED_CLASSES
from .runs import named_folder

SMALL_FILES = ("config.json", "history.csv", "metrics.json")


def run_row(base, row, changes, preset, seed, epochs, root, verbose=2) -> Path:
    from .training import run_trial  # imports keras: not needed to build tables
    return run_trial(base, preset, seed, Path(root) / row, epochs=epochs, verbose=verbose, variant=row, **changes)


def find_run(root, trial, preset, seed, row) -> Path | None:
    """The complete run of a row: <root>/<row>/<trial>/<preset>-s<seed>-<row>, or None."""
    run = named_folder(Path(root) / row, trial, preset, seed, row)
    return run if (run / "metrics.json").is_file() else None


def keep(run, runs_root, dest_root) -> Path:
    """Copy a run's small files (and figures) to dest_root, keeping its path below runs_root."""
    run = Path(run)
    dest = Path(dest_root) / run.relative_to(runs_root)
    dest.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    if (run / "figures").is_dir():
        shutil.copytree(run / "figures", dest / "figures", dirs_exist_ok=True)
    return dest


def commit(paths, message, repo=None) -> bool:
    """Commit only these paths (other staged or unstaged work is left alone); retried if git is busy. A long loop
    calls this as each run finishes, so a killed session keeps what it measured. The repository is the one that
    holds the paths (not the one the package was imported from: an editable install may point elsewhere)."""
    paths = [Path(p).resolve() for p in paths]
    if repo is None:
        top = subprocess.run(["git", "-C", str(paths[0].parent), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True)
        if top.returncode != 0:
            print(f"could not commit {paths[0]}: it is not inside a git repository", flush=True)
            return False
        repo = top.stdout.strip()
    repo = Path(repo).resolve()
    rel = [str(p.relative_to(repo)) for p in paths]
    for attempt in range(5):
        add = subprocess.run(["git", "-C", str(repo), "add", "--", *rel], capture_output=True, text=True)
        unchanged = add.returncode == 0 and subprocess.run(
            ["git", "-C", str(repo), "diff", "--cached", "--quiet", "--", *rel]).returncode == 0
        if unchanged:  # a resumed loop meets runs it already committed
            return True
        done = add.returncode == 0 and subprocess.run(
            ["git", "-C", str(repo), "commit", "-q", "-m", message, "--", *rel], capture_output=True, text=True
        ).returncode == 0
        if done:
            return True
        time.sleep(5 * (attempt + 1))
    print(f"could not commit {rel}; commit them by hand", flush=True)
    return False


def keeper(runs_root, keep_root, commit_each, label):
    """run -> run: copies each finished run's small files to keep_root (if given) and, with commit_each, commits
    them at once ("results: <label>, <row> seed <s>")."""
    def done(run):
        if keep_root:
            kept = keep(run, runs_root, keep_root)
            if commit_each:
                commit([kept], f"results: {label}, {Path(run).name}")
        return run
    return done


def _history_column(run, key):
    path = Path(run) / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key) not in (None, "")]


def record(run) -> dict:
    """One run's numbers for a table: accuracy, per-class recall, MSE, compute, params, training speed."""
    m = json.loads((Path(run) / "metrics.json").read_text())
    config = json.loads((Path(run) / "config.json").read_text())
    seconds = _history_column(run, "train_seconds")
    speed = [config["train_images"] / s for s in seconds if s > 0]
    val = _history_column(run, "val_label_accuracy")
    return {"run": str(run), "seed": m.get("seed"), "test_accuracy": m.get("test_accuracy"),
            "val_accuracy": max(val) if val else None,  # the best epoch's: what loops choose rows by, not test
            "recall": {c: v["recall"] for c, v in m.get("per_class", {}).items()}, "recon_mse": m.get("recon_mse"),
            "epochs": m.get("epochs"), "train_pflops": m.get("train_pflops"), "params": m.get("params"),
            "train_gflops_per_image": None if config.get("train_flops_per_image") is None
            else config["train_flops_per_image"] / 1e9,
            "images_per_second": round(statistics.median(speed), 1) if speed else None,
            "precision": config.get("precision"),
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
    for key in ("test_accuracy", "val_accuracy", "recon_mse", "train_pflops", "images_per_second",
                "val_balanced_accuracy", "val_balanced_accuracy_without_logit_adjustment"):
        out[key], out[f"{key}_sd"] = mean_sd(key)
    for key in ("params", "train_gflops_per_image", "epochs", "precision"):
        out[key] = records[0].get(key)
    out["recall"] = {c: mean_sd(None, lambda r, c=c: r["recall"].get(c))[0] for c in CLASS_NAMES}
    return out


def by_validation(found) -> list:
    """Row names, best validation accuracy first: loops pick rows (cutout's base, second seeds) by this, so the
    test set is scored, never chosen on."""
    return sorted(found, key=lambda r: -(found[r].get("val_accuracy") or 0.0))


def collect(root, trial, preset, rows, seeds) -> dict:
    """row -> summary over the seeds that have a complete run (rows without any are left out)."""
    found = {}
    for row in rows:
        recs = [record(run) for seed in seeds if (run := find_run(root, trial, preset, seed, row))]
        if recs:
            found[row] = summarize(recs)
    return found


def pct(v, sd=None):
    if v is None:
        return ""
    return f"{100 * v:.2f}%" + ("" if sd is None else f" ± {100 * sd:.2f}")


def reduced_recall(summary) -> str:
    """Recall of the three classes the study halved, e.g. 'bird 61 / deer 70 / truck 85'."""
    return " / ".join(f"{c} {100 * summary['recall'][c]:.0f}" for c in STUDY_REDUCED_CLASSES
                      if summary["recall"].get(c) is not None)


def write_table(output, title, command, note, body, record, commit_message=None) -> None:
    """A generated table: <output>.md (title, the command that made it, a note, the body) and <output>.json
    (record plus the command), each written atomically; the markdown is printed too. With commit_message, both
    files are committed."""
    from .evaluate import write_json_atomic, write_text_atomic
    output = Path(output)
    text = f"# {title}\n\nGenerated by `{command}` from run folders. {note}\n\n{body}"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output.with_suffix(".md"), text)
    write_json_atomic(output.with_suffix(".json"), {"command": command, **record})
    print(text)
    if commit_message:
        commit([output.with_suffix(".md"), output.with_suffix(".json")], commit_message)

