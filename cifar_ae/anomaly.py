"""Anomaly detection with the study's autoencoders: scores, corrupted inputs, three protocols, AUROC tables.

An autoencoder trained on normal images reconstructs them well and maps them into a compact region of its
feature space; an input unlike its training data should do worse on both. Every score here is oriented the
same way: **higher = more anomalous**.

Scores (`AnomalyScorer`):

====================  ======================================================================================
mse                   per-image reconstruction mean squared error (images in [0, 1])
ssim                  1 - SSIM(input, reconstruction) (`tf.image.ssim`): structure rather than brightness
mahalanobis           squared Mahalanobis distance of the flattened `features` output to a Gaussian fitted
                      on the normal training images (Ledoit-Wolf shrinkage), as in Denouden et al. 2018
mahalanobis_l2        the same after scaling each image's feature vector to unit length: its direction, not
                      its size (an image's contrast scales every ReLU activation, so a smooth image of any
                      class has small features, close to the mean: it looks normal to the plain score)
mahalanobis_stats_l2  the same (unit length) on per-channel statistics (spatial mean and max) of every
                      encoder block's output: a translation-invariant, multi-scale summary of the image
mse+mahalanobis       Denouden et al.'s combination: mse and mahalanobis z-normalised on held-out *normal*
                      training images (the calibration split), then added
max_softmax           1 - max softmax probability (Hendrycks & Gimpel 2017), the baseline; only for models
                      with a `label` output
====================  ======================================================================================

With ``tta=True`` each score is the mean of the image's and its horizontal mirror's score.

Protocols (`run_protocol`), each writing runs/anomaly/<protocol>/<preset>-s<seed>/:

* ``one-class``: a conv autoencoder per class, trained on that class's training images only; the whole test
  set is scored, AUROC of the class (normal) against the other nine (anomalous).
* ``held-out``: the study's joint model trained on nine classes of the imbalanced set; the tenth is anomalous.
* ``corruptions``: a joint model trained on the imbalanced set; clean test images against the same images
  corrupted (`corrupt`) at severities 1-5.

Fitting uses only normal training images: no test image and no label of an anomalous class.

What the runs showed (quick preset; results/anomaly_one_class.md). Reconstruction error measures how *busy* an
image is more than how unfamiliar: it is below chance when the normal class is busy (automobile, truck), since
smoother images of any class reconstruct better. The plain feature Mahalanobis inherits part of that (a
low-contrast image has small activations, near the mean). Unit-length features remove the size, per-channel
block statistics also drop position, and that score, mahalanobis_stats_l2, has the best mean. The unit-length
variants were picked in a pilot on three classes (airplane, automobile, bird), by test AUROC, so the quick run's
mean for them is mildly optimistic. Ruff et al.'s global contrast normalisation (``contrast_normalize``) was
piloted on the same classes with the plain Mahalanobis: automobile 35 -> 56, bird 68 -> 50, airplane 69 -> 67.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from . import data as D
from .evaluate import write_json_atomic, write_text_atomic

PROTOCOLS = ("one-class", "held-out", "corruptions")
SCORES = ("mse", "ssim", "mahalanobis", "mahalanobis_l2", "mahalanobis_stats_l2", "mse+mahalanobis", "max_softmax")
# Feature-space scores: (probe output, scale each vector to unit length first?)
FEATURE_SCORES = {"mahalanobis": ("features", False), "mahalanobis_l2": ("features", True),
                  "mahalanobis_stats_l2": ("stats", True)}
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg", "pixelate")
SEVERITIES = (1, 2, 3, 4, 5)

# One-class CIFAR-10 AUROC (%) of Deep SVDD (Ruff et al., ICML 2018, Table 1, one-class Deep SVDD).
DEEP_SVDD = dict(zip(D.CLASS_NAMES, (61.7, 65.9, 50.8, 59.1, 60.9, 65.7, 67.7, 67.3, 75.9, 73.1)))
DEEP_SVDD_MEAN = 64.8

# Lengths per preset. smoke: seconds (tests, notebook check); quick: minutes on a 2-core CPU
# (one-class: 10 autoencoders of ~40 s each at ~2,400 img/s); full: longer, for a GPU.
PRESETS = {
    "smoke": dict(classes=("airplane", "automobile"), train_images=300, test_images=400, epochs=1,
                  heldout=("cat",), joint_train_images=600, joint_epochs=1, corruption_images=64),
    "quick": dict(classes=D.CLASS_NAMES, train_images=None, test_images=None, epochs=15,
                  heldout=("cat",), joint_train_images=None, joint_epochs=3, corruption_images=2000),
    "full": dict(classes=D.CLASS_NAMES, train_images=None, test_images=None, epochs=100,
                 heldout=D.CLASS_NAMES, joint_train_images=None, joint_epochs=30, corruption_images=None),
}
# Shared by all presets: the study's v1 conv autoencoder, trained and scored with mirror images.
# contrast_normalize: one-class inputs through ContrastNormalizer (Ruff et al.'s preprocessing) instead of the
# study's /255. Off: in a 3-class pilot it helped automobile and hurt bird about as much (module doc).
COMMON = dict(autoencoder={"filters": (32, 64)}, joint={}, batch_size=64, learning_rate=1e-3,
              flip=True, tta=True, feature_pool=2, calibration_fraction=0.1, contrast_normalize=False)

# Hendrycks & Dietterich 2019, make_cifar_c.py: the CIFAR-10-C parameter of each severity 1..5.
CORRUPTION_PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),   # noise std on [0, 1] images
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),         # blur std in pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),            # contrast factor about the image mean
    "jpeg": (80, 65, 58, 50, 40),                       # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),          # downscale factor before box upsampling
}


def settings_for(preset: str) -> dict:
    """A preset's fields merged with COMMON."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}.")
    return {**COMMON, **PRESETS[preset]}


