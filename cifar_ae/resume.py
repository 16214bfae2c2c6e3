"""Faithful resume: a run killed at any point and rerun ends exactly where an uninterrupted one would.

`RunState` is a Keras callback that, at the end of every epoch, writes

- ``checkpoints/epoch-<n>.npz``: every model variable (weights, BatchNorm statistics, dropout seed states) and
  every optimizer variable (step count, learning rate, moments);
- ``checkpoints/best-<n>.npz`` when the monitored validation metric improved;
- ``state.json`` last, atomically: the commit point. It names both files with their sha256, the best value
  and epoch, the history rows (so each epoch appears once in history.csv) and the state of the stateful
  callbacks (ReduceLROnPlateau, EarlyStopping), which Keras would otherwise reset on every `fit`;
- ``history.csv``, regenerated from state.json, with each epoch's wall and CPU seconds.

On the next `fit` it restores all of that, and sets each dataset's epoch so the batch order continues where
it stopped. A checkpoint that does not match its recorded sha256 (torn, or edited) is refused with a
one-line error naming the file to delete.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import keras

from .atomic import write_atomic
from .completeness import sha256_file

STATE_FILE = "state.json"
STATEFUL_ATTRS = {  # callback class name -> attributes that carry over between epochs
    "ReduceLROnPlateau": ("best", "wait", "cooldown_counter"),
    "EarlyStopping": ("best", "wait", "best_epoch", "stopped_epoch"),
}


class CheckpointError(ValueError):
    """A run's checkpoint is damaged or does not fit the model; the message names the file and the fix."""


def write_bytes_atomic(path, data: bytes):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    write_atomic(path, write)


def save_arrays(path, arrays) -> str:
    """np.savez of `arrays` written atomically; returns the file's sha256."""
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    data = buf.getvalue()
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def load_arrays(path, sha256, fix) -> list:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {fix}")
    if sha256_file(path) != sha256:
        raise CheckpointError(f"{path} is damaged (its sha256 differs from the one in {STATE_FILE}); {fix}")
    with np.load(path, allow_pickle=False) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def training_variables(model, extra=()) -> list:
    """What a resumed run needs: the model's variables (incl. seed-generator states), the optimizer's, and
    `extra`: callbacks' own variables (tricks.Lookahead's slow copy)."""
    return list(model.variables) + list(model.optimizer.variables) + list(extra)


def assign(variables, arrays, path, fix):
    if len(variables) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(variables, arrays)):
        raise CheckpointError(f"{path} does not fit this model ({len(arrays)} arrays for {len(variables)} "
                              f"variables); {fix}")
    for v, a in zip(variables, arrays):
        v.assign(a)


def read_state(run) -> dict | None:
    path = Path(run) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("history", []), list):
            raise ValueError("not a run state")
        return state
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); delete {run} to retrain that run.") from None


def write_state(run, state):
    write_bytes_atomic(Path(run) / STATE_FILE, (json.dumps(state, indent=1) + "\n").encode())


def write_history(run, rows):
    """history.csv from the committed rows: one line per epoch, columns in a stable order."""
    if not rows:
        return
    keys = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_bytes_atomic(Path(run) / "history.csv", buf.getvalue().encode())


def _jsonable(v):
    v = float(v) if isinstance(v, (np.floating, np.integer)) else v
    return v if isinstance(v, (int, float)) else float(np.asarray(v))


