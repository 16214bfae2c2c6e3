"""Run identity: what a run is (its key), where its folder is, and that one process at a time writes it.

A run is keyed by everything that decides its result: the resolved trial (every field, changes applied, minus
its name, description and the study's numbers), the preset's settings (epochs included), the seed, the
precision actually used, the data (digest of the decoded CIFAR-10 arrays and of the training subset) and,
for a classifier on frozen features, its upstream run's key digest. The code version is recorded beside the
key, not in it: a commit that changes no trial keeps its runs.

Folders stay readable: the trial exactly as registered in TRIALS lives in ``<trial>/<preset>-s<seed>``; any
other key (a changed field, ``--epochs``, a Trial built in a notebook) in ``<trial>/<preset>-s<seed>-<digest>``
or, with a name the user gives, ``<trial>/<preset>-s<seed>-<variant>``. A folder whose config.json holds
another key is never reused or resumed.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import subprocess
from pathlib import Path

from . import trials as _trials
from .trials import Trial, TrialError, check_name

# Trial fields that do not decide a result: names and prose, the study's numbers, and the per-preset table
# (its resolved entry is in the key as `settings`)
NOT_IN_KEY = ("name", "description", "study", "presets")
# The fields every key has held since keys began. A field added to Trial later enters a key only where a trial
# sets it away from its default, so adding a trick (off by default) keeps every existing run's key.
BASE_FIELDS = ("task", "model", "model_args", "upstream", "feature_layer", "optimizer", "learning_rate", "batch_size",
               "train_set", "validation", "scaling", "augmentation", "class_weight", "loss_weights", "weight_decay",
               "lr_schedule", "warmup", "label_smoothing", "recon_weight", "batch_sizes", "tta_flip", "precision",
               "strategy")
SPEED_SETTINGS = ("workers",)  # how fast, not what: never part of a key
DIGEST_CHARS = 10
REPO_DIR = Path(__file__).resolve().parent.parent


class RunConflict(ValueError):
    """A run folder holds another run, or another process is writing it; the message says what to do."""


def canonical(obj):
    """JSON-normal form: tuples as lists, dict keys sorted, numbers as JSON has them."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_default))


def _default(o):
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    raise TypeError(f"{type(o).__name__} is not part of a run key")


def digest(obj, chars=DIGEST_CHARS) -> str:
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


def _field_defaults() -> dict:
    import dataclasses
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(Trial)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


def key_fields(trial: Trial, builder_defaults: dict | None = None) -> dict:
    """The trial's part of a key: BASE_FIELDS always, later fields where set; model_args without the entries that
    equal the builder's defaults (``{}`` and the defaults written out are the same model)."""
    defaults = _field_defaults()
    fields = {k: v for k, v in trial.to_dict().items() if k not in NOT_IN_KEY
              and (k in BASE_FIELDS or k not in defaults or canonical(v) != canonical(defaults[k]))}
    if builder_defaults:
        fields["model_args"] = {k: v for k, v in trial.model_args.items()
                                if k not in builder_defaults or canonical(v) != canonical(builder_defaults[k])}
    return fields


def trial_changes(base, other) -> dict:
    """What `other` changes against `base`, by meaning (Trials or their to_dict() records): {field: other's value}.

    Fields that decide no result (names, prose, the study's numbers) are left out, and so are model_args entries
    written out at the builder's defaults, as in a run's key: a notebook's model cell that spells out every argument
    is the registered trial, and an edit shows as the one argument it changed."""
    a = canonical(base.to_dict() if isinstance(base, Trial) else base)
    b = canonical(other.to_dict() if isinstance(other, Trial) else other)
    out = {k: v for k, v in b.items() if k not in ("name", "description", "study", "model_args") and a.get(k) != v}
    args_a, args_b = a.get("model_args") or {}, b.get("model_args") or {}
    if args_a != args_b:
        defaults = {}
        if a.get("model") == b.get("model"):
            from .models import builder_defaults  # imports keras: only when model_args differ in spelling
            defaults = canonical(builder_defaults(b["model"])) if b.get("model") else {}
        full_a, full_b = {**defaults, **args_a}, {**defaults, **args_b}
        changed = {k: full_b.get(k) for k in sorted(set(full_a) | set(full_b)) if full_a.get(k) != full_b.get(k)}
        if changed:
            out["model_args"] = changed
    return out


def run_key(trial: Trial, preset: str, settings: dict, seed: int, precision: str, data: dict,
            upstream: dict | None = None, builder_defaults: dict | None = None, builder_source: str | None = None) -> dict:
    """Everything that decides a run's result (see the module docstring). builder_source: a digest of the
    builder's code, for a builder defined outside cifar_ae.models (a notebook cell), so editing it is a new run."""
    fields = key_fields(trial, builder_defaults)
    fields["precision"] = precision  # "auto" resolved on this machine
    key = {"trial": fields, "preset": preset, "settings": {k: v for k, v in settings.items() if k not in SPEED_SETTINGS},
           "seed": int(seed), "data": data, "upstream": upstream}
    if builder_source is not None:
        key["builder_source"] = builder_source
    return canonical(key)


def is_registered(trial: Trial, settings: dict, preset: str, builder_defaults: dict | None = None) -> bool:
    """The trial as TRIALS defines it (up to model_args written out at their defaults), at the preset's own
    settings: it gets the plain folder name."""
    registered = _trials.TRIALS.get(trial.name)
    return (registered is not None and registered.model == trial.model
            and canonical(key_fields(registered, builder_defaults)) == canonical(key_fields(trial, builder_defaults))
            and canonical(settings) == canonical(registered.settings(preset)))


NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows filesystems


def variant_name(*parts) -> str | None:
    """A run folder's suffix from its parts, empty ones left out: ("max40", "as-built") -> "max40-as-built"."""
    return "-".join(part for part in parts if part) or None


def folder_name(preset, seed, key_digest, plain: bool, variant=None) -> str:
    base = f"{preset}-s{seed}"
    if variant is not None:
        name = f"{base}-{check_name(variant, 'variant')}"
        if len(name.encode()) > NAME_MAX:
            raise TrialError(f"variant name is {len(variant)} characters: folder {name[:40]}... would exceed the "
                             f"filesystem's {NAME_MAX}-byte name limit; use a variant of at most "
                             f"{NAME_MAX - len(base) - 1} characters.")
        return name
    return base if plain else f"{base}-{key_digest}"


def named_folder(root, trial_name, preset, seed, variant=None) -> Path:
    """Where a registered trial's run (variant None) or a named variant of it lies: <root>/<trial>/<folder_name>."""
    return Path(root) / trial_name / folder_name(preset, seed, "", True, variant)


def inside(root, path) -> Path:
    """`path` resolved, checked to lie inside `root` (names from JSON or the command line never escape it)."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise TrialError(f"run folder {path} would lie outside the runs root {root}; use a plain trial name.")
    return path_r


def run_folder(root, trial: Trial, preset, seed, key_digest, plain, variant=None) -> Path:
    check_name(trial.name, "trial")
    path = Path(root) / trial.name / folder_name(preset, seed, key_digest, plain, variant)
    inside(root, path)
    return path


def read_config(run) -> dict | None:
    """A run folder's config.json, or None if it has none; an unreadable one is a RunConflict naming it."""
    path = Path(run) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        return config
    except (OSError, ValueError) as e:
        raise RunConflict(f"{path} is unreadable ({e}); delete {run} to retrain that run.") from None


def check_same_run(run, key_digest, config, model_args=None, builder_defaults=None) -> None:
    """Refuse a folder whose config.json holds another key (a stale run, or a variant name used twice), or whose
    builder had other defaults for arguments this trial leaves unset. The key leaves such defaults out (so `{}` and
    the defaults written out are one model), so without this check an edited default in cifar_ae/models.py would
    silently reuse runs of the old model."""
    if config is None:
        return
    theirs = config.get("key_digest")
    if theirs != key_digest:
        what = f"key {theirs}" if theirs else "no run key (made by an older version)"
        raise RunConflict(f"{run} holds another run ({what}; this one is {key_digest}): its trial, settings, seed or "
                          "data differ. Pass force=True / --force to retrain it there, or give this run its own "
                          "variant name.")
    recorded = config.get("builder_defaults")  # absent in runs from before it was recorded: nothing to compare
    if recorded is None or builder_defaults is None:
        return
    now = canonical(builder_defaults)
    changed = sorted(k for k in set(recorded) | set(now)
                     if k not in (model_args or {}) and canonical(recorded.get(k)) != canonical(now.get(k)))
    if changed:
        diffs = ", ".join(f"{k} {recorded.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise RunConflict(f"{run} was trained with other builder defaults ({diffs}): it is another model. Pass "
                          "force=True / --force to retrain it there, or give this run its own variant name.")


MIN_FREE_BYTES = 64 << 20  # a v4 run's checkpoints and model; the smallest run needs far less


def check_writable(root, what="runs root", fix="pass --out DIR or set CIFAR_AE_RUNS to a folder you can write",
                   min_free=MIN_FREE_BYTES) -> Path:
    """`root` is (or can be made) a writable folder with room, checked before any data loads: a file in its place,
    a read-only or full filesystem is a one-line RunConflict naming it and `fix`."""
    root = Path(root).expanduser()
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise RunConflict(f"{what} {root}: {existing} is a file, not a folder; {fix}.")
        import tempfile
        with tempfile.TemporaryFile(dir=existing):
            pass
        free = os.statvfs(existing).f_bavail * os.statvfs(existing).f_frsize
    except OSError as e:
        raise RunConflict(f"{what} {root} cannot be written ({e.strerror or e}); {fix}.") from None
    if free < min_free:
        raise RunConflict(f"{what} {root} has {free / 2**20:.1f} MiB free, under the {min_free >> 20} MiB a run "
                          f"needs; free some space, or {fix}.")
    return root


def code_version() -> dict:
    """The git commit (and whether the checkout has uncommitted changes) when run from a checkout, else the
    package version."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"git_commit": commit, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version
        try:
            return {"package_version": version("cifar-ae")}
        except PackageNotFoundError:
            return {"package_version": None}


class RunLock:
    """An exclusive flock on <run>/.lock for as long as one process writes the run folder.

    The kernel drops a flock when its holder dies, so a lock left by a killed process is simply taken over;
    the pid written in the file is only for the message the second process gets.
    """

    def __init__(self, run):
        self.run, self.fd = Path(run), None

    def __enter__(self):
        self.run.mkdir(parents=True, exist_ok=True)
        path = self.run / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunConflict(f"{self.run} is being trained by another process (pid {holder}); wait for it, "
                                  "or stop it and rerun.") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock; the file stays (removing it would race a waiting process)
            self.fd = None
        return False