# --------------------------------------------------------------------------- corruptions

def corrupt(x, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """CIFAR-10-C style corruption of uint8 images (N, 32, 32, 3) at severity 1..5 -> uint8, same shape."""
    x = D.check_images(x, "corrupt")
    if name not in CORRUPTION_PARAMS:
        raise ValueError(f"unknown corruption '{name}'; valid: {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}.")
    c = CORRUPTION_PARAMS[name][severity - 1]
    if name == "gaussian_noise":
        noise = np.random.default_rng(seed).normal(scale=c, size=x.shape)
        return _to_uint8(x / 255.0 + noise)
    if name == "contrast":
        unit = x / 255.0
        means = unit.mean(axis=(1, 2, 3), keepdims=True)
        return _to_uint8((unit - means) * c + means)
    return np.stack([_corrupt_pil(img, name, c) for img in x])


def _to_uint8(unit):
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def _corrupt_pil(img, name, c):
    """The Pillow corruptions, one image at a time."""
    import io
    from PIL import Image, ImageFilter
    im = Image.fromarray(img)
    if name == "gaussian_blur":
        im = im.filter(ImageFilter.GaussianBlur(radius=c))  # Pillow's radius is the kernel's std
    elif name == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(c))
        buf.seek(0)
        im = Image.open(buf).convert("RGB")
    elif name == "pixelate":
        side = int(32 * c)
        im = im.resize((side, side), Image.BOX).resize((32, 32), Image.BOX)
    return np.asarray(im, dtype=np.uint8)


# --------------------------------------------------------------------------- preprocessing

def global_contrast_normalize(x) -> np.ndarray:
    """Per image: subtract its mean, divide by its mean absolute deviation (L1 global contrast normalisation)."""
    x = D.check_images(x, "global_contrast_normalize").astype(np.float32)
    x -= x.mean(axis=(1, 2, 3), keepdims=True)
    return x / np.maximum(np.abs(x).mean(axis=(1, 2, 3), keepdims=True), 1e-3)


class ContrastNormalizer:
    """Ruff et al.'s one-class CIFAR-10 preprocessing, uint8 -> uint8: global contrast normalisation, then a
    rescale to [0, 255] with the 0.1 / 99.9 percentiles of the (normal) training images.

    Without it an image's brightness and contrast dominate every score: a smooth, low-contrast image of any
    class reconstructs well and has weak features, so it looks normal to a model of a busy class (automobile).
    """

    def fit(self, x_train, percentiles=(0.1, 99.9)):
        self.low, self.high = (float(v) for v in np.percentile(global_contrast_normalize(x_train), percentiles))
        return self

    def transform(self, x) -> np.ndarray:
        return _to_uint8((global_contrast_normalize(x) - self.low) / (self.high - self.low))


# --------------------------------------------------------------------------- scores

@dataclass
class Gaussian:
    """Mean and (shrunk) precision matrix of a feature distribution."""
    mean: np.ndarray
    precision: np.ndarray


def fit_gaussian(features) -> Gaussian:
    """Ledoit-Wolf Gaussian of (N, D) features: shrinkage keeps the precision finite when D ~ N.

    The precision comes from a Cholesky solve of the shrunk covariance (positive definite once shrunk), a
    fraction of the cost of LedoitWolf's pseudo-inverse: seconds instead of minutes at D = 4,096 on a CPU.
    """
    from scipy.linalg import cho_factor, cho_solve
    from sklearn.covariance import ledoit_wolf
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    if len(f) < 2 or not np.all(np.isfinite(f)):
        raise ValueError(f"fit_gaussian needs at least 2 finite feature vectors, got {len(f)}.")
    mean = f.mean(axis=0)
    cov, _ = ledoit_wolf(f - mean, assume_centered=True)
    cov[np.diag_indices_from(cov)] += 1e-9 * max(np.trace(cov) / len(cov), 1e-12)  # constant features
    precision = cho_solve(cho_factor(cov, lower=True), np.eye(len(cov)))
    return Gaussian(mean, precision)