class RunState(keras.callbacks.Callback):
    """Per-epoch checkpoint + restore for one run folder (see the module docstring).

    monitor/mode: the validation metric that picks the best epoch. stateful: callbacks whose counters must
    survive a restart. datasets: objects with ``set_epoch(epoch)`` (ArrayBatches), told each epoch's number.
    Put it last in the callback list: it must see the logs and counters the other callbacks have updated.
    """

    def __init__(self, run, monitor, mode, stateful=(), datasets=(), variables=()):
        super().__init__()
        self.run, self.monitor, self.mode = Path(run), monitor, mode
        self.stateful, self.datasets, self.extra = list(stateful), list(datasets), list(variables)
        (self.run / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.fix = f"delete {self.run / 'checkpoints'} and {self.run / STATE_FILE} to retrain this run from its start."
        self.state = read_state(self.run) or {"epochs_done": 0, "history": [], "best": None, "checkpoint": None,
                                                  "callbacks": {}, "stopped": False}
        self._t0 = self._cpu0 = self._train_end = None

    # ------------------------------------------------------------------ what a rerun starts from
    @property
    def epochs_done(self) -> int:
        return int(self.state["epochs_done"])

    @property
    def stopped(self) -> bool:
        return bool(self.state.get("stopped"))

    @property
    def best_epoch(self):
        best = self.state.get("best")
        return None if best is None else best["epoch"]

    def _restore_model(self, model, entry) -> bool:
        """The model's variables from a checkpoint entry of state.json (best or last); False if there is none."""
        if entry is None:
            return False
        arrays = load_arrays(self.run / "checkpoints" / entry["file"], entry["sha256"], self.fix)
        assign(list(model.variables), arrays[:len(model.variables)], entry["file"], self.fix)
        return True

    def restore_best(self, model):
        return self._restore_model(model, self.state.get("best"))

    def restore_final(self, model):
        """The run's result: its best epoch, or with no validation metric (Trial.validation='none') its last
        epoch's checkpoint, so a run killed after training ends on its trained weights, not on fresh ones."""
        return self.restore_best(model) or self._restore_model(model, self.state.get("checkpoint"))

    # ------------------------------------------------------------------ Keras hooks
    def on_train_begin(self, logs=None):
        ckpt = self.state.get("checkpoint")
        if ckpt is not None and getattr(self, "_restored", None) != ckpt["file"]:
            arrays = load_arrays(self.run / "checkpoints" / ckpt["file"], ckpt["sha256"], self.fix)
            assign(training_variables(self.model, self.extra), arrays, ckpt["file"], self.fix)
            self._restored = ckpt["file"]
        for cb in self.stateful:  # after their own on_train_begin reset them
            for attr, value in self.state["callbacks"].get(type(cb).__name__, {}).items():
                setattr(cb, attr, value)

    def on_epoch_begin(self, epoch, logs=None):
        for ds in self.datasets:
            ds.set_epoch(epoch)
        self._t0, self._cpu0, self._train_end = time.perf_counter(), os.times(), None

    def on_test_begin(self, logs=None):
        if self._t0 is not None and self._train_end is None:  # validation inside fit: training time ends here
            self._train_end = time.perf_counter(), os.times()

    def on_epoch_end(self, epoch, logs=None):
        now, cpu_now = time.perf_counter(), os.times()
        train_end, cpu_end = self._train_end or (now, cpu_now)
        row = {"epoch": epoch, **{k: _jsonable(v) for k, v in (logs or {}).items()},
               "train_seconds": round(train_end - self._t0, 3), "epoch_seconds": round(now - self._t0, 3),
               "train_user_seconds": round(cpu_end.user - self._cpu0.user, 3),
               "train_sys_seconds": round(cpu_end.system - self._cpu0.system, 3)}
        state = dict(self.state)
        ckpt_dir = self.run / "checkpoints"
        value = (logs or {}).get(self.monitor)
        best = state.get("best")
        if value is not None and math.isfinite(value) and (
                best is None or (value < best["value"] if self.mode == "min" else value > best["value"])):
            name = f"best-{epoch + 1}.npz"
            best = {"value": float(value), "epoch": epoch + 1, "file": name,
                    "sha256": save_arrays(ckpt_dir / name, [v.numpy() for v in self.model.variables])}
        name = f"epoch-{epoch + 1}.npz"
        ckpt = {"file": name, "epoch": epoch + 1,
                "sha256": save_arrays(ckpt_dir / name, [v.numpy() for v in training_variables(self.model, self.extra)])}
        state.update(epochs_done=epoch + 1, history=[*state["history"], row], best=best, checkpoint=ckpt,
                     stopped=bool(self.model.stop_training),
                     callbacks={type(cb).__name__: {a: _jsonable(getattr(cb, a)) for a in STATEFUL_ATTRS.get(
                         type(cb).__name__, ()) if hasattr(cb, a)} for cb in self.stateful})
        write_state(self.run, state)  # the commit point
        self.state, self._restored = state, ckpt["file"]
        write_history(self.run, state["history"])
        keep = {ckpt["file"], best["file"] if best else None}
        for old in ckpt_dir.glob("*.npz"):
            if old.name not in keep:
                old.unlink(missing_ok=True)


def save_model_atomic(model, path):
    """model.save to a temp .keras file, then rename: a kill never leaves half a model.keras."""
    write_atomic(path, model.save, suffix=".keras")
