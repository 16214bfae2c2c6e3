"""Every trial of the study as plain data: model, optimizer, data, augmentation and length per preset.

A trial's full definition is its entry in TRIALS; `run_trial` (cifar_ae.training) turns it into a run folder.
Presets set the length: `smoke` (seconds, tests and CI), `quick` (minutes on a 2-core CPU), `full` (long
fixed-length runs, for a GPU) and `study` (the study's length: up to 100 epochs, early stopping on the
validation metric with patience 10, best weights restored). A trial may override any preset field.

Every Trial field is declared once in FIELDS with its valid values and checked when a Trial is built, so a
typo (``optimizer="adamx"``) fails in the notebook cell or command that made it, before any data is loaded.
``get_trial(name, **changes)`` merges ``model_args`` into the trial's own and replaces every other field;
``trial.replace(model_args={...})`` replaces the whole dict.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path

from .optim import LR_SCHEDULES, OPTIMIZERS

PRESETS = {
    # train_images: None = the whole training subset; test_images: None = the full 10,000-image test set;
    # early_stopping: patience in epochs on the validation metric (None: train every epoch)
    "smoke": dict(epochs=1, train_images=256, val_images=64, test_images=256, tsne_points=0, early_stopping=None),
    "quick": dict(epochs=5, train_images=None, val_images=2000, test_images=None, tsne_points=1000, early_stopping=None),
    "full": dict(epochs=100, train_images=None, val_images=2000, test_images=None, tsne_points=2000, early_stopping=None),
    "study": dict(epochs=100, train_images=None, val_images=2000, test_images=None, tsne_points=2000, early_stopping=10),
}
SETTING_KEYS = tuple(PRESETS["smoke"])

STUDY_AUGMENTATION = {"policy": "study", "flip": True, "translate": 4}
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")  # trial, variant and run names become folder names


# --------------------------------------------------------------------------- field constraints

class TrialError(ValueError):
    """A Trial field, override, preset, seed or epoch count is invalid; the message names it and the fix."""


def _name(v):
    return isinstance(v, str) and bool(NAME_PATTERN.fullmatch(v)) and v not in (".", "..")


def _options(*values):
    return ("one of " + ", ".join(repr(v) for v in values), lambda v: v in values)


def _number(low, high=math.inf, low_open=False, kind=Real, none=False):
    lo, hi = ("(" if low_open else "["), ("]" if high != math.inf else ")")
    what = f"{'an int' if kind is Integral else 'a number'} in {lo}{low}, {high}{hi}" + (" or None" if none else "")

    def ok(v):
        if v is None:
            return none
        if isinstance(v, bool) or not isinstance(v, kind):
            return False
        return (v > low if low_open else v >= low) and v <= high and math.isfinite(v)
    return what, ok


def _mapping(keys=None, values=None, none=False):
    what = "a dict" + (f" with keys from {sorted(keys)}" if keys else "") + (" or None" if none else "")

    def ok(v):
        if v is None:
            return none
        return (isinstance(v, dict) and (keys is None or set(v) <= set(keys))
                and (values is None or all(values(x) for x in v.values())))
    return what, ok


def _nonneg(x):
    return not isinstance(x, bool) and isinstance(x, Real) and math.isfinite(x) and x >= 0


def _pair_or_none(v):
    return v is None or (isinstance(v, (tuple, list)) and len(v) == 2 and all(_nonneg(x) for x in v))


def _sizes_or_none(v):
    return v is None or (isinstance(v, (tuple, list)) and len(v) >= 1
                         and all(isinstance(x, Integral) and not isinstance(x, bool) and x >= 1 for x in v))


def _augmentation(v):
    if v is None:
        return True
    from augment import make_augmenter  # numpy + Pillow only: cheap
    make_augmenter(v)  # raises ValueError naming the bad key or policy
    return True


def _class_names(v):
    from .data import CLASS_NAMES
    return v is None or (isinstance(v, (tuple, list)) and len(v) >= 1 and all(c in CLASS_NAMES for c in v)
                         and len(set(v)) == len(v))


def _presets(v):
    return isinstance(v, dict) and all(p in PRESETS and isinstance(s, dict) and set(s) <= set(SETTING_KEYS)
                                       for p, s in v.items())


# field -> (what a valid value is, check). Declared once; Trial.__post_init__ applies it.
FIELDS = {
    "name": ("a name of letters, digits, '.', '_' or '-'", _name),
    "description": ("a string", lambda v: isinstance(v, str)),
    "task": _options("autoencoder", "classifier", "joint"),
    "model": ("the name of a builder in cifar_ae.models.BUILDERS", lambda v: isinstance(v, str) and bool(v)),
    "model_args": _mapping(),
    "upstream": ("None or the name of an autoencoder trial", lambda v: v is None or _name(v)),
    "feature_layer": ("a layer name", lambda v: isinstance(v, str) and bool(v)),
    "optimizer": _options(*OPTIMIZERS),
    "learning_rate": _number(0, 10, low_open=True),
    "batch_size": _number(1, 65536, kind=Integral),
    "train_set": _options("imbalanced", "balanced", "full"),
    "train_classes": ("None or a tuple of distinct CIFAR-10 class names", _class_names),
    "validation": _options("holdout", "test", "none"),
    "scaling": _options("unit", "mean", "zscore"),
    "augmentation": ("None, a policy name or a dict of augment.make_augmenter keys", _augmentation),
    "class_weight": _options(None, "inverse", "effective"),
    "loss_weights": _mapping({"reconstruction", "label"}, _nonneg, none=True),
    "weight_decay": _number(0, 1, none=True),
    "momentum": _number(0, 0.999, none=True),
    "weight_decay_skip": ("a tuple of layer-name prefixes (non-empty strings)",
                          lambda v: isinstance(v, (tuple, list)) and all(isinstance(p, str) and p for p in v)),
    "ema_momentum": _number(0, 0.99999, none=True),
    "lookahead": _number(0, 1, none=True),
    "whitening": ("True or False", lambda v: isinstance(v, bool)),
    "tta_crops": ("True or False", lambda v: isinstance(v, bool)),
    "logit_adjustment": _number(0, 10),
    "lr_schedule": _options(*LR_SCHEDULES),
    "warmup": _number(0, 1),
    "label_smoothing": _number(0, 0.99),
    "recon_weight": ("None or a (start, end) pair of numbers >= 0", _pair_or_none),
    "batch_sizes": ("None or a tuple of batch sizes >= 1", _sizes_or_none),
    "tta_flip": ("True or False", lambda v: isinstance(v, bool)),
    "drop_last": ("True or False", lambda v: isinstance(v, bool)),
    "precision": _options("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    "strategy": _options(None, "mirrored"),
    "presets": (f"a dict of preset -> {{setting: value}} with presets from {list(PRESETS)} and settings from "
                f"{list(SETTING_KEYS)}", _presets),
    "study": _mapping(),
}
TUPLE_FIELDS = ("recon_weight", "batch_sizes", "train_classes", "weight_decay_skip")  # JSON gives lists back; a Trial keeps tuples


def check_field(trial_name, key, value):
    what, ok = FIELDS[key]
    try:
        valid = ok(value)
    except ValueError as e:  # augmentation: make_augmenter's own message
        raise TrialError(f"trial '{trial_name}': {key}: {e}") from None
    if not valid:
        raise TrialError(f"trial '{trial_name}': {key} must be {what}; got {value!r}.")


def check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < 2**32:
        raise TrialError(f"seed must be an int in [0, 2**32); got {seed!r} (set it with --seed N / seed=N).")
    return int(seed)


def check_epochs(epochs):
    if isinstance(epochs, bool) or not isinstance(epochs, Integral) or epochs < 1:
        raise TrialError(f"epochs must be an int >= 1; got {epochs!r} (set it with --epochs N / epochs=N).")
    return int(epochs)


def check_name(name, what="variant"):
    if not _name(name):
        raise TrialError(f"{what} name {name!r} must be letters, digits, '.', '_' or '-' (it becomes a folder name).")
    return name


@dataclass(frozen=True)
class Trial:
    name: str
    description: str
    task: str                       # "autoencoder" | "classifier" | "joint"
    model: str                      # a builder in cifar_ae.models.BUILDERS
    model_args: dict = field(default_factory=dict)
    upstream: str | None = None     # autoencoder trial whose frozen encoder feeds this classifier
    feature_layer: str = "features"
    optimizer: str = "adam"         # "adam" | "adamw" | "sgd" (momentum 0.9, Nesterov)
    learning_rate: float = 1e-3
    batch_size: int = 128
    train_set: str = "imbalanced"   # "imbalanced" (the study's) | "balanced" (2,500 per class) | "full"
    train_classes: tuple | None = None  # train on these classes only (e.g. one-class anomaly detection)
    validation: str = "holdout"     # "holdout": stratified slice of the training subset | "test": as the study did |
    #                                 "none": train on every training image and keep the last epoch (no checkpoint choice)
    scaling: str = "unit"           # "unit" (/255) | "mean" | "zscore" — classifier input only
    augmentation: dict | None = None
    class_weight: str | None = None  # None | "inverse" | "effective"
    loss_weights: dict | None = None
    weight_decay: float | None = None  # decoupled (AdamW-style) weight decay, any optimizer
    momentum: float | None = None      # SGD's momentum (None: 0.9)
    weight_decay_skip: tuple = ()      # layers whose names start with one of these take no weight decay
    # tricks beyond the study (cifar_ae/tricks.py); each is off at its default
    lr_schedule: str | None = None     # None: constant LR + ReduceLROnPlateau | "onecycle"
    warmup: float = 0.2                # fraction of training spent warming up (onecycle)
    label_smoothing: float = 0.0
    recon_weight: tuple | None = None  # (start, end): reconstruction loss weight scheduled over the epochs
    batch_sizes: tuple | None = None   # growing batch size, e.g. (128, 256, 512): equal stages of the epochs
    tta_flip: bool = False             # evaluate on image + mirror, averaged
    tta_crops: bool = False            # also on the image shifted 1 px up-left and down-right (airbench's TTA)
    logit_adjustment: float = 0.0      # tau: test logits minus tau * log(training class prior) (tricks.adjust_for_prior)
    whitening: bool = False            # initialise the model's `whiten` conv from the training patches, frozen
    # airbench's loader drops each epoch's partial batch: at batch 256, 40,500 images end every epoch on 52, and
    # 42,500 on 4, whose BatchNorm statistics take 40% of the running ones at momentum 0.6 (tricks table: README)
    drop_last: bool = False
    ema_momentum: float | None = None  # weights' EMA (Keras' use_ema), written into the model after every epoch
    lookahead: float | None = None     # airbench94's lookahead, its final decay (0.95^5 there): tricks.Lookahead
    precision: str = "float32"         # "auto": bf16 where native and measured faster (cifar_ae.hardware)
    strategy: str | None = None        # None | "mirrored": tf.distribute.MirroredStrategy over all devices
    presets: dict = field(default_factory=dict)  # per-preset overrides of PRESETS
    study: dict = field(default_factory=dict)    # the study's reported numbers, for reports

    def __post_init__(self):
        for key in TUPLE_FIELDS:
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
        for key in FIELDS:
            check_field(self.name, key, getattr(self, key))
        if self.weight_decay_skip and not self.weight_decay:
            raise TrialError(f"trial '{self.name}': weight_decay_skip={self.weight_decay_skip!r} needs a weight_decay; "
                             f"got weight_decay={self.weight_decay!r} (set one, or weight_decay_skip=()).")
        if self.validation == "none" and self.lr_schedule is None:
            raise TrialError(f"trial '{self.name}': validation='none' needs an lr_schedule (the default, "
                             f"ReduceLROnPlateau, watches a validation metric); got lr_schedule=None (set "
                             f"lr_schedule='onecycle', or validation='holdout').")
        if self.logit_adjustment and (self.task == "autoencoder" or self.train_classes):
            raise TrialError(f"trial '{self.name}': logit_adjustment needs a label output trained on all 10 classes; "
                             f"got task={self.task!r}, train_classes={self.train_classes!r} (set logit_adjustment=0).")

    def settings(self, preset: str) -> dict:
        """The preset's fields with this trial's overrides applied."""
        if preset not in PRESETS:
            raise TrialError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}.")
        return {**PRESETS[preset], **self.presets.get(preset, {})}

    def run_settings(self, preset: str) -> dict:
        """settings(preset), checked for a run: a preset that stops early needs a validation metric."""
        settings = self.settings(preset)
        if self.validation == "none" and settings["early_stopping"]:
            raise TrialError(f"trial '{self.name}': preset '{preset}' stops early on a validation metric "
                             f"(early_stopping={settings['early_stopping']}), and validation='none' has none; use "
                             f"another preset, or validation='holdout'.")
        return settings

    def replace(self, **changes) -> "Trial":
        """A copy with fields replaced, each validated (``model_args`` is replaced whole: see get_trial)."""
        check_changes(self.name, changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_changes(name, changes):
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise TrialError(f"unknown Trial field {unknown[0]!r} for '{name}'; valid fields: {', '.join(FIELDS)}.")


def _joint(name, description, **kw):
    # batch 64: the study's joint model was stable at batch 64 / lr 1e-3 (128 at 1e-2 stalled near 78%)
    base = dict(task="joint", model="joint_model", loss_weights={"reconstruction": 1.0, "label": 1.0}, batch_size=64,
                presets={"quick": {"epochs": 3}, "full": {"epochs": 100}})
    return Trial(name, description, **{**base, **kw})


V3_AUGMENTATION = {"policy": None, "flip": True, "translate": 4, "cutout": 8}


def _v3(name, description, **kw):
    """The stronger joint model: residual encoder, AdamW + one-cycle, label smoothing, recon-weight schedule."""
    base = dict(task="joint", model="resnet_joint", model_args={"width": 32}, optimizer="adamw",
                learning_rate=3e-3, weight_decay=5e-4, batch_size=256, lr_schedule="onecycle", warmup=0.25,
                label_smoothing=0.1, recon_weight=(1.0, 1.0), augmentation=V3_AUGMENTATION, tta_flip=True,
                precision="auto",  # bf16 only where the hardware has it natively (cifar_ae.hardware)
                loss_weights={"reconstruction": 1.0, "label": 1.0},
                presets={"quick": {"epochs": 8}, "full": {"epochs": 30}}, study={"test_accuracy": 0.86})
    return Trial(name, description, **{**base, **kw})


def _v3_features(name, description, **kw):
    """A classifier on the frozen v3-cnn-ae code, trained with v3's recipe (flip + translate, no smoothing)."""
    base = dict(task="classifier", model="resnet_feature_classifier", upstream="v3-cnn-ae", optimizer="adamw",
                learning_rate=3e-3, weight_decay=5e-4, batch_size=256, lr_schedule="onecycle", warmup=0.25,
                augmentation={**V3_AUGMENTATION, "cutout": 0}, tta_flip=True, precision="auto",
                presets={"quick": {"epochs": 8}, "full": {"epochs": 30}}, study={"test_accuracy": 0.75})
    return Trial(name, description, **{**base, **kw})