def mahalanobis(features, gaussian: Gaussian) -> np.ndarray:
    """Squared Mahalanobis distance of each row to the Gaussian (BLAS, unlike scipy's row loop)."""
    z = np.asarray(features, np.float64).reshape(len(features), -1) - gaussian.mean
    return np.einsum("ij,ij->i", z @ gaussian.precision, z)


def reconstruction_mse(x, reconstruction) -> np.ndarray:
    """Per-image mean squared error; both in [0, 1]."""
    return np.mean((np.asarray(x, np.float32) - np.asarray(reconstruction, np.float32)) ** 2, axis=(1, 2, 3))


def ssim_distance(x, reconstruction, chunk: int = 2000) -> np.ndarray:
    """Per-image 1 - SSIM (tf.image.ssim, 11x11 Gaussian window, peak 1)."""
    import tensorflow as tf
    out = [1.0 - tf.image.ssim(tf.constant(x[i:i + chunk], tf.float32),
                               tf.constant(reconstruction[i:i + chunk], tf.float32), max_val=1.0).numpy()
           for i in range(0, len(x), chunk)]
    return np.concatenate(out).astype(np.float64)


def max_softmax_score(probabilities) -> np.ndarray:
    """1 - max class probability: a confident classifier gives a low score."""
    return 1.0 - np.max(np.asarray(probabilities, np.float64), axis=1)


def auroc(normal_scores, anomalous_scores) -> float:
    """Area under the ROC curve with anomalous as the positive class (scikit-learn); 0.5 = chance."""
    from sklearn.metrics import roc_auc_score
    y, s = _labelled(normal_scores, anomalous_scores)
    return float(roc_auc_score(y, s))


def roc(normal_scores, anomalous_scores):
    """(false positive rate, true positive rate) with anomalous as positive (scikit-learn's roc_curve)."""
    from sklearn.metrics import roc_curve
    y, s = _labelled(normal_scores, anomalous_scores)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def _labelled(normal_scores, anomalous_scores):
    normal = np.asarray(normal_scores, np.float64).reshape(-1)
    anomalous = np.asarray(anomalous_scores, np.float64).reshape(-1)
    if len(normal) == 0 or len(anomalous) == 0:
        raise ValueError("AUROC needs at least one normal and one anomalous score.")
    s = np.concatenate([normal, anomalous])
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity.")
    return np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], s


