"""Hyperparameter search with keras-tuner: random, Bayesian or Hyperband, one process or chief + workers.

    python -m cifar_ae tune --tuner bayesian --max-trials 10 --preset quick           # one process
    python -m cifar_ae tune --tuner random --max-trials 8 --preset smoke --overwrite   # start over

What is searched (`joint_space`, `classifier_space`): the number of encoder blocks and convs per block, base
filters, kernel size, head blocks and width, dropout, reconstruction loss weight (joint model), optimizer with
its own learning-rate range, batch size (chosen in `HyperModel.fit`, which builds an `ArrayBatches` of that
size) and class weighting.

Honest objective: every trial is scored on a stratified hold-out split of the imbalanced training subset
(`training.prepare_data`, the same split `train` uses for the same preset and seed), never on the test set.
The score is the validation *balanced* accuracy (mean per-class recall): the test set is balanced while the
hold-out keeps the training imbalance, so plain validation accuracy would reward ignoring bird/deer/truck.
The test set is scored once, for the best configuration, when the search ends.

State lives in keras-tuner's project directory, runs/tuning/<model>-<tuner>-<preset>-s<seed>: rerunning the
same command continues the search (an interrupted trial is retried), `--overwrite` starts over, and a larger
`--max-trials` extends it. keras-tuner clears the Keras session before each build; we clear it again after
each trial, so memory stays flat (each trial records its process RSS).

Distributed (keras-tuner's chief/worker mode over gRPC): one chief holds the oracle, workers ask it for trials.

    python -m cifar_ae tune --tuner bayesian --max-trials 20 --chief --oracle-ip 0.0.0.0 --oracle-port 8000
    python -m cifar_ae tune --tuner bayesian --max-trials 20 --worker 0 --oracle-ip CHIEF_HOST --oracle-port 8000
    python -m cifar_ae tune --tuner bayesian --max-trials 20 --worker 1 --oracle-ip CHIEF_HOST --oracle-port 8000

The flags only set keras-tuner's own variables KERASTUNER_TUNER_ID ("chief" / "worker<ID>"),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT, which may be exported instead. Give every process the same
search arguments and the same project directory (a shared filesystem across machines: workers write the
trial checkpoints that the chief scores on the test set at the end, and Hyperband resumes from them).
"""
from __future__ import annotations

import fcntl
import gc
import json
import math
import os
import shlex
import socket
import sys
import time
from pathlib import Path

import numpy as np
import keras
import keras_tuner as kt
from keras import layers, ops

from . import data as D, evaluate as E, models as M, plots as P
from .batches import ArrayBatches
from .trials import PRESETS, Trial

TUNERS = ("random", "bayesian", "hyperband", "grid")
MODELS = ("joint", "feature-classifier")
# How big a search each preset is: images per trial (validation and test as in trials.PRESETS, so the
# hold-out split is the one `train` uses for that preset) and epochs per trial.
TUNING_PRESETS = {
    "smoke": dict(train_images=256, val_images=PRESETS["smoke"]["val_images"], test_images=256, epochs=1),
    "quick": dict(train_images=10_000, val_images=PRESETS["quick"]["val_images"], test_images=None, epochs=2),
    "full": dict(train_images=None, val_images=PRESETS["full"]["val_images"], test_images=None, epochs=30),
}
UPSTREAM = "v1-cnn-ae"  # the autoencoder whose frozen features the feature-classifier search classifies
SIDECAR = "cifar_ae_trial.json"  # per trial: which tuner ran it, seconds, memory
# Trials are a few hundred steps long. With Keras' default BatchNorm momentum (0.99) the moving statistics
# used at validation still carry ~5-20% of their initial values after that, so validation scores would
# mostly measure that lag (and favour small batches, i.e. more steps). Tuned models use 0.9.
TRIAL_BN_MOMENTUM = 0.9


# --------------------------------------------------------------------------- metric, models

