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

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")  # trial, variant and run names become folder names


# --------------------------------------------------------------------------- field constraints

class TrialError(ValueError):
    """A Trial field, override, preset, seed or epoch count is invalid; the message names it and the fix."""


def _name(v):
    return isinstance(v, str) and bool(NAME_PATTERN.fullmatch(v)) and v not in (".", "..") and len(v) <= 200


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


# preset setting -> (what a valid value is, check): the per-preset overrides are checked as Trial fields are
SETTINGS = {
    "epochs": _number(1, kind=Integral),
    "train_images": _number(1, kind=Integral, none=True),
    "val_images": _number(0, kind=Integral),
    "test_images": _number(1, kind=Integral, none=True),
    "tsne_points": _number(0, kind=Integral),
    "early_stopping": _number(1, kind=Integral, none=True),
}
assert set(SETTINGS) == set(SETTING_KEYS)


def _presets(v):
    if not (isinstance(v, dict) and all(p in PRESETS and isinstance(s, dict) and set(s) <= set(SETTING_KEYS)
                                        for p, s in v.items())):
        return False
    for preset, settings in v.items():
        for key, value in settings.items():
            what, ok = SETTINGS[key]
            if not ok(value):
                raise ValueError(f"presets[{preset!r}][{key!r}] must be {what}; got {value!r}")
    return True