def _layer_or_none(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def block_outputs(model, feature_layer="features"):
    """Each encoder block's output (layers `enc<b>_pool`, then `feature_layer`) that is a 4-D feature map."""
    names = [l.name for l in model.layers if re.fullmatch(r"enc\d+_pool", l.name)] + [feature_layer]
    return [model.get_layer(n).output for n in names if len(model.get_layer(n).output.shape) == 4]


def probe_model(model, feature_layer="features", feature_pool=1):
    """A model with the outputs the scores need: reconstruction, features, stats, label (those that exist).

    `feature_pool` > 1 average-pools a 4-D feature map first, so the Gaussian has fewer dimensions
    (an (8, 8, 64) map pooled by 2 is 1,024 numbers instead of 4,096) and fits in seconds on a CPU.
    """
    import keras
    from keras import layers
    if _layer_or_none(model, feature_layer) is None:
        raise ValueError(f"model '{model.name}' has no layer '{feature_layer}'; Mahalanobis scores need the encoder's output.")
    outputs = {}
    for name in ("reconstruction", "label"):
        if _layer_or_none(model, name) is not None:
            outputs[name] = model.get_layer(name).output
    features = model.get_layer(feature_layer).output
    if len(features.shape) == 4 and feature_pool > 1:
        features = layers.AveragePooling2D(feature_pool, name="probe_pool")(features)
    outputs["features"] = layers.Flatten(name="probe_flatten")(features)
    blocks = block_outputs(model, feature_layer)
    if blocks:
        stats = [p(name=f"probe_{kind}{i}")(b) for i, b in enumerate(blocks)
                 for kind, p in (("mean", layers.GlobalAveragePooling2D), ("max", layers.GlobalMaxPooling2D))]
        outputs["stats"] = layers.Concatenate(name="probe_stats")(stats) if len(stats) > 1 else stats[0]
    return keras.Model(model.input, outputs, name="anomaly_probe")


class AnomalyScorer:
    """Anomaly scores of images under a trained autoencoder or joint model; higher = more anomalous.

        scorer = AnomalyScorer(model).fit(x_normal_train, x_normal_calibration)
        scores = scorer.score(x_test)          # {"mse": array, "ssim": array, ...}

    Images are uint8 (N, 32, 32, 3); the model sees them in [0, 1], as in training.
    """

    def __init__(self, model, feature_layer="features", feature_pool=1, tta=True, batch_size=256):
        self.probe = probe_model(model, feature_layer, feature_pool)
        self.outputs = set(self.probe.output)  # the probe's outputs are a dict keyed by name
        self.tta, self.batch_size = bool(tta), int(batch_size)
        self.gaussians, self.calibration = {}, {}

    @property
    def names(self):
        """The scores this model supports, in SCORES order."""
        have = self.outputs
        names = []
        if "reconstruction" in have:
            names += ["mse", "ssim"]
        names += [n for n, (key, _) in FEATURE_SCORES.items() if key in have]
        if "reconstruction" in have and self.calibration:
            names.append("mse+mahalanobis")
        if "label" in have:
            names.append("max_softmax")
        return names

    def fit(self, x_train, x_calibration=None):
        """Gaussians on the normal training images' features (and their mirrors, with tta);
        z-normalisation of the combined score on `x_calibration`, normal images the model did not train on."""
        x_train = D.check_images(x_train, "AnomalyScorer.fit")
        views = [x_train, x_train[:, :, ::-1]] if self.tta else [x_train]
        outs = [self._outputs(v) for v in views]
        self.gaussians = {name: fit_gaussian(np.concatenate([_unit_length(o[key], l2) for o in outs]))
                          for name, (key, l2) in FEATURE_SCORES.items() if key in outs[0]}
        self.calibration = {}
        if x_calibration is not None and len(x_calibration) >= 2 and "reconstruction" in outs[0]:
            raw = self._scores_of_views(D.check_images(x_calibration, "AnomalyScorer.fit calibration"))
            self.calibration = {k: (float(np.mean(raw[k])), float(np.std(raw[k]) + 1e-12))
                                for k in ("mse", "mahalanobis")}
        return self

    def score(self, x) -> dict:
        """{score name: (N,) array}, for every score in `names`."""
        if not self.gaussians:
            raise ValueError("AnomalyScorer.score called before fit().")
        scores = self._scores_of_views(D.check_images(x, "AnomalyScorer.score"))
        if self.calibration:
            (m1, s1), (m2, s2) = self.calibration["mse"], self.calibration["mahalanobis"]
            scores["mse+mahalanobis"] = (scores["mse"] - m1) / s1 + (scores["mahalanobis"] - m2) / s2
        return {k: scores[k] for k in self.names}

    def _outputs(self, x_uint8):
        out = self.probe.predict(x_uint8.astype(np.float32) / 255.0, batch_size=self.batch_size, verbose=0)
        return {k: np.asarray(v) for k, v in out.items()}

    def _scores_one_view(self, x_uint8):
        out, unit = self._outputs(x_uint8), x_uint8.astype(np.float32) / 255.0
        s = {name: mahalanobis(_unit_length(out[key], l2), self.gaussians[name])
             for name, (key, l2) in FEATURE_SCORES.items() if name in self.gaussians}
        if "reconstruction" in out:
            s["mse"] = reconstruction_mse(unit, out["reconstruction"])
            s["ssim"] = ssim_distance(unit, out["reconstruction"])
        if "label" in out:
            s["max_softmax"] = max_softmax_score(out["label"])
        return s

    def _scores_of_views(self, x_uint8):
        # mirror averaging: an image and its mirror are equally normal, so averaging their scores cuts noise
        views = [x_uint8, x_uint8[:, :, ::-1]] if self.tta else [x_uint8]
        per_view = [self._scores_one_view(np.ascontiguousarray(v)) for v in views]
        return {k: np.mean([p[k] for p in per_view], axis=0) for k in per_view[0]}


def _unit_length(features, scale=True):
    """Each row divided by its L2 norm (when `scale`); an all-zero row stays zero."""
    f = np.asarray(features, np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) if scale else f


# --------------------------------------------------------------------------- training

def random_flip(xb, rng):
    """Mirror a random half of a uint8 batch (ArrayBatches transform; module-level so workers can pickle it)."""
    xb = xb.copy()
    m = rng.random(len(xb)) < 0.5
    xb[m] = xb[m, :, ::-1]
    return xb


def train_autoencoder(x, epochs, batch_size=64, learning_rate=1e-3, flip=True, seed=0, model_args=None, verbose=0):
    """A conv autoencoder (cifar_ae.models.conv_autoencoder) trained with MSE on uint8 images `x`."""
    import keras
    from . import models as M
    from .batches import ArrayBatches
    D.check_images(x, "train_autoencoder")
    keras.utils.set_random_seed(seed)
    model = M.conv_autoencoder(**(model_args or {}))
    model.compile(keras.optimizers.Adam(learning_rate), loss="mse")
    batches = ArrayBatches(x, None, batch_size=batch_size, targets="reconstruction",
                           transform=random_flip if flip else None, seed=seed)
    model.fit(batches, epochs=int(epochs), verbose=verbose)
    return model


def train_joint(x, y, epochs, batch_size=64, learning_rate=1e-3, flip=True, seed=0, model_args=None, verbose=0):
    """The study's joint model (reconstruction + label), compiled as trial v2-joint-noaug, trained on `x, y`."""
    import keras
    from . import models as M
    from .batches import ArrayBatches
    from .training import compile_model
    from .trials import get_trial
    D.check_images(x, "train_joint")
    keras.utils.set_random_seed(seed)
    model = compile_model(M.joint_model(**(model_args or {})), get_trial("v2-joint-noaug", learning_rate=learning_rate))
    batches = ArrayBatches(x, y, batch_size=batch_size, targets="joint",
                           transform=random_flip if flip else None, seed=seed)
    model.fit(batches, epochs=int(epochs), verbose=verbose)
    return model


def split_calibration(x, fraction, seed, y=None):
    """(train part, calibration part) of normal training images: the calibration part is never trained on."""
    n_cal = int(round(len(x) * fraction))
    order = np.random.default_rng(seed).permutation(len(x))
    train, cal = np.sort(order[n_cal:]), np.sort(order[:n_cal])
    if y is None:
        return x[train], x[cal]
    return (x[train], y[train]), x[cal]


def _subsample(n_total, n, seed, y=None):
    """Indices of a seeded (stratified, when `y` is given) random `n` of `n_total`, or all when n is None."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    from sklearn.model_selection import train_test_split
    _, idx = train_test_split(np.arange(n_total), test_size=n, random_state=seed, stratify=y)
    return np.sort(idx)


# --------------------------------------------------------------------------- tables

def auroc_table(results: dict, units) -> dict:
    """{score: {unit: AUROC %, ..., "mean": %}} from {unit: {"scores": {...}, "is_anomalous": array}}."""
    names = [s for s in SCORES if all(s in results[u]["scores"] for u in units)]
    table = {}
    for s in names:
        row = {}
        for u in units:
            y = np.asarray(results[u]["is_anomalous"], bool)
            row[u] = round(100 * auroc(results[u]["scores"][s][~y], results[u]["scores"][s][y]), 2)
        row["mean"] = round(float(np.mean([row[u] for u in units])), 2)
        table[s] = row
    return table


def markdown_table(table: dict, units, reference: dict | None = None, reference_name="") -> str:
    """Rows = scores (and the reference), columns = units + mean; AUROC in percent, best per column in bold."""
    cols = list(units) + ["mean"]
    best = {c: max(row[c] for row in table.values()) for c in cols}
    lines = ["| score | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for s, row in table.items():
        cells = [f"**{row[c]:.1f}**" if row[c] == best[c] else f"{row[c]:.1f}" for c in cols]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if reference:
        lines.append(f"| {reference_name} | " + " | ".join(f"{reference[c]:.1f}" if c in reference else "" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _save_npz_atomic(path, **arrays):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- figures

def score_histograms(scores: dict, is_anomalous, title="", labels=("normal", "anomalous")) -> Figure:
    """One panel per score: normal vs anomalous histograms on shared bins (1st-99th percentile range)."""
    y = np.asarray(is_anomalous, bool)
    cols = min(3, len(scores))
    rows = -(-len(scores) // cols)
    fig = Figure(figsize=(3.4 * cols, 2.6 * rows))
    for i, (name, s) in enumerate(scores.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        lo, hi = np.percentile(s, [1, 99])
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-9, 40)
        for mask, label, color in ((~y, labels[0], "C0"), (y, labels[1], "C3")):
            ax.hist(np.clip(s[mask], lo, hi), bins=bins, density=True, alpha=0.55, color=color, label=label)
        ax.set_title(f"{name}  AUROC {100 * auroc(s[~y], s[y]):.1f}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def roc_curves(scores: dict, is_anomalous, title="") -> Figure:
    """ROC curve of every score on one axes, AUROC in the legend."""
    y = np.asarray(is_anomalous, bool)
    fig = Figure(figsize=(4.2, 4))
    ax = fig.add_subplot()
    for name, s in scores.items():
        fpr, tpr = roc(s[~y], s[y])
        ax.plot(fpr, tpr, lw=1.3, label=f"{name} ({100 * auroc(s[~y], s[y]):.1f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set_xlabel("false positive rate (normal flagged)")
    ax.set_ylabel("true positive rate (anomalies flagged)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def extremes_grid(images, score, is_anomalous, k=10, title="") -> Figure:
    """The `k` most anomalous (top row) and least anomalous (bottom row) images; red title = truly anomalous."""
    y = np.asarray(is_anomalous, bool)
    order = np.argsort(score, kind="stable")
    k = min(k, len(order) // 2)
    rows = (("most anomalous", order[::-1][:k]), ("least anomalous", order[:k]))
    fig = Figure(figsize=(1.1 * k, 2.9))
    for r, (_, idx) in enumerate(rows):
        for j, i in enumerate(idx):
            ax = fig.add_subplot(2, k, r * k + j + 1)
            ax.imshow(images[i])
            ax.set_title("anom" if y[i] else "normal", fontsize=6, color="C3" if y[i] else "C2")
            ax.set_axis_off()
    fig.suptitle(f"{title}: most anomalous (top), least anomalous (bottom)", fontsize=9)
    fig.tight_layout()
    return fig


def auroc_bars(table: dict, units, reference: dict | None = None, reference_name="") -> Figure:
    """Grouped bars: AUROC per unit for every score (and the reference), with the chance line."""
    rows = dict(table)
    if reference:
        rows[reference_name] = reference
    cols = list(units) + ["mean"]
    fig = Figure(figsize=(max(6, 0.9 * len(cols) + 1.5), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    for i, (name, row) in enumerate(rows.items()):
        ax.bar(np.arange(len(cols)) + (i - (len(rows) - 1) / 2) * width, [row.get(c, np.nan) for c in cols],
               width, label=name, color="black" if name == reference_name else f"C{i}")
    ax.axhline(50, ls=":", color="grey", lw=1)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_ylabel("AUROC %")
    lowest = min(v for row in rows.values() for v in row.values())
    ax.set_ylim(min(30, 10 * np.floor(lowest / 10)), 100)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def severity_curves(table: dict) -> Figure:
    """Corruptions protocol: AUROC against severity, one panel per score, one line per corruption."""
    fig = Figure(figsize=(3.2 * len(table), 3))
    for i, (score, row) in enumerate(table.items()):
        ax = fig.add_subplot(1, len(table), i + 1, sharey=fig.axes[0] if i else None)
        for j, c in enumerate(CORRUPTIONS):
            ax.plot(SEVERITIES, [row.get(f"{c}/s{s}", np.nan) for s in SEVERITIES], marker="o", ms=3,
                    color=f"C{j}", label=c)
        ax.axhline(50, ls=":", color="grey", lw=1)
        ax.set_title(score, fontsize=9)
        ax.set_xlabel("severity")
        ax.set_xticks(SEVERITIES)
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel("AUROC % (clean vs corrupted)")
    fig.axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def corruption_examples(image, seed=0) -> Figure:
    """One uint8 image under every corruption (rows) at every severity (columns)."""
    fig = Figure(figsize=(1.1 * (len(SEVERITIES) + 1), 1.2 * len(CORRUPTIONS)))
    for r, name in enumerate(CORRUPTIONS):
        row = [image] + [corrupt(image[None], name, s, seed)[0] for s in SEVERITIES]
        for j, img in enumerate(row):
            ax = fig.add_subplot(len(CORRUPTIONS), len(row), r * len(row) + j + 1)
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=6)
            if r == 0:
                ax.set_title("clean" if j == 0 else f"severity {j}", fontsize=6)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- protocols

def run_dir_for(protocol, preset, seed, out_dir=None) -> Path:
    from .training import DEFAULT_OUT
    return Path(out_dir or DEFAULT_OUT) / "anomaly" / protocol / f"{preset}-s{seed}"


def run_protocol(protocol, preset="quick", seed=0, out_dir=None, source=None, command=None, verbose=0) -> Path:
    """Run one protocol into its run folder (config.json, auroc.json, auroc.md, figures/) and return the folder.

    Per-unit scores are cached in scores/ so a killed run resumes; a run whose settings changed starts over.
    """
    from .training import versions
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; valid protocols: {', '.join(PROTOCOLS)}.")
    settings = settings_for(preset)
    run = run_dir_for(protocol, preset, seed, out_dir)
    _reset_if_changed(run, settings)
    run.mkdir(parents=True, exist_ok=True)
    d = D.load_cifar10(source)
    command = command or f"cifar_ae.anomaly.run_protocol({protocol!r}, preset={preset!r}, seed={seed})"
    config = {"protocol": protocol, "preset": preset, "seed": seed, "settings": settings, "scores": list(SCORES),
              "command": command, "cwd": os.getcwd(), "data_source": d.source, "versions": versions(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(run / "config.json", config)
    t0 = time.perf_counter()
    runner = {"one-class": _one_class, "held-out": _held_out, "corruptions": _corruptions}[protocol]
    result = runner(d, settings, seed, run, verbose)
    result.update({"protocol": protocol, "preset": preset, "seed": seed, "command": command,
                   "seconds": round(time.perf_counter() - t0, 1),
                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_json_atomic(run / "auroc.json", result)  # written last: its presence marks a complete run
    return run


def _reset_if_changed(run, settings):
    """Delete a run folder made with other settings or another set of scores: its cached scores would mislead."""
    import json
    import shutil
    cfg = run / "config.json"
    if not cfg.is_file():
        return
    old = json.loads(cfg.read_text())
    if old.get("settings") != json.loads(json.dumps(settings)) or old.get("scores", list(SCORES)) != list(SCORES):
        shutil.rmtree(run)


def _cached_unit(path, compute):
    """Load a unit's scores from `path`, or compute ({"scores": {...}, "is_anomalous": ..., ...}) and save."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {"scores": {k[6:]: z[k] for k in z.files if k.startswith("score_")},
                    "is_anomalous": z["is_anomalous"], "index": z["index"], "seconds": float(z["seconds"])}
    t0 = time.perf_counter()
    unit = compute()
    unit["seconds"] = time.perf_counter() - t0
    _save_npz_atomic(path, is_anomalous=unit["is_anomalous"], index=unit["index"], seconds=unit["seconds"],
                     **{f"score_{k}": v for k, v in unit["scores"].items()})
    return unit