@keras.saving.register_keras_serializable("cifar_ae")
class BalancedAccuracy(keras.metrics.Metric):
    """Mean per-class recall over the classes seen (scikit-learn's balanced_accuracy_score).

    Sample weights are ignored on purpose: class-weighted training must not change what is measured.
    """

    def __init__(self, num_classes=M.NUM_CLASSES, name="balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.hits = self.add_variable(shape=(self.num_classes,), initializer="zeros", name="hits")
        self.seen = self.add_variable(shape=(self.num_classes,), initializer="zeros", name="seen")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        onehot = ops.one_hot(y_true, self.num_classes, dtype="float32")
        hit = ops.cast(ops.equal(y_true, ops.cast(ops.argmax(y_pred, axis=-1), "int32")), "float32")
        self.seen.assign_add(ops.sum(onehot, axis=0))
        self.hits.assign_add(ops.sum(onehot * ops.expand_dims(hit, -1), axis=0))

    def result(self):
        present = ops.cast(self.seen > 0, "float32")
        recall = ops.divide_no_nan(self.hits, self.seen)
        return ops.sum(recall) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        self.hits.assign(ops.zeros((self.num_classes,)))
        self.seen.assign(ops.zeros((self.num_classes,)))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


# --------------------------------------------------------------------------- search spaces

def _training_space(hp, v):
    v["optimizer"] = hp.Choice("optimizer", ["adam", "sgd"], default="adam")
    with hp.conditional_scope("optimizer", ["adam"]):  # each optimizer gets a range that suits it
        adam_lr = hp.Float("learning_rate_adam", 1e-4, 3e-3, sampling="log", default=1e-3)
    with hp.conditional_scope("optimizer", ["sgd"]):
        sgd_lr = hp.Float("learning_rate_sgd", 3e-3, 1e-1, sampling="log", default=1e-2)
    v["learning_rate"] = adam_lr if v["optimizer"] == "adam" else sgd_lr
    v["batch_size"] = hp.Choice("batch_size", [32, 64, 128], default=64)
    v["class_weight"] = hp.Choice("class_weight", ["none", "inverse"], default="none")
    return v


def _grid_training_space(hp, v):
    """The training half of the grid: every value listed, so GridSearch can enumerate it (24 combinations)."""
    v["optimizer"] = hp.Choice("optimizer", ["adam", "sgd"], default="adam")
    with hp.conditional_scope("optimizer", ["adam"]):
        adam_lr = hp.Choice("learning_rate_adam", [3e-4, 1e-3, 3e-3], default=1e-3)
    with hp.conditional_scope("optimizer", ["sgd"]):
        sgd_lr = hp.Choice("learning_rate_sgd", [3e-3, 1e-2, 3e-2], default=1e-2)
    v["learning_rate"] = adam_lr if v["optimizer"] == "adam" else sgd_lr
    v["batch_size"] = hp.Choice("batch_size", [64, 128], default=64)
    v["class_weight"] = hp.Choice("class_weight", ["none", "inverse"], default="none")
    return v


def joint_grid(hp) -> dict:
    """`--tuner grid` over the joint model: depth (2 or 3 encoder blocks) x the training grid; the rest at the
    study's values. 2 x 24 = 48 combinations: affordable, unlike the full space (thousands)."""
    v = {"encoder_blocks": hp.Int("encoder_blocks", 2, 3, step=1, default=2), "convs_per_block": 2, "filters": 32,
         "kernel_size": 3, "head_blocks": 2, "head_filters": 128, "dropout": 0.3, "reconstruction_weight": 1.0}
    return _grid_training_space(hp, v)


def classifier_grid(hp) -> dict:
    """`--tuner grid` over the frozen-feature classifier: head depth (1 or 2 blocks) x the training grid."""
    v = {"head_blocks": hp.Int("head_blocks", 1, 2, step=1, default=2), "head_filters": 128, "convs_per_block": 2,
         "dense_units": 0, "dropout": 0.3}
    return _grid_training_space(hp, v)


def joint_space(hp) -> dict:
    """The joint model's space; returns the values of `hp` as builder/training arguments."""
    v = {"encoder_blocks": hp.Int("encoder_blocks", 2, 3, default=2),  # 1 block = a 16x16 code: heavy head
         "convs_per_block": hp.Int("convs_per_block", 1, 2, default=2),
         "filters": hp.Choice("filters", [16, 32], default=32),  # first block; doubles per block, at most 128
         "kernel_size": hp.Choice("kernel_size", [3, 5], default=3),
         "head_blocks": hp.Int("head_blocks", 1, 2, default=2),
         "head_filters": hp.Choice("head_filters", [64, 128], default=128),
         "dropout": hp.Float("dropout", 0.1, 0.5, step=0.1, default=0.3),
         "reconstruction_weight": hp.Float("reconstruction_weight", 0.05, 5.0, sampling="log", default=1.0)}
    return _training_space(hp, v)


def classifier_space(hp) -> dict:
    """The frozen-feature classifier's (smaller) space."""
    v = {"head_blocks": hp.Int("head_blocks", 1, 2, default=2),
         "head_filters": hp.Choice("head_filters", [64, 128], default=128),
         "convs_per_block": hp.Int("convs_per_block", 1, 2, default=2),
         "dense_units": hp.Choice("dense_units", [0, 256], default=0),
         "dropout": hp.Float("dropout", 0.1, 0.5, step=0.1, default=0.3)}
    return _training_space(hp, v)


def joint_model_args(v) -> dict:
    filters = [min(int(v["filters"]) * 2 ** b, 128) for b in range(int(v["encoder_blocks"]))]
    return {"filters": filters, "convs_per_block": int(v["convs_per_block"]), "kernel_size": int(v["kernel_size"]),
            "head_filters": [int(v["head_filters"])] * int(v["head_blocks"]), "dense_units": [],
            "dropout": round(float(v["dropout"]), 3), "bn_momentum": TRIAL_BN_MOMENTUM}


def classifier_model_args(v) -> dict:
    return {"filters": [int(v["head_filters"])] * int(v["head_blocks"]), "convs_per_block": int(v["convs_per_block"]),
            "dense_units": [int(v["dense_units"])] if int(v["dense_units"]) else [], "dropout": round(float(v["dropout"]), 3),
            "bn_momentum": TRIAL_BN_MOMENTUM}


def make_optimizer(name, learning_rate):
    """The same optimizers as training.make_optimizer (SGD: momentum 0.9, Nesterov)."""
    from .training import make_optimizer as training_optimizer
    return training_optimizer(Trial("tuning", "", task="joint", model="joint_model", optimizer=name, learning_rate=float(learning_rate)))


# --------------------------------------------------------------------------- hypermodels

class _CifarHyperModel(kt.HyperModel):
    """Shared: seeded builds, data held by the hypermodel (loaded on first use), batch size chosen in fit()."""
    task = None
    targets = None
    space = None

    grid = None  # the enumerable space `--tuner grid` uses

    def __init__(self, preset="quick", seed=0, source=None, runs_dir=None, name=None, grid=False):
        super().__init__(name=name)
        self.preset, self.seed, self.source, self.runs_dir = preset, int(seed), source, runs_dir
        if grid:
            self.space = self.grid
        self._data = None
        self.builds = []  # keras' name counter at each build: stays 1 when the session is cleared per trial

    @property
    def data(self):
        if self._data is None:
            self._data = prepare_tuning_data(self.preset, self.seed, self.source)
        return self._data

    def declare_hyperparameters(self, hp):
        self.space(hp)

    def _compile(self, model, v):
        raise NotImplementedError

    def _model(self, v):
        raise NotImplementedError

    def build(self, hp):
        v = self.space(hp)
        self.builds.append(keras.backend.get_uid("cifar_ae_tuning_build"))
        keras.utils.set_random_seed(self.seed)  # every trial starts from the same seed: a fair comparison
        return self._compile(self._model(v), v)

    def fit(self, hp, model, *args, epochs=1, initial_epoch=0, callbacks=(), verbose=0, **kwargs):
        v = self.space(hp)
        d = self.data
        sample_weight = None
        if v["class_weight"] != "none":
            cw = D.class_weights(d["y_train"], v["class_weight"])
            sample_weight = np.array([cw[int(c)] for c in d["y_train"]], np.float32)
        train = ArrayBatches(d["x_train"], d["y_train"], batch_size=int(v["batch_size"]), targets=self.targets,
                             sample_weight=sample_weight, seed=self.seed, epoch=initial_epoch)
        val = ArrayBatches(d["x_val"], d["y_val"], batch_size=256, targets=self.targets, shuffle=False)
        t0 = time.perf_counter()
        history = model.fit(train, validation_data=val, epochs=epochs, initial_epoch=initial_epoch,
                            callbacks=[*callbacks, keras.callbacks.TerminateOnNaN()], verbose=verbose)
        seconds = time.perf_counter() - t0
        n = len(next(iter(history.history.values()), []))
        # reported to the oracle with the best epoch's metrics, so the chief knows it even across machines
        history.history["fit_seconds"] = [round(seconds, 2)] * n
        history.history["train_images_per_second"] = [round(len(d["y_train"]) * n / max(seconds, 1e-9), 1)] * n
        return history


class JointHyperModel(_CifarHyperModel):
    """The joint model (reconstruction + label) over `joint_space`."""
    task, targets = "joint", "joint"
    objective = "val_label_balanced_accuracy"
    space = staticmethod(joint_space)
    grid = staticmethod(joint_grid)
    model_args = staticmethod(joint_model_args)

    def _model(self, v):
        return M.joint_model(**joint_model_args(v))

    def _compile(self, model, v):
        model.compile(make_optimizer(v["optimizer"], v["learning_rate"]),
                      loss={"reconstruction": "mse", "label": "sparse_categorical_crossentropy"},
                      loss_weights={"reconstruction": float(v["reconstruction_weight"]), "label": 1.0},
                      metrics={"reconstruction": ["mse"], "label": ["accuracy", BalancedAccuracy()]})
        return model


class FeatureClassifierHyperModel(_CifarHyperModel):
    """A CNN head on the frozen features of the `v1-cnn-ae` run for the same preset and seed."""
    task, targets = "classifier", "label"
    objective = "val_balanced_accuracy"
    space = staticmethod(classifier_space)
    grid = staticmethod(classifier_grid)
    model_args = staticmethod(classifier_model_args)

    def _model(self, v):
        from .training import run_dir_for
        upstream = run_dir_for(UPSTREAM, self.preset, self.seed, self.runs_dir) / "model.keras"
        ae = keras.saving.load_model(upstream, safe_mode=True)
        return M.feature_classifier(M.encoder_of(ae), **classifier_model_args(v))

    def _compile(self, model, v):
        model.compile(make_optimizer(v["optimizer"], v["learning_rate"]), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy", BalancedAccuracy()])
        return model


HYPERMODELS = {"joint": JointHyperModel, "feature-classifier": FeatureClassifierHyperModel}


# --------------------------------------------------------------------------- tuners

def _rss_mb():
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20, 1)
    except (OSError, ValueError, IndexError):
        return None


class _Recording:
    """Tuner mixin: records who ran each trial and how long it took; clears the Keras session after it.

    Keras models are freed by then, but TensorFlow 2.21 keeps each fit's traced step functions (~20-40 MB a
    trial here, also in a plain Keras loop). With `recycle_every` K the process re-executes itself after K
    trials (state is on disk, so the search simply continues), which returns that memory.
    """
    recycle_every = 0
    recycle_argv = None
    recycle_command = None
    trials_here = 0

    def run_trial(self, trial, *args, **kwargs):
        t0, rss0, status = time.perf_counter(), _rss_mb(), "failed"
        try:
            result = super().run_trial(trial, *args, **kwargs)
            status = "ran"
            return result
        finally:
            E.write_json_atomic(Path(self.get_trial_dir(trial.trial_id)) / SIDECAR, {
                "trial_id": trial.trial_id, "tuner_id": self.tuner_id, "host": socket.gethostname(), "pid": os.getpid(),
                "seconds": round(time.perf_counter() - t0, 2), "status": status, "rss_mb_before": rss0,
                "rss_mb_after": _rss_mb()})

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        keras.backend.clear_session()
        gc.collect()
        self.trials_here += 1
        remaining = getattr(self.oracle, "remaining_trials", None)  # a worker's OracleClient has none
        more = remaining is None or remaining() is None or remaining() > 0
        if self.recycle_every and self.recycle_argv and self.trials_here >= self.recycle_every and more:
            print(f"[tune] {self.trials_here} trials in this process (RSS {_rss_mb()} MB): re-executing it to "
                  "return TensorFlow's memory; the search continues from its project directory", flush=True)
            sys.stderr.flush()
            if self.recycle_command:  # so the next process records the command as it was typed
                os.environ["CIFAR_AE_TUNE_COMMAND"] = self.recycle_command
            os.execv(self.recycle_argv[0], self.recycle_argv)


class RandomTuner(_Recording, kt.RandomSearch):
    pass


class BayesianTuner(_Recording, kt.BayesianOptimization):
    pass


class HyperbandTuner(_Recording, kt.Hyperband):
    pass


class GridTuner(_Recording, kt.GridSearch):
    pass


def project_name(model, tuner, preset, seed):
    return f"{model}-{tuner}-{preset}-s{seed}"


def tuning_dir(runs_dir=None) -> Path:
    from .training import DEFAULT_OUT
    return Path(runs_dir or DEFAULT_OUT) / "tuning"


def make_tuner(tuner, hypermodel, max_trials, epochs, seed=0, directory=None, name=None, overwrite=False,
               trial_timeout=None):
    """A keras-tuner tuner over `hypermodel`, stored in directory/name (reloaded from there unless overwrite);
    its oracle checks every trial report (TrialGuard)."""
    t = _make_tuner(tuner, hypermodel, max_trials, epochs, seed, directory, name, overwrite)
    if not hasattr(t.oracle, "stub"):  # a worker's OracleClient proxies to the chief, which does the checking
        guard(t.oracle, trial_timeout)
    return t


def _make_tuner(tuner, hypermodel, max_trials, epochs, seed, directory, name, overwrite):
    if tuner not in TUNERS:
        raise ValueError(f"unknown tuner '{tuner}'; valid tuners: {', '.join(TUNERS)}.")
    objective = kt.Objective(hypermodel.objective, direction="max")
    # keras-tuner treats seed 0 as "no seed"; offset it so --seed 0 is reproducible too
    common = dict(hypermodel=hypermodel, objective=objective, seed=seed + 1, directory=str(directory),
                  project_name=name, overwrite=overwrite, max_consecutive_failed_trials=3)
    if tuner == "random":
        return RandomTuner(max_trials=max_trials, **common)
    if tuner == "bayesian":
        # default is 3 random points per dimension (~40 here): with a handful of trials the GP would never
        # be used, so start it after a third of the budget (at least 2 random points)
        return BayesianTuner(max_trials=max_trials, num_initial_points=max(2, max_trials // 3), **common)
    if tuner == "grid":
        return GridTuner(max_trials=max_trials, **common)  # stops early when the grid is exhausted
    t = HyperbandTuner(max_epochs=max(2, epochs), factor=2, **common)
    t.oracle.max_trials = max_trials  # Hyperband sizes itself by epochs; --max-trials caps it as well
    return t


# --------------------------------------------------------------------------- a chief that trusts no peer

class TrialRefused(ValueError):
    """A trial report the oracle did not ask for: unknown trial, changed or out-of-space values, bad metrics."""


def in_space(hp_space, values) -> str | None:
    """Why `values` is not a point of the search space (None if it is): unknown names, or a value outside its
    hyperparameter's choices, range or step."""
    by_name = {p.name: p for p in hp_space}
    for name, value in values.items():
        if name.startswith("tuner/"):  # Hyperband's own bookkeeping, checked against what was handed out
            continue
        p = by_name.get(name)
        if p is None:
            return f"unknown hyperparameter {name!r}"
        kind = type(p).__name__
        if kind in ("Choice", "Boolean", "Fixed"):
            allowed = {"Choice": lambda: list(p.values), "Boolean": lambda: [True, False],
                       "Fixed": lambda: [p.value]}[kind]()
            if value not in allowed:
                return f"{name}={value!r} is not one of {list(allowed)}"
        elif kind in ("Int", "Float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
                    p.min_value <= value <= p.max_value):
                return f"{name}={value!r} is outside [{p.min_value}, {p.max_value}]"
            if p.step is not None and getattr(p, "sampling", "linear") in (None, "linear"):
                k = (value - p.min_value) / p.step
                if abs(k - round(k)) > 1e-6:
                    return f"{name}={value!r} is off its step {p.step}"
    return None


class TrialGuard:
    """Oracle mixin for the chief: keras-tuner's gRPC service has no authentication, so every report is checked.

    - UpdateTrial / EndTrial must name a trial this oracle handed out and that is still running;
    - EndTrial's hyperparameters must equal the values handed out for it, and lie in the search space;
    - metric values must be finite, and the objective (a balanced accuracy) within [0, 1];
    - UpdateSpace may not add hyperparameters once the space is declared;
    - a running trial with no report for `trial_timeout` seconds is expired (sent for retry), and a tuner id
      silent that long is forgotten, so a peer that takes trials and never ends them cannot hang the chief.
    A refused report raises TrialRefused inside the gRPC handler: the peer gets an error, the search goes on.
    What it cannot stop is a worker that runs a handed-out trial and reports a made-up score: so the chief
    re-scores the best configurations itself before anything is saved (finalize).
    """
    trial_timeout = 3600.0

    # keras-tuner's chief polls these two to decide when to exit: reading them expires the silent ones first
    @property
    def tuner_ids(self):
        self._expire()
        return self.__dict__["tuner_ids"]

    @tuner_ids.setter
    def tuner_ids(self, value):
        self.__dict__["tuner_ids"] = value

    @property
    def ongoing_trials(self):
        self._expire()
        return self.__dict__["ongoing_trials"]

    @ongoing_trials.setter
    def ongoing_trials(self, value):
        self.__dict__["ongoing_trials"] = value

    def _guard_state(self):
        if "_handed_out" not in self.__dict__:
            self._handed_out, self._alive, self.refused = {}, {}, []
        return self

    def _refuse(self, why):
        self._guard_state().refused.append(why)
        print(f"[tune] refused a trial report: {why}", flush=True)
        raise TrialRefused(why)

    def _expire(self):
        d = self.__dict__
        if "_handed_out" not in d or "ongoing_trials" not in d:
            return
        now = time.time()
        for tuner_id, trial in list(d["ongoing_trials"].items()):
            if now - self._alive.get(tuner_id, now) > self.trial_timeout:
                print(f"[tune] trial {trial.trial_id} of {tuner_id}: no report for {self.trial_timeout:.0f} s; "
                      "expired and sent for retry", flush=True)
                d["ongoing_trials"].pop(tuner_id)
                trial.status = "INVALID"
                if trial.trial_id not in self._retry_queue:
                    self._retry_queue.append(trial.trial_id)
        for tuner_id, seen in list(self._alive.items()):
            if now - seen > self.trial_timeout and tuner_id not in d["ongoing_trials"]:
                d["tuner_ids"].discard(tuner_id)
                self._alive.pop(tuner_id)

    def create_trial(self, tuner_id):
        self._guard_state()
        trial = super().create_trial(tuner_id)
        self._alive[tuner_id] = time.time()
        if trial.status == "RUNNING":
            self._handed_out[trial.trial_id] = dict(trial.hyperparameters.values)
        return trial

    def _runner(self, trial_id):
        """The tuner id running this trial, or None."""
        return next((tid for tid, t in self.__dict__["ongoing_trials"].items() if t.trial_id == trial_id), None)

    def update_space(self, hyperparameters):
        """The space is the hypermodel's, declared before the chief serves anyone: nobody may widen it later."""
        known = {p.name for p in self.hyperparameters.space}
        new = sorted({p.name for p in hyperparameters.space} - known)
        if known and new:
            self._refuse(f"UpdateSpace would add {new} to the search space")
        return super().update_space(hyperparameters)

    def update_trial(self, trial_id, metrics, step=0):
        self._guard_state()
        runner = self._runner(trial_id)
        if trial_id not in self._handed_out or runner is None:
            self._refuse(f"UpdateTrial for trial {trial_id!r}, which this chief is not running")
        for name, value in dict(metrics).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                self._refuse(f"trial {trial_id}: metric {name}={value!r} is not a finite number")
        objective = self.objective.name if hasattr(self.objective, "name") else None
        if objective in metrics and not 0.0 <= float(metrics[objective]) <= 1.0:
            self._refuse(f"trial {trial_id}: {objective}={metrics[objective]} is outside [0, 1]")
        self._alive[runner] = time.time()
        return super().update_trial(trial_id, metrics, step=step)

    def end_trial(self, trial):
        self._guard_state()
        handed = self._handed_out.get(trial.trial_id)
        if handed is None or self._runner(trial.trial_id) is None:
            self._refuse(f"EndTrial for trial {trial.trial_id!r}, which this chief did not hand out or is not running")
        values = dict(trial.hyperparameters.values)
        why = in_space(self.hyperparameters.space, values)
        if why:
            self._refuse(f"EndTrial for trial {trial.trial_id}: {why}")
        if {k: v for k, v in values.items() if k in handed} != handed or set(values) - set(handed):
            self._refuse(f"EndTrial for trial {trial.trial_id}: hyperparameters differ from the ones handed out")
        return super().end_trial(trial)


def guard(oracle, trial_timeout=None):
    """Give an oracle the TrialGuard checks (its class gains the mixin; state and behaviour are otherwise kept)."""
    if not isinstance(oracle, TrialGuard):
        oracle.__class__ = type(f"Guarded{type(oracle).__name__}", (TrialGuard, type(oracle)), {})
    if trial_timeout is not None:
        oracle.trial_timeout = float(trial_timeout)
    return oracle


# --------------------------------------------------------------------------- data, upstream, distribution

def prepare_tuning_data(preset, seed=0, source=None) -> dict:
    """Training subset, hold-out validation and test set for a search: `training.prepare_data` on the
    imbalanced subset, so the validation split is the one `train` holds out for this preset and seed."""
    from .training import prepare_data
    from .trials import get_trial
    if preset not in TUNING_PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(TUNING_PRESETS)}.")
    base = get_trial("v2-joint-noaug")  # train_set="imbalanced", validation="holdout"
    return prepare_data(base, dict(TUNING_PRESETS[preset]), seed, source)


def ensure_upstream(preset, seed=0, runs_dir=None, verbose=2) -> Path:
    """The `v1-cnn-ae` run the feature-classifier search needs, trained once even when workers start together."""
    from .training import is_complete, run_dir_for, run_trial
    run = run_dir_for(UPSTREAM, preset, seed, runs_dir)
    if is_complete(run):
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f".{run.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait here, then find it complete
        if not is_complete(run):
            print(f"[tune] training upstream autoencoder {UPSTREAM} ({preset}, seed {seed}) first -> {run}")
            run_trial(UPSTREAM, preset, seed, runs_dir, verbose=verbose)
    return run


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _is_loopback(address) -> bool:
    import ipaddress
    if address in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def configure_distributed(chief=False, worker=None, oracle_ip=None, oracle_port=None, allow_remote=False) -> str:
    """Set keras-tuner's KERASTUNER_* variables from the flags (flags win); returns 'single', 'chief' or 'worker'.

    The chief binds KERASTUNER_ORACLE_IP. keras-tuner's gRPC has no authentication or encryption, so anything but
    loopback needs allow_remote (--allow-remote-workers) and gets a warning: reach the chief over an SSH tunnel
    or a private network only (README, "Distributed search").
    """
    if chief and worker is not None:
        raise ValueError("--chief and --worker are exclusive: run one chief and one process per worker.")
    if chief:
        os.environ["KERASTUNER_TUNER_ID"] = "chief"
    elif worker is not None:
        tuner_id = f"worker{worker}" if str(worker).isdigit() else str(worker)
        if "chief" in tuner_id:  # keras-tuner treats any id containing "chief" as the chief
            raise ValueError(f"worker id '{worker}' must not contain 'chief'.")
        os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    if oracle_port is not None:
        os.environ["KERASTUNER_ORACLE_PORT"] = str(int(oracle_port))
    if oracle_ip is not None:
        os.environ["KERASTUNER_ORACLE_IP"] = str(oracle_ip)
    elif chief or worker is not None:
        os.environ.setdefault("KERASTUNER_ORACLE_IP", "127.0.0.1")
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    if "KERASTUNER_ORACLE_PORT" not in os.environ:
        raise ValueError("distributed tuning needs --oracle-port (or KERASTUNER_ORACLE_PORT).")
    if "KERASTUNER_TUNER_ID" not in os.environ:
        raise ValueError("distributed tuning needs --chief or --worker ID (or KERASTUNER_TUNER_ID).")
    role = "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"
    address = os.environ["KERASTUNER_ORACLE_IP"]
    if role == "chief" and not _is_loopback(address):
        if not allow_remote:
            raise ValueError(f"the chief would listen on {address}, beyond this machine, and keras-tuner's gRPC has "
                             "no authentication; bind 127.0.0.1 and reach it through an SSH tunnel, or pass "
                             "--allow-remote-workers on a private network.")
        print(f"[tune] WARNING: the chief listens on {address}:{os.environ['KERASTUNER_ORACLE_PORT']} without "
              "authentication or encryption: anyone who can reach that port can read the search and report "
              "trials. Every report is checked against what the chief handed out, and the best configurations are "
              "re-scored here; still, expose it on a private network only.", file=sys.stderr, flush=True)
    return role


# --------------------------------------------------------------------------- the search

def run_search(tuner="bayesian", max_trials=10, preset="quick", model="joint", seed=0, overwrite=False,
               epochs=None, runs_dir=None, results_dir=None, save_trial=None, chief=False, worker=None,
               oracle_ip=None, oracle_port=None, source=None, verbose=1, command=None, recycle_every=0,
               recycle_argv=None, allow_remote=False, trial_timeout=None, rescore_top=3) -> dict | None:
    """Run (or continue) a search; the chief or single process then re-scores the best configurations itself,
    scores the best on the test set once and writes tuning.json / tuning.md / tuning_scores.png and the tuned
    trial to `results_dir` (default: the search's own project folder; results/ only when asked). Returns that
    summary (None on a worker). `recycle_every` K: re-execute `recycle_argv` (default: this `python -m cifar_ae
    tune` command without --overwrite) after every K trials, to keep memory flat."""
    from .trials import check_name
    if save_trial is not None:
        check_name(save_trial, "--save-trial")
    if model not in MODELS:
        raise ValueError(f"unknown model '{model}'; valid models: {', '.join(MODELS)}.")
    if preset not in TUNING_PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(TUNING_PRESETS)}.")
    if tuner not in TUNERS:
        raise ValueError(f"unknown tuner '{tuner}'; valid tuners: {', '.join(TUNERS)}.")
    if int(max_trials) < 1:
        raise ValueError(f"--max-trials must be at least 1, got {max_trials}.")
    role = configure_distributed(chief, worker, oracle_ip, oracle_port, allow_remote)
    if role == "worker" and overwrite:
        overwrite = False  # only the chief may wipe the shared project directory
        print("[tune] --overwrite is ignored on a worker (the chief owns the project directory)")
    settings = dict(TUNING_PRESETS[preset])
    if epochs is not None:
        settings["epochs"] = int(epochs)
    if model == "feature-classifier":  # every process builds on it (the chief too, to declare the space)
        ensure_upstream(preset, seed, runs_dir)
    hypermodel = HYPERMODELS[model](preset, seed, source, runs_dir, grid=tuner == "grid")
    directory, name = tuning_dir(runs_dir), project_name(model, tuner, preset, seed)
    t = make_tuner(tuner, hypermodel, int(max_trials), settings["epochs"], seed, directory, name, overwrite,
                   trial_timeout)
    cli_command, cli_argv = _cli_invocation()
    command = command or cli_command
    if role != "chief" and recycle_every:  # the chief trains nothing
        t.recycle_every, t.recycle_argv, t.recycle_command = int(recycle_every), recycle_argv or cli_argv, command
    address = f"{os.environ.get('KERASTUNER_ORACLE_IP')}:{os.environ.get('KERASTUNER_ORACLE_PORT')}"
    where = {"single": "", "chief": f" as chief on {address}",
             "worker": f" as {os.environ.get('KERASTUNER_TUNER_ID')} of the chief at {address}"}[role]
    print(f"[tune] {tuner} search of {model} on '{preset}' ({max_trials} trials, {settings['epochs']} epochs each)"
          f"{where}; project {Path(t.project_dir)}")
    t0 = time.perf_counter()
    t.search(epochs=settings["epochs"], verbose=verbose)
    if role == "worker":
        mine = [r for r in collect_trials(t.project_dir) if r.get("tuner_id") == t.tuner_id]
        print(f"[tune] {t.tuner_id}: the chief has no more trials; this worker ran {len(mine)}")
        return None
    return finalize(t, hypermodel, tuner=tuner, model=model, preset=preset, seed=seed, max_trials=int(max_trials),
                    settings=settings, results_dir=results_dir or t.project_dir, save_trial=save_trial, role=role,
                    command=command, search_seconds=time.perf_counter() - t0, rescore_top=rescore_top)


def _cli_invocation():
    """(command as typed, argv to re-execute) when this process is `python -m cifar_ae tune ...`, else (None, None)."""
    if sys.argv[1:2] != ["tune"]:
        return None, None
    command = os.environ.pop("CIFAR_AE_TUNE_COMMAND", None) or \
        "python -m cifar_ae " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    # never --overwrite again: the re-executed process must continue the search, not wipe it
    return command, [sys.executable, "-m", "cifar_ae"] + [a for a in sys.argv[1:] if a != "--overwrite"]


# --------------------------------------------------------------------------- results

HP_ORDER = ["encoder_blocks", "convs_per_block", "filters", "kernel_size", "head_blocks", "head_filters",
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


def markdown_table(rows, best_id=None) -> str:
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
    from .trials import TRIALS, TUNED_NAMES, load_tuned_trials
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


def _best_model(t, best, epochs):
    """The best trial's model at its best epoch (the checkpoint its tuner saved), or retrained if that
    checkpoint is not on this machine."""
    import warnings
    try:
        with warnings.catch_warnings():  # the checkpoint's optimizer state is not needed to predict
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return t.load_model(best), "checkpoint"
    except (OSError, FileNotFoundError, ValueError) as e:
        print(f"[tune] no checkpoint for trial {best.trial_id} here ({type(e).__name__}); retraining it")
        return _retrain(t, best, epochs), "retrained"


def _retrain(t, trial, epochs):
    model = t.hypermodel.build(trial.hyperparameters)
    t.hypermodel.fit(trial.hyperparameters, model, verbose=0,
                     epochs=int(trial.hyperparameters.values.get("tuner/epochs", 0)) or epochs)
    return model


def validation_balanced_accuracy(model, hypermodel) -> float:
    """The search's objective, computed here on the hold-out split (not taken from any report)."""
    from sklearn.metrics import balanced_accuracy_score
    d = hypermodel.data
    out = model.predict(d["x_val"].astype(np.float32) / 255.0, batch_size=256, verbose=0)
    probs = out["label"] if isinstance(out, dict) else out
    return float(balanced_accuracy_score(d["y_val"], probs.argmax(1)))


def rescore_best(t, hypermodel, top, epochs):
    """Retrain the `top` best-reported trials on this process and rank them by its own validation score: what a
    worker reported is never taken on its word. Returns (best trial, its model, [records])."""
    records, best = [], None
    for tr in t.oracle.get_best_trials(top):
        model = _retrain(t, tr, epochs)
        score = validation_balanced_accuracy(model, hypermodel)
        records.append({"trial_id": tr.trial_id, "reported": None if tr.score is None else float(tr.score),
                        "chief": round(score, 4)})
        print(f"[tune] re-scored trial {tr.trial_id}: reported {tr.score}, chief {score:.4f}", flush=True)
        if best is None or score > best[0]:
            best = (score, tr, model)
    return best[1], best[2], records


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
          "![scores](tuning_scores.png)", "", markdown_table(rows, best["trial_id"])]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(md))
    os.replace(tmp, path)
    return path


