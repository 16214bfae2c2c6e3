"""Anomaly scores under a trained autoencoder or joint model, and AUROC. Every score: higher = more anomalous.

Scores (`AnomalyScorer`):

====================  ======================================================================================
mse                   per-image reconstruction mean squared error (images in [0, 1])
ssim                  1 - SSIM(input, reconstruction) (tf.image.ssim's, in keras.ops): structure rather than brightness
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
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .. import data as D

SCORES = ("mse", "ssim", "mahalanobis", "mahalanobis_l2", "mahalanobis_stats_l2", "mse+mahalanobis", "max_softmax")
# Feature-space scores: (probe output, scale each vector to unit length first?)
FEATURE_SCORES = {"mahalanobis": ("features", False), "mahalanobis_l2": ("features", True),
                  "mahalanobis_stats_l2": ("stats", True)}

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
    """Per-image 1 - SSIM (cifar_ae.backend.ssim: tf.image.ssim's definition in keras.ops, any backend)."""
    from ..backend import ssim
    out = [1.0 - ssim(x[i:i + chunk], reconstruction[i:i + chunk], max_val=1.0) for i in range(0, len(x), chunk)]
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
        from ..inference import predict
        out = predict(self.probe, x_uint8.astype(np.float32) / 255.0, self.batch_size)
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