# field -> (what a valid value is, check). Declared once; Trial.__post_init__ applies it.
FIELDS = {
    "name": ("a name of letters, digits, '.', '_' or '-' (200 at most)", _name),
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
    "muon_learning_rate": _number(0, 10, none=True, low_open=True),
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
    "strategy": _options(None, "mirrored", "data_parallel"),
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
        shown = repr(name) if len(str(name)) <= 60 else f"of {len(name)} characters ({str(name)[:30]!r}...)"
        raise TrialError(f"{what} name {shown} must be letters, digits, '.', '_' or '-', 200 at most (it becomes "
                         "a folder name).")
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
    muon_learning_rate: float | None = None  # optimizer "muon": the conv filters' Muon step (optim.conv_muon_class)
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
    strategy: str | None = None        # None | "mirrored" (TensorFlow, one host) | "data_parallel" (JAX): cifar_ae.backend
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
        if (self.optimizer == "muon") != (self.muon_learning_rate is not None):
            raise TrialError(f"trial '{self.name}': optimizer 'muon' and muon_learning_rate go together; got "
                             f"optimizer={self.optimizer!r}, muon_learning_rate={self.muon_learning_rate!r} (set both, "
                             "or neither).")
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
        check_changes(self.name, changes, rename=True)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


NOT_CHANGES = ("name",)  # a run of a trial with changes keeps the trial's name: --variant names its folder


def check_changes(name, changes, rename=False):
    """Changes to a trial: known fields; the name only where a new trial is made (Trial.replace), never in a run's
    changes (`--set`, run_trial's keywords)."""
    if "name" in changes and not rename:
        raise TrialError(f"a change cannot rename trial '{name}' (got name={changes['name']!r}); name the changed "
                         "run's folder with --variant NAME / variant=NAME instead.")
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        import difflib
        close = difflib.get_close_matches(unknown[0], FIELDS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        valid = [f for f in FIELDS if f not in NOT_CHANGES]
        raise TrialError(f"unknown Trial field {unknown[0]!r} for '{name}'; {hint}valid fields: {', '.join(valid)}.")


# Every registered trial written out flat: the fields that differ from Trial's defaults, in one place. Variants,
# sweeps, ablations and controls are rows of experiments/*.toml (cifar_ae.experiments), not trials.

# The study's PIL policy (augment/policies.py) with a mirror flip and a 4 px translate
STUDY_AUGMENTATION = {"policy": "study", "flip": True, "translate": 4}
# airbench94's weight decay in Keras' decoupled form: its PyTorch SGD takes 0.0153 per 1024 summed-loss examples as
# a coupled decay of 0.0153 / (1 + 1 / (1 - 0.85)) a step, which Nesterov momentum 0.85 amplifies by 1 / (1 - 0.85);
# Keras decays weight_decay * lr a step, at airbench's peak LR 1.5
AIRBENCH_WEIGHT_DECAY = 0.0153 / (1 + 1 / (1 - 0.85)) / (1 - 0.85) / 1.5
AIRBENCH_LOOKAHEAD = 0.95 ** 5  # airbench94's lookahead: its final decay, every 5 steps

TRIALS = {t.name: t for t in [
    # ---- the study (v0, v1, v2)
    # v0 and v1 as the study built them (issue 44): three Dense layers; two convs per block. The nets registered
    # before are rows of experiments/study_autoencoders.toml (v0-two-dense, v1-one-conv), and their study runs are
    # the study table's rows marked with what they changed against these.
    Trial("v0-mlp-ae", "MLP autoencoder, three Dense layers: 1,536 hidden units, a 768-unit code, BatchNorm'd features.",
          task="autoencoder", model="mlp_autoencoder", model_args={"hidden_units": [1536]},
          presets={"quick": {"epochs": 10}, "full": {"epochs": 50}}, study={"recon_mse": 0.0018}),
    Trial("v0-dense", "Dense classifier on the frozen MLP autoencoder's features.", task="classifier",
          model="dense_classifier", upstream="v0-mlp-ae", presets={"quick": {"epochs": 10}, "full": {"epochs": 50}},
          study={"test_accuracy": 0.50}),
    Trial("v0-conv1d", "1D-CNN classifier on the frozen MLP autoencoder's features.", task="classifier",
          model="conv1d_classifier", upstream="v0-mlp-ae", presets={"quick": {"epochs": 10}, "full": {"epochs": 50}},
          study={"test_accuracy": 0.44}),
    Trial("v1-cnn-ae", "Conv autoencoder, two convs per block at 32 and 64 filters, (8,8,64) code, Conv2DTranspose "
          "decoder, trained alone.", task="autoencoder", model="conv_autoencoder", model_args={"convs_per_block": 2},
          presets={"quick": {"epochs": 8}, "full": {"epochs": 50}}, study={"recon_mse": 0.0007}),
    Trial("v1-feature-classifier", "CNN (128-filter blocks) on the frozen conv autoencoder's features.",
          task="classifier", model="feature_classifier", upstream="v1-cnn-ae",
          batch_size=64,  # the study's: Adam 1e-3, batch 64, LR decay on plateau
          presets={"quick": {"epochs": 5}, "full": {"epochs": 50}}, study={"test_accuracy": 0.75}),
    # batch 64: the study's joint model was stable at batch 64 / lr 1e-3 (128 at 1e-2 stalled near 78%)
    Trial("v2-joint-noaug", "Joint reconstruction + label training, no augmentation, Adam.", task="joint",
          model="joint_model", batch_size=64, loss_weights={"reconstruction": 1.0, "label": 1.0},
          presets={"quick": {"epochs": 3}, "full": {"epochs": 100}},
          study={"test_accuracy": 0.75, "train_accuracy": 0.96}),
    Trial("v2-joint-aug-adam", "Joint training with PIL augmentation, Adam, class weights.", task="joint",
          model="joint_model", batch_size=64, loss_weights={"reconstruction": 1.0, "label": 1.0},
          augmentation=STUDY_AUGMENTATION, class_weight="inverse",
          presets={"quick": {"epochs": 3}, "full": {"epochs": 100}},
          study={"test_accuracy": 0.86, "train_accuracy": 0.89}),
    Trial("v2-joint-aug-sgd", "Joint training with PIL augmentation, SGD, two Dense layers in the head.", task="joint",
          model="joint_model", model_args={"dense_units": (512, 256)}, batch_size=64,
          loss_weights={"reconstruction": 1.0, "label": 1.0}, augmentation=STUDY_AUGMENTATION, optimizer="sgd",
          learning_rate=0.01, presets={"quick": {"epochs": 3}, "full": {"epochs": 100}},
          study={"test_accuracy": 0.82, "train_accuracy": 0.85}),
    # ---- v3: residual nets, AdamW + one-cycle (cifar_ae/tricks.py); bf16 only where native and measured faster
    Trial("v3-joint-resnet", "Residual joint model: flip/translate/cutout, AdamW one-cycle, label smoothing, flip TTA.",
          task="joint", model="resnet_joint", model_args={"width": 32}, optimizer="adamw", learning_rate=3e-3,
          weight_decay=5e-4, batch_size=256, lr_schedule="onecycle", warmup=0.25, label_smoothing=0.1,
          recon_weight=(1.0, 1.0), loss_weights={"reconstruction": 1.0, "label": 1.0},
          augmentation={"policy": None, "flip": True, "translate": 4, "cutout": 8}, tta_flip=True, precision="auto",
          presets={"quick": {"epochs": 8}, "full": {"epochs": 30}}, study={"test_accuracy": 0.86}),
    Trial("v3-joint-resnet-patch", "v3's joint model whose code also carries a linear 4x4 patch path of the pixels "
          "(48 channels), decoded by a residual block and a linear unpatchify: a pixel bypass of the features.",
          task="joint", model="resnet_joint", model_args={"width": 32, "decoder": "residual", "patch_channels": 48},
          optimizer="adamw", learning_rate=3e-3, weight_decay=5e-4, batch_size=256, lr_schedule="onecycle",
          warmup=0.25, recon_weight=(10.0, 10.0), loss_weights={"reconstruction": 1.0, "label": 1.0},
          augmentation={"policy": None, "flip": True, "translate": 4, "cutout": 0}, tta_flip=True, precision="auto",
          presets={"quick": {"epochs": 8}, "full": {"epochs": 30}}, study={"test_accuracy": 0.86}),
    Trial("v3-cnn-ae", "Patchify conv autoencoder with residual blocks, (8,8,64) code, trained alone.",
          task="autoencoder", model="patch_autoencoder", optimizer="adamw", learning_rate=2e-3, batch_size=256,
          lr_schedule="onecycle", precision="auto", presets={"quick": {"epochs": 20}, "full": {"epochs": 50}},
          study={"recon_mse": 0.0007}),
    Trial("v3-feature-classifier", "Residual head on the frozen v3-cnn-ae features, flip/translate/cutout.",
          task="classifier", model="resnet_feature_classifier", upstream="v3-cnn-ae", optimizer="adamw",
          learning_rate=3e-3, weight_decay=5e-4, batch_size=256, lr_schedule="onecycle", warmup=0.25,
          label_smoothing=0.1, augmentation={"policy": None, "flip": True, "translate": 4, "cutout": 8},
          tta_flip=True, precision="auto", presets={"quick": {"epochs": 8}, "full": {"epochs": 30}},
          study={"test_accuracy": 0.75}),
    Trial("v3-feature-resnet", "The frozen v3-cnn-ae features rendered back to 32x32 by a learned linear "
          "Conv2DTranspose, then resnet_joint's encoder and head; only the classifier trains.",
          task="classifier", model="resnet_feature_classifier", model_args={"render_channels": 16},
          upstream="v3-cnn-ae", optimizer="adamw", learning_rate=3e-3, weight_decay=5e-4, batch_size=256,
          lr_schedule="onecycle", warmup=0.25, augmentation={"policy": None, "flip": True, "translate": 4, "cutout": 0},
          tta_flip=True, precision="auto", presets={"quick": {"epochs": 8}, "full": {"epochs": 30}},
          study={"test_accuracy": 0.75}),
    # ---- v4: airbench94's recipe on a joint net (cifar_ae.models.fast_joint), every trick a field
    Trial("v4-joint-lead", "The v4 lead (experiments/v4.toml, row 'lead'): airbench94's tricks on a narrow joint net "
          "with a pixel patch path, trained on all 42,500 images, last epoch kept.",
          task="joint", model="fast_joint",
          model_args={"widths": (32, 128, 128),  # a third of airbench94's FLOPs a training image
                      "bn_momentum": 0.6,        # airbench's BatchNorm momentum, in Keras' convention
                      "dirac": True,             # convs start as partial identities, as airbench's
                      "decoder_blocks": 0},      # no residual block in the decoder: 10% fewer FLOPs
          whitening=True,                        # a frozen 2x2 whitening conv from the training patches
          optimizer="sgd", momentum=0.85, learning_rate=0.375,  # airbench94's per-example LR at batch 256
          weight_decay=AIRBENCH_WEIGHT_DECAY, batch_size=256, drop_last=True,
          lr_schedule="onecycle", warmup=0.23, lookahead=AIRBENCH_LOOKAHEAD,
          label_smoothing=0.2, logit_adjustment=1.0,  # logits minus the training prior: a balanced test set
          loss_weights={"reconstruction": 1.0, "label": 1.0}, recon_weight=(40.0, 40.0),
          augmentation={"policy": None, "flip": "alternate", "translate": 2},  # airbench's
          tta_flip=True, tta_crops=True, validation="none", precision="auto",
          # quick: one epoch, the README's main command (minutes on a 2-core CPU); full: 0.36 PFLOP
          presets={"quick": {"epochs": 1}, "full": {"epochs": 31}},
          study={"test_accuracy": 0.86, "recon_mse": 0.0007}),  # the study's best joint accuracy and AE MSE
    Trial("v4-airbench94", "airbench94 ported: the classifier alone (reconstruction weight 0, no patch path) on the "
          "full balanced training set less the 2,000 held out, 10 epochs at full, against its published 94.01%.",
          task="joint", model="fast_joint", model_args={"bn_momentum": 0.6, "dirac": True, "patch_channels": 0},
          whitening=True, optimizer="sgd", momentum=0.85, learning_rate=1.5, weight_decay=AIRBENCH_WEIGHT_DECAY,
          batch_size=1024, lr_schedule="onecycle", warmup=0.23, lookahead=AIRBENCH_LOOKAHEAD, label_smoothing=0.2,
          train_set="full", loss_weights={"reconstruction": 0.0, "label": 1.0},
          augmentation={"policy": None, "flip": "alternate", "translate": 2}, tta_flip=True, tta_crops=True,
          precision="auto", presets={"quick": {"epochs": 4}, "full": {"epochs": 10}}, study={"test_accuracy": 0.86}),
]}


def get_trial(name: str, **changes) -> Trial:
    """The named trial with `changes` applied: ``model_args`` keys are merged into the trial's own
    (``get_trial("v2-joint-noaug", model_args={"tie_weights": True})`` keeps the other sizes), every other
    field is replaced. To replace the whole model_args dict, use ``get_trial(name).replace(model_args={...})``.
    """
    if name not in TRIALS and not _TUNED_LOADED:
        load_tuned_trials()
    if name not in TRIALS:
        import difflib
        close = difflib.get_close_matches(str(name), TRIALS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TrialError(f"unknown trial '{name}'; {hint}valid trials: {', '.join(TRIALS)}.")
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
        if path.is_file():
            from .safejson import load_json  # size and nesting checked before json parses it
            records = load_json(path).get("trials", [])
        else:
            records = []
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