V4_AUGMENTATION = {"policy": None, "flip": "alternate", "translate": 2}  # airbench's: alternating flip, 2 px


def _v4(name, description, **kw):
    """airbench94's recipe on the joint model (cifar_ae.models.fast_joint), every trick a field (cifar_ae.tricks):
    whitening, Nesterov SGD 0.85 at a large LR with decoupled weight decay, BatchNorm biases at 64x the LR, label
    smoothing 0.2, batch 1024, alternating flip + 2 px translate, flip + crop TTA. The SGD constants are airbench's
    (lr 11.5 and wd 0.0153 per 1024 summed-loss examples) converted to Keras' mean loss and decoupled decay; the
    decay's conversion was wrong (1.3e-5, 680x too weak: see AIRBENCH_WEIGHT_DECAY), and stays here so that every
    v4 trial below means what its runs ran; the `-wd` trials and v4-airbench94 set the right one.
    model_args write out airbench's BatchNorm momentum (Keras' 0.6) and its identity (dirac) conv init
    (fast_joint's defaults, so the reader sees them here).
    quick = 4 epochs (~0.15 PFLOP), full = 9 (~0.35 PFLOP, airbench94's budget)."""
    base = dict(task="joint", model="fast_joint", model_args={"bn_momentum": 0.6, "dirac": True},
                optimizer="sgd", momentum=0.85, learning_rate=1.5,
                weight_decay=1.3e-5, batch_size=1024, lr_schedule="onecycle", warmup=0.23, label_smoothing=0.2,
                recon_weight=(10.0, 10.0), loss_weights={"reconstruction": 1.0, "label": 1.0},
                augmentation=V4_AUGMENTATION, tta_flip=True, tta_crops=True, whitening=True, precision="auto",
                presets={"quick": {"epochs": 4}, "full": {"epochs": 9}}, study={"test_accuracy": 0.86})
    return Trial(name, description, **{**base, **kw})


