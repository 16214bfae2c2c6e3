"""What is searched: the search spaces (random/Bayesian/Hyperband, and the listed grid), how a point maps to the
study's builders, the honest objective (validation balanced accuracy), and the keras-tuner HyperModels.

Presets are overlays of cifar_ae.trials.PRESETS: the hold-out and test splits are the ones `train` uses for that
preset and seed; a search changes only how many training images a trial sees and its epochs.
"""
from __future__ import annotations

import time

import keras
import keras_tuner as kt
from keras import ops

from .. import data as D, models as M
from ..batches import ArrayBatches
from ..optim import make_optimizer
from ..trials import PRESETS

MODELS = ("joint", "feature-classifier")
OVERLAYS = {  # per preset: what a search trial changes in trials.PRESETS
    "smoke": dict(train_images=256, test_images=256, epochs=1),
    "quick": dict(train_images=10_000, test_images=None, epochs=2),
    "full": dict(train_images=None, test_images=None, epochs=30),
}
UPSTREAM = "v1-cnn-ae"  # the autoencoder whose frozen features the feature-classifier search classifies
# Trials are a few hundred steps long. With Keras' default BatchNorm momentum (0.99) the moving statistics
# used at validation still carry much of their initial values after that, so validation scores would
# mostly measure that lag (and favour small batches, i.e. more steps). Tuned models use 0.9.
TRIAL_BN_MOMENTUM = 0.9


def prepare_tuning_data(preset, seed=0, source=None) -> dict:
    """Training subset, hold-out validation and test set for a search: `training.prepare_data` on the
    imbalanced subset, so the validation split is the one `train` holds out for this preset and seed."""
    from ..training import prepare_data
    from ..trials import get_trial
    base = get_trial("v2-joint-noaug")  # train_set="imbalanced", validation="holdout"
    return prepare_data(base, search_settings(preset), seed, source)


def search_settings(preset) -> dict:
    """trials.PRESETS[preset] with the search's overlay: images per trial, epochs per trial."""
    if preset not in OVERLAYS:
        raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(OVERLAYS)}.")
    return {**PRESETS[preset], **OVERLAYS[preset]}


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
         "block": hp.Choice("block", ["vgg", "residual", "inception", "nasnet"], default="vgg"),  # models.ENCODER_BLOCKS
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
            "block": v.get("block", "vgg"),
            "head_filters": [int(v["head_filters"])] * int(v["head_blocks"]), "dense_units": [],
            "dropout": round(float(v["dropout"]), 3), "bn_momentum": TRIAL_BN_MOMENTUM}


def classifier_model_args(v) -> dict:
    return {"filters": [int(v["head_filters"])] * int(v["head_blocks"]), "convs_per_block": int(v["convs_per_block"]),
            "dense_units": [int(v["dense_units"])] if int(v["dense_units"]) else [], "dropout": round(float(v["dropout"]), 3),
            "bn_momentum": TRIAL_BN_MOMENTUM}


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
        sample_weight = None if v["class_weight"] == "none" else D.sample_weights(d["y_train"], v["class_weight"])
        train = ArrayBatches(d["x_train"], d["y_train"], batch_size=int(v["batch_size"]), targets=self.targets,
                             sample_weight=sample_weight, seed=self.seed, epoch=initial_epoch)
        val = ArrayBatches(d["x_val"], d["y_val"], batch_size=256, targets=self.targets, shuffle=False)
        t0 = time.perf_counter()
        history = model.fit(train, *args, validation_data=val, epochs=epochs, initial_epoch=initial_epoch,
                            callbacks=[*callbacks, keras.callbacks.TerminateOnNaN()], verbose=verbose, **kwargs)
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
        from ..training import run_dir_for
        upstream = run_dir_for(UPSTREAM, self.preset, self.seed, self.runs_dir) / "model.keras"
        from ..scoring import load_model
        ae = load_model(upstream)
        return M.feature_classifier(M.encoder_of(ae), **classifier_model_args(v))

    def _compile(self, model, v):
        model.compile(make_optimizer(v["optimizer"], v["learning_rate"]), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy", BalancedAccuracy()])
        return model


HYPERMODELS = {"joint": JointHyperModel, "feature-classifier": FeatureClassifierHyperModel}
