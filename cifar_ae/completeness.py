"""Whether a run folder is complete: one checked state that every command asks (light: no Keras import).

A run folder is one of:

- ``absent``: nothing there yet;
- ``incomplete``: a run to resume (`train` picks it up where it stopped: mid-training, or trained but not scored);
- ``complete``: a run `train` reuses and `report` lists. Its ``state.json`` says evaluated, its ``config.json`` key
  digest recomputes from the stored key, its ``metrics.json`` parses with the shape and keys its task needs, its
  model file exists, and ``metrics.json``, ``history.csv`` and ``model.keras`` still have the sha256 recorded in
  ``state.json`` when the run was scored;
- ``record``: the small files of a complete run kept without its model (``results/runs``: config.json,
  history.csv, metrics.json). `report` and `compare` list it; `train` cannot reuse it. Its files are checked
  against the ``SHA256SUMS`` manifest in the nearest folder above that has one (tools/keep_runs.py writes it);
- ``damaged``: anything else. The reason is one line that names the file and the fix.

A digest catches a torn write, an edit by hand and a file swapped in from another run. It is not a signature:
whoever can edit metrics.json can edit the digest beside it.
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path

from .safejson import load_json

STATE_FILE = "state.json"
MANIFEST = "SHA256SUMS"
SEALED = ("metrics.json", "history.csv", "model.keras")  # what state.json's "sha256" covers


class RunDamaged(ValueError):
    """A run folder's files disagree with each other or with their recorded digests; the message names the file."""


@dataclass(frozen=True)
class RunStatus:
    state: str                 # "absent" | "incomplete" | "complete" | "record" | "damaged"
    run: Path
    reason: str = ""           # one line: what is missing (incomplete) or wrong, and the fix (damaged)
    metrics: dict = field(default_factory=dict, compare=False, repr=False)
    config: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def usable(self) -> bool:
        """Its numbers can be reported: a complete run, or a kept record of one."""
        return self.state in ("complete", "record")


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path, fix, kind=dict):
    """A JSON file of the expected top-level type, or a RunDamaged naming the file, what is wrong, and `fix`."""
    try:
        value = load_json(path)
    except ValueError as e:
        raise RunDamaged(f"{path} {e}; {fix}") from None
    if not isinstance(value, kind):
        raise RunDamaged(f"{path} holds a JSON {type(value).__name__}, not the {kind.__name__} a run writes; {fix}")
    return value


def read_history(path, fix) -> dict:
    """history.csv as {column: [float per epoch]}; {} when there is none; RunDamaged naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in (rows[0] if rows else {})
                if k is not None}
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError) as e:
        raise RunDamaged(f"{path} is not a run's history ({type(e).__name__}: {e}); {fix}") from None


# metrics.json: what every run writes, and what each task adds. (check, what a valid value is)
def _count(v):
    return isinstance(v, Integral) and not isinstance(v, bool) and v >= 0


def _unit(v):
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1


def _nonneg(v):
    return isinstance(v, Real) and not isinstance(v, bool) and (v >= 0 or math.isnan(v))


def _opt(check):
    return lambda v: v is None or check(v)


METRICS_KEYS = {
    "trial": (lambda v: isinstance(v, str) and bool(v), "a trial name"),
    "preset": (lambda v: isinstance(v, str) and bool(v), "a preset name"),
    "seed": (_count, "an int >= 0"),
    "epochs": (_count, "an int >= 0"),
}
METRICS_OPTIONAL = {
    "test_images": (_count, "an int >= 0"),
    "balanced_accuracy": (_unit, "a number in [0, 1]"),
    "recon_psnr": (lambda v: isinstance(v, Real) and not isinstance(v, bool), "a number"),
    "train_pflops": (_opt(_nonneg), "a number >= 0 or null"),
    "train_seconds": (_opt(_nonneg), "a number >= 0 or null"),
    "train_images_per_second": (_opt(_nonneg), "a number >= 0 or null"),
    "best_epoch": (_opt(_count), "an int >= 0 or null"),
    "study": (lambda v: isinstance(v, dict), "an object"),
    "per_class": (lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
                  "an object of per-class objects"),
    "confusion_matrix": (lambda v: isinstance(v, list) and all(isinstance(r, list) for r in v), "a list of rows"),
}
TASK_KEYS = {"autoencoder": ("recon_mse",), "classifier": ("test_accuracy",), "joint": ("test_accuracy", "recon_mse")}
TASK_CHECKS = {"recon_mse": (_nonneg, "a number >= 0"), "test_accuracy": (_unit, "a number in [0, 1]")}


def check_metrics(metrics: dict, task: str | None, path, fix) -> None:
    """metrics.json's shape: every key a report reads has the type it expects (RunDamaged naming the key)."""
    required = {**METRICS_KEYS, **{k: TASK_CHECKS[k] for k in TASK_KEYS.get(task, ())}}
    for key, (ok, what) in required.items():
        if key not in metrics:
            raise RunDamaged(f"{path} lacks {key!r}, which every {task or ''} run records; {fix}".replace("  ", " "))
        if not ok(metrics[key]):
            raise RunDamaged(f"{path}: {key} must be {what}; got {metrics[key]!r}; {fix}")
    for key, (ok, what) in {**METRICS_OPTIONAL, **TASK_CHECKS}.items():
        if key in metrics and not ok(metrics[key]):
            raise RunDamaged(f"{path}: {key} must be {what}; got {metrics[key]!r}; {fix}")