# airbench94's weight decay in Keras' form. Its PyTorch SGD takes wd 0.0153 per 1024 examples as a coupled decay of
# 0.0153 / (1 + 1 / (1 - 0.85)) = 0.0020 a step, which Nesterov momentum 0.85 amplifies by 1 / (1 - 0.85) to 0.0133
# a step at the peak; Keras' decoupled decay is weight_decay * lr a step, so 0.0133 / 1.5. The loss reduction (sum
# or mean) scales gradients, not the decay: _v4's 1.3e-5 divided by 1024 as well, 680x too weak (results: README).
AIRBENCH_WEIGHT_DECAY = 0.0153 / (1 + 1 / (1 - 0.85)) / (1 - 0.85) / 1.5  # 8.87e-3

# the narrow lead's three changes beyond the batch and width (lookahead, logit adjustment, reconstruction weight 40),
# which every later v4 trial takes
V4_LEAD_CHANGES = dict(recon_weight=(40.0, 40.0), lookahead=0.95 ** 5, logit_adjustment=1.0)

# the narrow v4 net: a third of the wide net's FLOPs a training image, 3x the epochs for the same compute
V4_NARROW = dict(batch_size=256, recon_weight=(40.0, 40.0),
                 model_args={"bn_momentum": 0.6, "dirac": True, "widths": (32, 128, 128)},
                 presets={"quick": {"epochs": 12}, "full": {"epochs": 28}})  # 0.145 and 0.338 PFLOP on 40,500 images