def _log(msg):
    print(f"[anomaly] {msg}", flush=True)


def _unit_figures(figs, name, images, unit, title):
    s, y = unit["scores"], unit["is_anomalous"]
    from .plots import save
    save(score_histograms(s, y, title), figs / f"{name}_histograms.png")
    save(roc_curves(s, y, title), figs / f"{name}_roc.png")
    best = max(s, key=lambda k: auroc(s[k][~y], s[k][y]))
    save(extremes_grid(images, s[best], y, title=f"{title}, {best}"), figs / f"{name}_extremes.png")


def _units_and_test(d, st, key, seed):
    """The class names a protocol loops over (settings[key]) and its stratified test subsample."""
    units = [D.CLASS_NAMES[D.class_index(c)] for c in st[key]]
    test_idx = _subsample(len(d.y_test), st["test_images"], seed, d.y_test)
    return units, test_idx, d.x_test[test_idx], d.y_test[test_idx]


def _one_class(d, st, seed, run, verbose):
    """Train on one class, score the test set; AUROC of that class against the rest, for each class."""
    from .plots import save
    units, test_idx, x_test, y_test = _units_and_test(d, st, "classes", seed)
    results = {}
    for u in units:
        c = D.class_index(u)

        def compute(c=c):
            x_c = d.x_train[d.y_train == c]  # only this class's training images, nothing else
            x_c = x_c[_subsample(len(x_c), st["train_images"], seed)]
            x_fit, x_cal = split_calibration(x_c, st["calibration_fraction"], seed)
            prep = ContrastNormalizer().fit(x_fit).transform if st["contrast_normalize"] else (lambda x: x)
            x_fit = prep(x_fit)
            model = train_autoencoder(x_fit, st["epochs"], st["batch_size"], st["learning_rate"], st["flip"], seed,
                                      st["autoencoder"], verbose)
            scorer = AnomalyScorer(model, feature_pool=st["feature_pool"], tta=st["tta"]).fit(x_fit, prep(x_cal))
            return {"scores": scorer.score(prep(x_test)), "is_anomalous": y_test != c, "index": test_idx}

        results[u] = _cached_unit(run / "scores" / f"{u}.npz", compute)
        s, y = results[u]["scores"], results[u]["is_anomalous"]
        _log(f"one-class {u}: " + " ".join(f"{k} {100 * auroc(v[~y], v[y]):.1f}" for k, v in s.items())
             + f" ({results[u]['seconds']:.0f} s)")
        _unit_figures(run / "figures", u, x_test, results[u], f"normal = {u}")
    table = auroc_table(results, units)
    reference = {**{u: DEEP_SVDD[u] for u in units}, "mean": DEEP_SVDD_MEAN}
    save(auroc_bars(table, units, reference, "Deep SVDD"), run / "figures" / "auroc_per_class.png")
    md = markdown_table(table, units, reference, "Deep SVDD (Ruff et al. 2018)")
    return _finish(run, table, units, md, st, reference={"deep_svdd": reference}, protocol="one-class")