def check_key(config: dict, path, fix) -> None:
    """The key digest recomputes from the stored key (an edited key or digest is another run's)."""
    from .runs import digest
    key, recorded = config.get("key"), config.get("key_digest")
    if not isinstance(key, dict) or not isinstance(recorded, str):
        raise RunDamaged(f"{path} has no run key (needs 'key' and 'key_digest'); {fix}")
    try:
        ok = digest(key) == recorded
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise RunDamaged(f"{path}: key_digest {recorded} does not recompute from the stored key (edited); {fix}")


def _manifest_for(run: Path):
    """The nearest SHA256SUMS above `run` and the run's path relative to that folder."""
    for folder in [run, *run.parents][:8]:
        manifest = folder / MANIFEST
        if manifest.is_file():
            return manifest, run.relative_to(folder)
    return None, None


def read_manifest(path) -> dict:
    """SHA256SUMS (sha256sum's format: '<hex>  <relative path>' a line) as {path: hex}."""
    out = {}
    for line in Path(path).read_text().splitlines():
        digest, sep, name = line.partition("  ")
        if sep and len(digest) == 64:
            out[name] = digest
    return out


def run_status(run) -> RunStatus:
    """The state of one run folder (see the module docstring). Never raises for what is in the folder."""
    run = Path(run)
    retrain = f"retrain it with `python -m cifar_ae train ... --force` (its command is in {run / 'config.json'})"
    config_path, metrics_path, state_path = run / "config.json", run / "metrics.json", run / STATE_FILE
    try:
        if not run.is_dir():
            if run.exists():
                raise RunDamaged(f"{run} is a file, not a run folder; move it away or pick another runs root.")
            return RunStatus("absent", run)
        config = read_json(config_path, retrain) if config_path.exists() else None
        state = read_json(state_path, retrain) if state_path.exists() else None
        if state is None:
            if not metrics_path.exists():
                return RunStatus("incomplete" if config is not None else "absent", run, "no epoch committed yet")
            if config is None:
                raise RunDamaged(f"{metrics_path} has no config.json beside it; {retrain}")
            return _record(run, config, retrain)
        if config is None:
            raise RunDamaged(f"{state_path} has no config.json beside it; delete {run} to retrain that run.")
        check_key(config, config_path, retrain)
        if not state.get("evaluated"):
            why = "trained, not yet scored" if state.get("trained") else \
                f"{state.get('epochs_done', 0)} epoch(s) committed"
            return RunStatus("incomplete", run, why, config=config)
        digests = state.get("sha256")
        if not isinstance(digests, dict):
            raise RunDamaged(f"{state_path} says evaluated but records no sha256 of its files; {retrain}")
        model = run / "model.keras"
        if not model.is_file():
            raise RunDamaged(f"{model} is missing (the run is scored on it, and classifiers read it); {retrain}")
        for name in SEALED:
            path = run / name
            if name not in digests and not path.exists():
                continue  # a run with no epochs logged has no history.csv
            if not path.is_file():
                raise RunDamaged(f"{path} is missing; {retrain}")
            if sha256_file(path) != digests.get(name):
                raise RunDamaged(f"{path} was edited or damaged after the run wrote it (its sha256 differs from "
                                 f"{state_path}); {retrain}")
        metrics = read_json(metrics_path, retrain)
        check_metrics(metrics, (config.get("trial") or {}).get("task"), metrics_path, retrain)
        read_history(run / "history.csv", retrain)
        return RunStatus("complete", run, metrics=metrics, config=config)
    except RunDamaged as e:
        return RunStatus("damaged", run, str(e))
    except OSError as e:  # permissions, a loop of links: the folder cannot be read
        return RunStatus("damaged", run, f"{run} cannot be read ({e.strerror or e}); fix its permissions or move it away.")