# widths between the wide net and the narrow one, at the same compute
V4_MID = dict(model_args={"bn_momentum": 0.6, "dirac": True, "widths": (48, 192, 192)},
              presets={"quick": {"epochs": 6}, "full": {"epochs": 14}})  # 0.141 and 0.329 PFLOP on 40,500 images

# the narrow recipe on every training image (no hold-out, last epoch, no partial batch); then the light decoder: the
# residual block it drops is 4.7 M of 49.7 M multiply-adds an image, and the 10% saved buys 31 epochs in 0.36 PFLOP
V4_ALLTRAIN = {**V4_NARROW, **V4_LEAD_CHANGES, "weight_decay": AIRBENCH_WEIGHT_DECAY, "learning_rate": 0.375,
               "drop_last": True, "validation": "none"}
V4_LIGHTDEC = {**V4_ALLTRAIN, "model_args": {**V4_NARROW["model_args"], "decoder_blocks": 0},
               "presets": {"quick": {"epochs": 13}, "full": {"epochs": 31}}}

TRIALS = {t.name: t for t in [
    Trial("v0-mlp-ae", "MLP autoencoder: 768-unit code, BatchNorm'd features.", task="autoencoder",
          model="mlp_autoencoder", presets={"quick": {"epochs": 10}, "full": {"epochs": 50}},
          study={"recon_mse": 0.0018}),
    Trial("v0-dense", "Dense classifier on the frozen MLP autoencoder's features.", task="classifier",
          model="dense_classifier", upstream="v0-mlp-ae", presets={"quick": {"epochs": 10}, "full": {"epochs": 50}},
          study={"test_accuracy": 0.50}),
    Trial("v0-conv1d", "1D-CNN classifier on the frozen MLP autoencoder's features.", task="classifier",
          model="conv1d_classifier", upstream="v0-mlp-ae", presets={"quick": {"epochs": 10}, "full": {"epochs": 50}},
          study={"test_accuracy": 0.44}),
    Trial("v1-cnn-ae", "Conv autoencoder, (8,8,64) code, Conv2DTranspose decoder, trained alone.", task="autoencoder",
          model="conv_autoencoder", presets={"quick": {"epochs": 8}, "full": {"epochs": 50}},
          study={"recon_mse": 0.0007}),
    Trial("v1-feature-classifier", "CNN (128-filter blocks) on the frozen conv autoencoder's features.",
          task="classifier", model="feature_classifier", upstream="v1-cnn-ae", batch_size=64,  # the study's: Adam 1e-3,
          presets={"quick": {"epochs": 5}, "full": {"epochs": 50}}, study={"test_accuracy": 0.75}),  # batch 64, LR decay
    _joint("v2-joint-noaug", "Joint reconstruction + label training, no augmentation, Adam.",
           study={"test_accuracy": 0.75, "train_accuracy": 0.96}),
    _joint("v2-joint-aug-adam", "Joint training with PIL augmentation, Adam, class weights.",
           augmentation=STUDY_AUGMENTATION, class_weight="inverse", study={"test_accuracy": 0.86, "train_accuracy": 0.89}),
    _joint("v2-joint-aug-sgd", "Joint training with PIL augmentation, SGD, two Dense layers in the head.",
           model_args={"dense_units": (512, 256)}, augmentation=STUDY_AUGMENTATION, optimizer="sgd",
           learning_rate=0.01, study={"test_accuracy": 0.82, "train_accuracy": 0.85}),
    _v3("v3-joint-resnet", "Residual joint model: flip/translate/cutout, AdamW one-cycle, label smoothing, flip TTA."),
    _v3("v3-joint-resnet-lean", "v3-joint-resnet without cutout or label smoothing, reconstruction weight 10: "
        "the changes the 2-epoch ablation (results/ablation.md) found free or helpful at short budgets.",
        augmentation={**V3_AUGMENTATION, "cutout": 0}, label_smoothing=0.0, recon_weight=(10.0, 10.0)),
    _v3("v3-joint-resnet-patch", "v3-joint-resnet-lean whose code also carries a linear 4x4 patch path of the "
        "pixels (48 channels), decoded by a residual block and a linear 'unpatchify' (v3-cnn-ae's decoder): "
        "the reconstruction no longer has to pass through the classifier's max-pooled ReLU features.",
        model_args={"width": 32, "decoder": "residual", "patch_channels": 48},
        augmentation={**V3_AUGMENTATION, "cutout": 0}, label_smoothing=0.0, recon_weight=(10.0, 10.0)),
    _v3("v3-joint-resnet-autoaugment", "v3-joint-resnet with the AutoAugment CIFAR-10 policy on top.",
        augmentation={**V3_AUGMENTATION, "policy": "autoaugment-cifar10"}),
    Trial("v3-cnn-ae", "Patchify conv autoencoder with residual blocks, (8,8,64) code, trained alone.",
          task="autoencoder", model="patch_autoencoder", optimizer="adamw", learning_rate=2e-3, batch_size=256,
          lr_schedule="onecycle", precision="auto",
          presets={"quick": {"epochs": 20}, "full": {"epochs": 50}}, study={"recon_mse": 0.0007}),
    _v3_features("v3-feature-classifier", "Residual head on the frozen v3-cnn-ae features, flip/translate/cutout.",
                 label_smoothing=0.1, augmentation=V3_AUGMENTATION),
    _v3_features("v3-feature-resnet", "The frozen v3-cnn-ae features rendered back to 32x32 by a learned linear "
                 "Conv2DTranspose, then resnet_joint's encoder and head; only the classifier trains.",
                 model_args={"render_channels": 16}),
    _v4("v4-joint-fast", "airbench94's network and recipe as a joint model (reconstruction + label from one code)."),
    _v4("v4-joint-fast-b256", "v4-joint-fast at batch 256 (the same learning rate): four times the optimizer steps "
        "for the same compute, the change results/ablation_v4.md ranks first on validation accuracy.", batch_size=256),
    _v4("v4-joint-fast-b256-recon40", "v4-joint-fast-b256 at reconstruction weight 40 instead of 10: the "
        "results/sweep_v4.md row whose reconstruction MSE met the <= 0.001 goal at one seed.", batch_size=256,
        recon_weight=(40.0, 40.0)),
    _v4("v4-joint-fast-b256-recon40-narrow", "v4-joint-fast-b256-recon40 at widths 32/128/128 (0.298 GFLOP a "
        "training image, not 0.960) trained 3x as many epochs, so the same compute: results/ablation_v4.md's narrow "
        "row beat the baseline at a third of its compute.", **V4_NARROW),
    _v4("v4-joint-fast-b256-recon20-narrow", "v4-joint-fast-b256-recon40-narrow at reconstruction weight 20: "
        "its MSE (0.00050) had room under the 0.001 goal, so half the weight goes back to the label.",
        **{**V4_NARROW, "recon_weight": (20.0, 20.0)}),
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead", "v4-joint-fast-b256-recon40-narrow with airbench94's "
        "lookahead (final decay 0.95^5, every 5 steps, ramped in by (step / total)^3), the one airbench94 trick v4 "
        "lacked: validation collapses mid-run at the peak LR, and the slow copy averages the late low-LR steps, "
        "BatchNorm statistics included.", **V4_NARROW, lookahead=0.95 ** 5),
    # batch 256 at lr 1.5 on a mean loss is 4x airbench94's per-example LR (1.5 at batch 1024); the narrow net's
    # test accuracy sits at 35-60% for its first 6 of 12 epochs, so these lower the peak toward airbench's
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-lr0.75", "v4-joint-fast-b256-recon40-narrow-lookahead at "
        "peak learning rate 0.75 instead of 1.5 (twice airbench94's per-example LR, not four times).",
        **V4_NARROW, lookahead=0.95 ** 5, learning_rate=0.75),
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-lr0.375", "v4-joint-fast-b256-recon40-narrow-lookahead at "
        "peak learning rate 0.375: airbench94's per-example LR (1.5 at batch 1024) scaled linearly to batch 256.",
        **V4_NARROW, lookahead=0.95 ** 5, learning_rate=0.375),
    # the training set is imbalanced (bird, deer, truck at half), the test set balanced: the net's minority recall
    # trails its precision (bird 78% / 92% at lr 0.75), the signature of the training prior in its predictions
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj", "v4-joint-fast-b256-recon40-narrow-lookahead "
        "with post-hoc logit adjustment at tau = 1 (Menon et al. 2021): test predictions divided by the training "
        "class prior, for the balanced test set. Training is unchanged; tau is the theory's, not tuned on test.",
        **V4_NARROW, lookahead=0.95 ** 5, logit_adjustment=1.0),
    # results/sweep_v4_narrow.md: at 16x (not 64x) the BatchNorm biases move at airbench94's per-example rate, and
    # the peak-LR validation collapse is gone
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-biaslr16", "v4-joint-fast-b256-recon40-narrow-"
        "lookahead-logitadj with BatchNorm biases at 16x the learning rate instead of 64x: batch 256 at lr 1.5 is 4x "
        "airbench94's per-example LR, so 16x is airbench's per-example bias LR (the narrow sweep's best validation row).",
        **{**V4_NARROW, "model_args": {**V4_NARROW["model_args"], "bias_lr_scale": 16.0}}, lookahead=0.95 ** 5,
        logit_adjustment=1.0),
    # every v4 lead so far trains at batch 256, chosen at 1 and 4 epochs (results/ablation_v4.md, sweep_v4.md) where 4x
    # the steps wins; airbench94's own batch 1024 and 9 epochs were never run with the lead's other changes
    _v4("v4-joint-fast-recon40-lookahead-logitadj", "v4-joint-fast (airbench94's wide net, batch 1024, 9 epochs at "
        "full) with the narrow lead's three other changes: reconstruction weight 40, lookahead, logit adjustment tau 1.",
        **V4_LEAD_CHANGES),
    _v4("v4-joint-fast-recon40-lookahead-logitadj-wd", "v4-joint-fast-recon40-lookahead-logitadj with airbench94's "
        "weight decay (AIRBENCH_WEIGHT_DECAY, 8.87e-3 in Keras' decoupled form) instead of _v4's 680x weaker 1.3e-5.",
        **V4_LEAD_CHANGES, weight_decay=AIRBENCH_WEIGHT_DECAY),
    # the weight-decay fix lifted the wide net +2.2 points at full, but its best-validation checkpoint (epoch 8 of 9) had
    # MSE 0.0015, over the 0.001 goal: 2.5x the reconstruction weight (MSE fell as weight^-0.58 from 10 to 40 at b256)
    _v4("v4-joint-fast-recon100-lookahead-logitadj-wd", "v4-joint-fast-recon40-lookahead-logitadj-wd at "
        "reconstruction weight 100: its MSE (0.0015 at full) over the 0.001 goal.",
        **{**V4_LEAD_CHANGES, "recon_weight": (100.0, 100.0)}, weight_decay=AIRBENCH_WEIGHT_DECAY),
    # the decoder is not airbench's: its last layers are not behind a BatchNorm, so the decay shrinks what they output,
    # and the wide -wd runs' MSE only fell under 0.0015 in the last epoch
    _v4("v4-joint-fast-recon40-lookahead-logitadj-wd-decnowd", "v4-joint-fast-recon40-lookahead-logitadj-wd with no "
        "weight decay on the decoder or the patch path (weight_decay_skip): the decay stays airbench94's own net's.",
        **V4_LEAD_CHANGES, weight_decay=AIRBENCH_WEIGHT_DECAY, weight_decay_skip=("dec", "patch_code")),
    # the narrow lead with the fix: at batch 256 Keras' decoupled decay (weight_decay * lr a step) keeps airbench94's
    # per-example decay only at its per-example LR, 0.375; at the lead's 1.5 both are 4x airbench's per example
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-wd", "v4-joint-fast-b256-recon40-narrow-lookahead-"
        "logitadj with airbench94's weight decay (AIRBENCH_WEIGHT_DECAY) instead of _v4's 680x weaker 1.3e-5.",
        **{**V4_NARROW, **V4_LEAD_CHANGES}, weight_decay=AIRBENCH_WEIGHT_DECAY),
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-wd-lr0.375", "v4-joint-fast-b256-recon40-narrow-"
        "lookahead-logitadj-wd at peak LR 0.375: airbench94's per-example learning rate and weight decay at batch 256.",
        **{**V4_NARROW, **V4_LEAD_CHANGES}, weight_decay=AIRBENCH_WEIGHT_DECAY, learning_rate=0.375),
    # the narrow lead sees each image 28 times and ends at 98% training accuracy: airbench96 (40 epochs) translates by
    # 4 px where airbench94 (10 epochs) translates by 2
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-wd-lr0.375-translate4", "v4-joint-fast-b256-recon40-"
        "narrow-lookahead-logitadj-wd-lr0.375 with images translated by up to 4 px instead of 2 (airbench96's).",
        **{**V4_NARROW, **V4_LEAD_CHANGES}, weight_decay=AIRBENCH_WEIGHT_DECAY, learning_rate=0.375,
        augmentation={**V4_AUGMENTATION, "translate": 4}),
    # every epoch of the narrow lead ends on a 52-image batch (40,500 = 158 x 256 + 52), whose BatchNorm statistics
    # take 40% of the running ones (momentum 0.6): its per-epoch test probe swings 50-80% at the peak LR
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-wd-lr0.375-droplast", "v4-joint-fast-b256-recon40-"
        "narrow-lookahead-logitadj-wd-lr0.375 without each epoch's partial last batch, as airbench94's loader.",
        **{**V4_NARROW, **V4_LEAD_CHANGES}, weight_decay=AIRBENCH_WEIGHT_DECAY, learning_rate=0.375, drop_last=True),
    # the recipe is chosen on the 2,000 held-out images; trained on them as well, with its last epoch fixed in advance
    # (every full narrow run's best validation epoch was its 27th or 28th), it sees 5% more images: 0.355 PFLOP
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-wd-lr0.375-droplast-alltrain", "v4-joint-fast-b256-"
        "recon40-narrow-lookahead-logitadj-wd-lr0.375-droplast trained on all 42,500 images of the imbalanced subset "
        "(no hold-out), keeping its last epoch: the recipe, final.", **V4_ALLTRAIN),
    # the patch path carries the image to the decoder, so a 1x1 conv and the linear unpatchify may reconstruct enough
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-wd-lr0.375-droplast-alltrain-lightdec", "v4-joint-fast-"
        "b256-recon40-narrow-lookahead-logitadj-wd-lr0.375-droplast-alltrain with no residual block in the decoder "
        "(0.270 GFLOP a training image, not 0.298), so 31 epochs at full (0.356 PFLOP) and 13 at quick (0.149).",
        **V4_LIGHTDEC),
    # its controls at the same compute (benchmarks/fast.py controls --base <it>): the decoder's loss off, and the
    # balanced 2,500-per-class set
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-wd-lr0.375-droplast-alltrain-lightdec-norecon",
        "...-alltrain-lightdec without the decoder's loss (reconstruction weight 0): what reconstructing costs or "
        "gives the light-decoder recipe.", **{**V4_LIGHTDEC, "loss_weights": {"reconstruction": 0.0, "label": 1.0},
                                   "recon_weight": None}),
    _v4("v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-wd-lr0.375-droplast-alltrain-lightdec-balanced",
        "...-alltrain-lightdec on the balanced control set (2,500 per class, all 25,000 images): what the imbalance "
        "costs the light-decoder recipe.", **V4_LIGHTDEC, train_set="balanced"),
    # the fixed-decay narrow lead ends at 98% training accuracy (labels smoothed, augmented) after 28 epochs; the mid
    # widths (0.580 GFLOP a training image) see each image half as often for the same compute
    _v4("v4-joint-fast-b256-recon40-mid-lookahead-logitadj-wd-lr0.375", "v4-joint-fast-b256-recon40-narrow-lookahead-"
        "logitadj-wd-lr0.375 at widths 48/192/192 for 14 epochs at full (0.329 PFLOP): v4-joint-fast-b256-recon40-mid's "
        "shape with the narrow lead's recipe.",
        batch_size=256, **V4_MID, **V4_LEAD_CHANGES, weight_decay=AIRBENCH_WEIGHT_DECAY, learning_rate=0.375),
    # the same recipe at airbench94's widths ends the line narrow (28 epochs), mid (14), wide (9) at one compute
    _v4("v4-joint-fast-b256-recon40-lookahead-logitadj-wd-lr0.375", "v4-joint-fast-recon40-lookahead-logitadj-wd at "
        "batch 256 and peak LR 0.375 (airbench94's per-example LR and decay): the narrow lead's recipe at airbench94's "
        "widths, 9 epochs at full.", **V4_LEAD_CHANGES, weight_decay=AIRBENCH_WEIGHT_DECAY, batch_size=256,
        learning_rate=0.375),
    # not a joint model: the check on the port itself, against airbench94's published 94.01% (50,000 images, 9.9 epochs)
    _v4("v4-airbench94", "airbench94 itself as v4 builds it: the classifier alone (reconstruction weight 0, no patch "
        "path), with lookahead and airbench94's weight decay, on the full balanced training set less the 2,000 "
        "held out, 10 epochs at full: whether the Keras port reaches airbench94's published accuracy.",
        model_args={"bn_momentum": 0.6, "dirac": True, "patch_channels": 0}, train_set="full",
        loss_weights={"reconstruction": 0.0, "label": 1.0}, recon_weight=None, lookahead=0.95 ** 5,
        weight_decay=AIRBENCH_WEIGHT_DECAY,
        presets={"quick": {"epochs": 4}, "full": {"epochs": 10}}),
    _v4("v4-joint-fast-b256-recon40-mid", "v4-joint-fast-b256-recon40 at widths 48/192/192 (0.580 GFLOP a "
        "training image) for 6 epochs: between the wide net and the narrow one at the same compute.",
        batch_size=256, recon_weight=(40.0, 40.0), **V4_MID),
    _v4("v4-joint-fast-norecon", "v4-joint-fast without the decoder's loss (reconstruction weight 0): the control "
        "for what reconstructing costs or gives.", loss_weights={"reconstruction": 0.0, "label": 1.0}, recon_weight=None),
    _v4("v4-joint-fast-balanced", "v4-joint-fast on the balanced control set (2,500 per class): the control for "
        "what the imbalance costs.", train_set="balanced"),
    _v4("v4-joint-fast-b256-norecon", "v4-joint-fast-b256 without the decoder's loss: the control for what "
        "reconstructing costs or gives, at the lead's batch.", batch_size=256,
        loss_weights={"reconstruction": 0.0, "label": 1.0}, recon_weight=None),
    _v4("v4-joint-fast-b256-balanced", "v4-joint-fast-b256 on the balanced control set (2,500 per class): the "
        "control for what the imbalance costs, at the lead's batch.", batch_size=256, train_set="balanced"),
    _v3_features("v3-feature-resnet-decoded", "v3-feature-resnet reading the frozen v3-cnn-ae code through the "
                 "frozen decoder (its reconstruction) instead of a learned render: only the classifier trains.",
                 feature_layer="reconstruction"),
]}


