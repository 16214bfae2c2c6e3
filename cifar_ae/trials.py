"""Every trial of the study as plain data: model, optimizer, data, augmentation and length per preset.

A trial's full definition is its entry in TRIALS; `run_trial` (cifar_ae.training) turns it into a run folder.
Presets set the length: `smoke` (seconds, tests and CI), `quick` (minutes on a 2-core CPU), `full` (the
study's length, for a GPU). A trial may override any preset field (e.g. fewer quick epochs for a slow model).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

PRESETS = {
    # train_images: None = the whole training subset; test_images: None = the full 10,000-image test set
    "smoke": dict(epochs=1, train_images=256, val_images=64, test_images=256, tsne_points=0, workers=1),  # t-SNE off: seconds
    "quick": dict(epochs=5, train_images=None, val_images=2000, test_images=None, tsne_points=1000, workers=2),
    "full": dict(epochs=100, train_images=None, val_images=2000, test_images=None, tsne_points=2000, workers=4),
}

STUDY_AUGMENTATION = {"policy": "study", "flip": True, "translate": 4}


@dataclass(frozen=True)
class Trial:
    name: str
    description: str
    task: str                       # "autoencoder" | "classifier" | "joint"
    model: str                      # a builder in cifar_ae.models.BUILDERS
    model_args: dict = field(default_factory=dict)
    upstream: str | None = None     # autoencoder trial whose frozen encoder feeds this classifier
    feature_layer: str = "features"
    optimizer: str = "adam"         # "adam" | "sgd" (momentum 0.9, Nesterov)
    learning_rate: float = 1e-3
    batch_size: int = 128
    train_set: str = "imbalanced"   # "imbalanced" (the study's) | "balanced" (2,500 per class) | "full"
    validation: str = "holdout"     # "holdout": stratified slice of the training subset | "test": as the study did
    scaling: str = "unit"           # "unit" (/255) | "mean" | "zscore" — classifier input only
    augmentation: dict | None = None
    class_weight: str | None = None  # None | "inverse" | "effective"
    loss_weights: dict | None = None
    weight_decay: float | None = None  # decoupled (AdamW-style) weight decay, any optimizer
    # tricks beyond the study (cifar_ae/tricks.py); each is off at its default
    lr_schedule: str | None = None     # None: constant LR + ReduceLROnPlateau | "onecycle"
    warmup: float = 0.2                # fraction of training spent warming up (onecycle)
    label_smoothing: float = 0.0
    recon_weight: tuple | None = None  # (start, end): reconstruction loss weight scheduled over the epochs
    batch_sizes: tuple | None = None   # growing batch size, e.g. (128, 256, 512): equal stages of the epochs
    tta_flip: bool = False             # evaluate on image + mirror, averaged
    precision: str = "float32"         # "mixed_bfloat16" / "mixed_float16" for speed
    strategy: str | None = None        # None | "mirrored": tf.distribute.MirroredStrategy over all devices
    presets: dict = field(default_factory=dict)  # per-preset overrides of PRESETS
    study: dict = field(default_factory=dict)    # the study's reported numbers, for reports

    def settings(self, preset: str) -> dict:
        """The preset's fields with this trial's overrides applied."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}.")
        return {**PRESETS[preset], **self.presets.get(preset, {})}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _joint(name, description, **kw):
    base = dict(task="joint", model="joint_model", loss_weights={"reconstruction": 1.0, "label": 1.0},
                presets={"quick": {"epochs": 3}, "full": {"epochs": 100}})
    return Trial(name, description, **{**base, **kw})


V3_AUGMENTATION = {"policy": None, "flip": True, "translate": 4, "cutout": 8}


def _v3(name, description, **kw):
    """The stronger joint model: residual encoder, AdamW + one-cycle, label smoothing, recon-weight schedule."""
    base = dict(task="joint", model="resnet_joint", model_args={"width": 32}, optimizer="adamw",
                learning_rate=3e-3, weight_decay=5e-4, batch_size=256, lr_schedule="onecycle", warmup=0.25,
                label_smoothing=0.1, recon_weight=(1.0, 1.0), augmentation=V3_AUGMENTATION, tta_flip=True,
                precision="mixed_bfloat16",  # 1.37x faster on this AVX-512-BF16 CPU (measured); float32 is an ablation row
                loss_weights={"reconstruction": 1.0, "label": 1.0},
                presets={"quick": {"epochs": 8}, "full": {"epochs": 30}}, study={"test_accuracy": 0.86})
    return Trial(name, description, **{**base, **kw})