def _record(run: Path, config: dict, retrain: str) -> RunStatus:
    """A kept record (metrics.json + config.json, no state.json): shape, key and the manifest's digests."""
    metrics_path = run / "metrics.json"
    if (run / "checkpoints").exists() or (run / "model.keras").exists():
        raise RunDamaged(f"{run} has a model or checkpoints but no {STATE_FILE}; {retrain}")
    if "key" in config or "key_digest" in config:  # records from before run keys have neither
        check_key(config, run / "config.json", retrain)
    manifest, relative = _manifest_for(run)
    if manifest is not None:
        sums = read_manifest(manifest)
        for name in ("config.json", "metrics.json", "history.csv"):
            listed = sums.get(f"{relative.as_posix()}/{name}")
            if listed is None:
                continue
            if not (run / name).is_file() or sha256_file(run / name) != listed:
                raise RunDamaged(f"{run / name} differs from its sha256 in {manifest} (edited or damaged); restore "
                                 "it with `git checkout`, or rerun its row and keep it with tools/keep_runs.py.")
    metrics = read_json(metrics_path, retrain)
    check_metrics(metrics, (config.get("trial") or {}).get("task"), metrics_path, retrain)
    read_history(run / "history.csv", retrain)
    return RunStatus("record", run, metrics=metrics, config=config)


def is_complete(run) -> bool:
    """A run `train` reuses: complete, model included."""
    return run_status(run).state == "complete"


def reportable(run) -> RunStatus:
    """run_status for a command that tables many runs: a damaged folder is a one-line warning on stderr, and the
    caller skips whatever is not `usable`."""
    status = run_status(run)
    if status.state == "damaged":
        import sys
        print(f"warning: skipped {status.reason}", file=sys.stderr)
    return status


def require_usable(run) -> RunStatus:
    """The status of a run whose numbers are about to be read, or a RunDamaged / FileNotFoundError saying why not."""
    status = run_status(run)
    if status.state == "damaged":
        raise RunDamaged(status.reason)
    if not status.usable:
        raise FileNotFoundError(f"{run}: not a complete run folder ({status.reason or status.state}); train it with "
                                "`python -m cifar_ae train NAME` (or resume it: rerun its command).")
    return status


def write_manifest(root) -> Path:
    """<root>/SHA256SUMS: the sha256 of every kept record's small files under `root` (`sha256sum -c` reads it)."""
    root = Path(root)
    lines = []
    for metrics in sorted(root.glob("**/metrics.json")):
        run = metrics.parent
        for name in ("config.json", "metrics.json", "history.csv"):
            if (run / name).is_file():
                lines.append(f"{sha256_file(run / name)}  {(run / name).relative_to(root).as_posix()}")
    from .evaluate import write_text_atomic
    write_text_atomic(root / MANIFEST, "\n".join(lines) + "\n")
    return root / MANIFEST