def _held_out(d, st, seed, run, verbose):
    """Joint model on nine classes of the imbalanced set; the tenth class is the anomaly."""
    from .plots import save
    x_all, y_all, _ = D.make_imbalanced(d.x_train, d.y_train, d.train_files)
    units, test_idx, x_test, y_test = _units_and_test(d, st, "heldout", seed)
    results = {}
    for u in units:
        c = D.class_index(u)

        def compute(c=c):
            keep = y_all != c  # the held-out class never reaches training, fitting or calibration
            x, y = x_all[keep], y_all[keep]
            idx = _subsample(len(y), st["joint_train_images"], seed, y)
            (x_fit, y_fit), x_cal = split_calibration(x[idx], st["calibration_fraction"], seed, y[idx])
            model = train_joint(x_fit, y_fit, st["joint_epochs"], st["batch_size"], st["learning_rate"], st["flip"],
                                seed, st["joint"], verbose)
            scorer = AnomalyScorer(model, feature_pool=st["feature_pool"], tta=st["tta"]).fit(x_fit, x_cal)
            return {"scores": scorer.score(x_test), "is_anomalous": y_test == c, "index": test_idx}

        results[u] = _cached_unit(run / "scores" / f"{u}.npz", compute)
        s, y = results[u]["scores"], results[u]["is_anomalous"]
        _log(f"held-out {u}: " + " ".join(f"{k} {100 * auroc(v[~y], v[y]):.1f}" for k, v in s.items()))
        _unit_figures(run / "figures", u, x_test, results[u], f"anomaly = held-out {u}")
    table = auroc_table(results, units)
    save(auroc_bars(table, units), run / "figures" / "auroc_per_class.png")
    return _finish(run, table, units, markdown_table(table, units), st, protocol="held-out")