def _v3_features(name, description, **kw):
    """A classifier on the frozen v3-cnn-ae code, trained with v3's recipe (flip + translate, no smoothing)."""
    base = dict(task="classifier", model="resnet_feature_classifier", upstream="v3-cnn-ae", optimizer="adamw",
                learning_rate=3e-3, weight_decay=5e-4, batch_size=256, lr_schedule="onecycle", warmup=0.25,
                augmentation={**V3_AUGMENTATION, "cutout": 0}, tta_flip=True, precision="mixed_bfloat16",
                presets={"quick": {"epochs": 8}, "full": {"epochs": 30}}, study={"test_accuracy": 0.75})
    return Trial(name, description, **{**base, **kw})


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
          task="classifier", model="feature_classifier", upstream="v1-cnn-ae",
          presets={"quick": {"epochs": 5}, "full": {"epochs": 50}}, study={"test_accuracy": 0.75}),
    _joint("v2-joint-noaug", "Joint reconstruction + label training, no augmentation, Adam.",
           study={"test_accuracy": 0.75}),
    _joint("v2-joint-aug-adam", "Joint training with PIL augmentation, Adam, class weights.",
           augmentation=STUDY_AUGMENTATION, class_weight="inverse", study={"test_accuracy": 0.86}),
    _joint("v2-joint-aug-sgd", "Joint training with PIL augmentation, SGD, two Dense layers in the head.",
           model_args={"dense_units": (512, 256)}, augmentation=STUDY_AUGMENTATION, optimizer="sgd",
           learning_rate=0.01, study={"test_accuracy": 0.82}),
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
          lr_schedule="onecycle", precision="mixed_bfloat16",
          presets={"quick": {"epochs": 20}, "full": {"epochs": 50}}, study={"recon_mse": 0.0007}),
    _v3_features("v3-feature-classifier", "Residual head on the frozen v3-cnn-ae features, flip/translate/cutout.",
                 label_smoothing=0.1, augmentation=V3_AUGMENTATION),
    _v3_features("v3-feature-resnet", "The frozen v3-cnn-ae features rendered back to 32x32 by a learned linear "
                 "Conv2DTranspose, then resnet_joint's encoder and head; only the classifier trains.",
                 model_args={"render_channels": 16}),
    _v3_features("v3-feature-resnet-decoded", "v3-feature-resnet reading the frozen v3-cnn-ae code through the "
                 "frozen decoder (its reconstruction) instead of a learned render: only the classifier trains.",
                 feature_layer="reconstruction"),
]}


def get_trial(name: str, **overrides) -> Trial:
    """The named trial, optionally with fields replaced (e.g. ``model_args={"tie_weights": True}``)."""
    if name not in TRIALS:
        raise ValueError(f"unknown trial '{name}'; valid trials: {', '.join(TRIALS)}.")
    return dataclasses.replace(TRIALS[name], **overrides) if overrides else TRIALS[name]


# --------------------------------------------------------------------------- tuned trials
# `python -m cifar_ae tune` saves its best configuration as a trial in results/tuned_trials.json
# ($CIFAR_AE_TUNED_TRIALS overrides the path); those records join TRIALS here, so `train NAME` reruns them.
TUNED_TRIALS_FILE = Path(os.environ.get("CIFAR_AE_TUNED_TRIALS",
                                        Path(__file__).resolve().parent.parent / "results" / "tuned_trials.json"))
TUNED_NAMES: set = set()
_study_get_trial = get_trial


def load_tuned_trials(path=None) -> list:
    """Add the trials in a tuned-trials JSON to TRIALS (never replacing a study trial); returns their names."""
    path, names = Path(path or TUNED_TRIALS_FILE), {f.name for f in dataclasses.fields(Trial)}
    try:
        records = json.loads(path.read_text()).get("trials", []) if path.is_file() else []
        trials = [Trial(**{k: v for k, v in r.items() if k in names}) for r in records]
    except (OSError, ValueError, TypeError, AttributeError) as e:
        warnings.warn(f"{path}: tuned trials not loaded ({type(e).__name__}: {e})")
        return []
    added = [t.name for t in trials if t.name not in TRIALS or t.name in TUNED_NAMES]
    TRIALS.update({t.name: t for t in trials if t.name in added})
    TUNED_NAMES.update(added)
    return added


def get_trial(name: str, **overrides) -> Trial:  # noqa: F811 - the study's get_trial, plus tuned builders
    """The named trial, optionally with fields replaced (e.g. ``model_args={"tie_weights": True}``)."""
    trial = _study_get_trial(name, **overrides)
    if trial.model.startswith("tuned_"):  # builders of tuned trials live in cifar_ae.tuning (imports keras)
        from .tuning import register_builders
        register_builders()
    return trial


load_tuned_trials()