def get_trial(name: str, **changes) -> Trial:
    """The named trial with `changes` applied: ``model_args`` keys are merged into the trial's own
    (``get_trial("v2-joint-noaug", model_args={"tie_weights": True})`` keeps the other sizes), every other
    field is replaced. To replace the whole model_args dict, use ``get_trial(name).replace(model_args={...})``.
    """
    if name not in TRIALS and not _TUNED_LOADED:
        load_tuned_trials()
    if name not in TRIALS:
        raise TrialError(f"unknown trial '{name}'; valid trials: {', '.join(TRIALS)}.")
    trial = TRIALS[name]
    if not changes:
        return trial
    check_changes(name, changes)
    if isinstance(changes.get("model_args"), dict):
        changes = {**changes, "model_args": {**trial.model_args, **changes["model_args"]}}
    return dataclasses.replace(trial, **changes)


# --------------------------------------------------------------------------- tuned trials
# `python -m cifar_ae tune` saves its best configuration as a trial in results/tuned_trials.json
# ($CIFAR_AE_TUNED_TRIALS overrides the path); those records join TRIALS here, so `train NAME` reruns them.
TUNED_TRIALS_FILE = Path(os.environ.get("CIFAR_AE_TUNED_TRIALS",
                                        Path(__file__).resolve().parent.parent / "results" / "tuned_trials.json"))