def _corruptions(d, st, seed, run, verbose):
    """Joint model on the imbalanced set; clean test images against corrupted copies, per corruption and severity."""
    from .plots import save
    x_all, y_all, _ = D.make_imbalanced(d.x_train, d.y_train, d.train_files)
    idx = _subsample(len(y_all), st["joint_train_images"], seed, y_all)
    test_idx = _subsample(len(d.y_test), st["corruption_images"], seed, d.y_test)
    x_clean = d.x_test[test_idx]
    units = [f"{c}/s{s}" for c in CORRUPTIONS for s in SEVERITIES]
    cache = run / "scores"
    scorer = None
    if not all((cache / f"{u.replace('/', '_')}.npz").is_file() for u in units):
        (x_fit, y_fit), x_cal = split_calibration(x_all[idx], st["calibration_fraction"], seed, y_all[idx])
        model = train_joint(x_fit, y_fit, st["joint_epochs"], st["batch_size"], st["learning_rate"], st["flip"],
                            seed, st["joint"], verbose)
        scorer = AnomalyScorer(model, feature_pool=st["feature_pool"], tta=st["tta"]).fit(x_fit, x_cal)
        clean_scores = scorer.score(x_clean)
    results = {}
    for u in units:
        name, sev = u.split("/s")

        def compute(name=name, sev=int(sev)):
            bad = scorer.score(corrupt(x_clean, name, sev, seed))
            return {"scores": {k: np.concatenate([clean_scores[k], bad[k]]) for k in bad},
                    "is_anomalous": np.r_[np.zeros(len(x_clean), bool), np.ones(len(x_clean), bool)],
                    "index": np.r_[test_idx, test_idx]}

        results[u] = _cached_unit(cache / f"{u.replace('/', '_')}.npz", compute)
        s, y = results[u]["scores"], results[u]["is_anomalous"]
        _log(f"corruptions {u}: " + " ".join(f"{k} {100 * auroc(v[~y], v[y]):.1f}" for k, v in s.items()))
    figs = run / "figures"
    for name in CORRUPTIONS:  # figures at the middle severity; the table has all five
        u = f"{name}/s3"
        images = np.concatenate([x_clean, corrupt(x_clean, name, 3, seed)])
        _unit_figures(figs, f"{name}_s3", images, results[u], f"clean vs {name}, severity 3")
    save(corruption_examples(x_clean[0], seed), figs / "corruption_examples.png")
    table = auroc_table(results, units)
    save(severity_curves(table), figs / "auroc_by_severity.png")
    return _finish(run, table, units, corruption_markdown(table), st, protocol="corruptions")