def finalize(t, hypermodel, tuner, model, preset, seed, max_trials, settings, results_dir, save_trial=None,
             role="single", command=None, search_seconds=None, rescore_top=3) -> dict:
    """Pick the best configuration (re-scored here on a chief), score it on the test set once, write the results."""
    from .training import versions
    rows = collect_trials(t.project_dir, list(t.oracle.trials.values()))
    completed = [r for r in rows if r["score"] is not None and r["status"] == "COMPLETED"]
    if not completed:
        msgs = "; ".join(sorted({r["message"] for r in rows if r["message"]})) or "no trial ran"
        raise RuntimeError(f"no tuning trial completed ({len(rows)} trials): {msgs}")
    rescored = None
    if role == "chief":  # the trials ran elsewhere: retrain the best-reported ones and rank them by our own score
        best, best_model, rescored = rescore_best(t, hypermodel, max(1, int(rescore_top)), settings["epochs"])
        how = "retrained and re-scored by the chief"
    else:
        best = t.oracle.get_best_trials(1)[0]
        best_model, how = _best_model(t, best, settings["epochs"])
    values = hypermodel.space(best.hyperparameters.copy())
    d = hypermodel.data
    x_unit = d["x_test"].astype(np.float32) / 255.0
    outputs = best_model.predict(x_unit, batch_size=256, verbose=0)
    test = E.evaluate_outputs(hypermodel.task, x_unit, d["y_test"], outputs, d["class_names"])
    test_summary = {k: test[k] for k in ("test_accuracy", "balanced_accuracy", "recon_mse", "recon_psnr") if k in test}
    test_summary["per_class_recall"] = {c: round(v["recall"], 4) for c, v in test["per_class"].items()}
    test_summary.update(test_images=len(d["y_test"]), model_from=how)
    keras.backend.clear_session()

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    trial_name = save_trial or f"tuned-{model}-{tuner}-{preset}"
    best_row = next(r for r in rows if r["trial_id"] == best.trial_id)
    best_score = best_row["score"] if rescored is None else next(r["chief"] for r in rescored
                                                                   if r["trial_id"] == best.trial_id)
    description = (f"Best of {len(completed)} {tuner} trials ({model}, '{preset}' search, seed {seed}): "
                   f"val balanced acc {best_score:.3f}; see tuning.json beside this file.")
    record = tuned_trial_record(hypermodel, values, trial_name, description)
    if command is None:
        command = " ".join(shlex.quote(a) for a in sys.argv)
    summary = {
        "command": command,
        "tuner": tuner, "model": model, "preset": preset, "seed": seed, "mode": role,
        "objective": {"name": hypermodel.objective, "direction": "max",
                      "what": "balanced accuracy on the hold-out validation split of the imbalanced training subset"},
        "settings": settings, "max_trials": max_trials,
        "data": {"train_images": int(len(d["y_train"])), "val_images": int(len(d["y_val"])),
                 "test_images": int(len(d["y_test"])), "source": d["source"],
                 "split": "training.prepare_data: stratified hold-out of make_imbalanced (as `train` uses)"},
        "project_dir": str(t.project_dir),
        "search_seconds_this_session": None if search_seconds is None else round(search_seconds, 1),
        "trial_seconds_total": round(sum(r["seconds"] or 0 for r in rows), 1),
        "trials": rows,
        "rescored": rescored,
        "refused_reports": list(getattr(t.oracle, "refused", [])),
        "best": {"trial_id": best.trial_id, "val_balanced_accuracy": best_score,
                 "scored_by": "the process that ran the trials" if rescored is None else "chief",
                 "val_accuracy": best_row["val_accuracy"], "hyperparameters": best_row["hyperparameters"],
                 "config": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()},
                 "test": test_summary},
        "saved_trial": {"name": trial_name, "rerun": f"python -m cifar_ae train {trial_name} --preset quick",
                        "record": record},
        "versions": versions(),
    }
    E.write_json_atomic(results_dir / "tuning.json", summary)
    title = (f"{tuner} search, {model}, '{preset}' preset: {len(completed)} of {len(rows)} trials completed; "
             f"best val bal. acc {best_score:.3f}, its test acc {test_summary['test_accuracy']:.3f}")
    P.save(scores_figure(rows, title), results_dir / "tuning_scores.png")
    write_markdown(summary, results_dir / "tuning.md")
    saved = save_tuned_trial(record, results_dir / "tuned_trials.json")
    print(f"[tune] best trial {best.trial_id}: val balanced acc {best_score:.4f}, "
          f"test acc {test_summary['test_accuracy']:.4f}; wrote {results_dir / 'tuning.json'}, tuning.md, "
          f"tuning_scores.png; saved trial '{trial_name}' in {saved}")
    return summary