TUNED_NAMES: set = set()
_TUNED_LOADED = False


def load_tuned_trials(path=None) -> list:
    """Add the trials in a tuned-trials JSON to TRIALS (never replacing a study trial); returns their names.

    Each record is validated like any Trial (a name that is not a plain folder name, a bad field): a bad record
    is skipped with a warning naming it, the others load.
    """
    global _TUNED_LOADED
    _TUNED_LOADED = True
    path, names = Path(path or TUNED_TRIALS_FILE), {f.name for f in dataclasses.fields(Trial)}
    try:
        records = json.loads(path.read_text()).get("trials", []) if path.is_file() else []
        if not isinstance(records, list):
            raise ValueError("'trials' is not a list")
    except (OSError, ValueError, AttributeError) as e:
        warnings.warn(f"{path}: tuned trials not loaded ({type(e).__name__}: {e})")
        return []
    trials = []
    for i, r in enumerate(records):
        try:
            if not isinstance(r, dict):
                raise TypeError("not a JSON object")
            # a record saved before the search built through models.joint_model names its old copy of it
            r = {**r, "model": "joint_model"} if r.get("model") == "tuned_joint_model" else r
            trials.append(Trial(**{k: v for k, v in r.items() if k in names}))
        except (TypeError, ValueError) as e:
            warnings.warn(f"{path}: tuned trial #{i} skipped ({e})")
    added = [t.name for t in trials if t.name not in TRIALS or t.name in TUNED_NAMES]
    TRIALS.update({t.name: t for t in trials if t.name in added})
    TUNED_NAMES.update(added)
    return added


def all_trials() -> dict:
    """TRIALS with the tuned trials loaded (for listings)."""
    if not _TUNED_LOADED:
        load_tuned_trials()
    return TRIALS