def corruption_markdown(table: dict) -> str:
    """One table per score: corruptions (rows) by severities (columns) and their mean."""
    parts = []
    for score, row in table.items():
        lines = [f"**{score}** (mean over all {len(row) - 1}: {row['mean']:.1f})", "",
                 "| corruption | " + " | ".join(f"s{s}" for s in SEVERITIES) + " | mean |",
                 "|---|" + "---:|" * (len(SEVERITIES) + 1)]
        for c in CORRUPTIONS:
            vals = [row[f"{c}/s{s}"] for s in SEVERITIES]
            lines.append(f"| {c} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {np.mean(vals):.1f} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _finish(run, table, units, md, st, protocol, reference=None):
    """AUROC table as markdown (auroc.md) and the result dict that run_protocol writes as auroc.json."""
    import json
    cfg = json.loads((run / "config.json").read_text())
    best = max(table, key=lambda s: table[s]["mean"])
    header = (f"# Anomaly detection, {protocol} protocol (AUROC %, higher is better; 50 = chance)\n\n"
              f"Generated by `{cfg['command']}` (preset `{cfg['preset']}`, seed {cfg['seed']}). "
              f"Best mean: **{best}** {table[best]['mean']:.1f}.\n\n")
    write_text_atomic(run / "auroc.md", header + md)
    return {"units": list(units), "scores": list(table), "auroc": table, "best": {"score": best, "mean": table[best]["mean"]},
            "reference": reference or {}, "settings": st}


def load_result(run) -> dict:
    """auroc.json of a finished run folder."""
    import json
    path = Path(run) / "auroc.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no finished anomaly run here; run `python -m cifar_ae anomaly` first.")
    return json.loads(path.read_text())


def cli_command() -> str:
    """How this process was started, for config.json (see cifar_ae.runinfo)."""
    from .runinfo import command_line
    return command_line()
