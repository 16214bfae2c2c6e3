"""Test-set metrics: accuracy, balanced accuracy, per-class report, confusion matrix, reconstruction MSE/PSNR."""
from __future__ import annotations

import json
import math

import numpy as np
from sklearn import metrics as skm

from .atomic import write_atomic


def classification_metrics(y_true, y_prob, class_names) -> dict:
    """Scikit-learn metrics from softmax outputs; the confusion matrix as counts and row-normalised."""
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_prob).argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        cm_norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    return {
        "test_accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(class_names, precision, recall, f1, support)},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": np.round(cm_norm, 4).tolist(),
    }


def reconstruction_metrics(x_true, x_rec) -> dict:
    """Mean squared error on [0, 1] images and the PSNR of that mean error (dB, peak 1)."""
    x_true = np.asarray(x_true, np.float32)
    x_rec = np.asarray(x_rec, np.float32)
    if x_true.shape != x_rec.shape:
        raise ValueError(f"reconstruction shape {x_rec.shape} differs from input shape {x_true.shape}.")
    mse = float(np.mean((x_true - x_rec) ** 2))
    return {"recon_mse": mse, "recon_psnr": float(10 * math.log10(1.0 / mse)) if mse > 0 else float("inf")}


def split_outputs(outputs, task):
    """(reconstruction or None, label probabilities or None) from a model's predict() output."""
    if isinstance(outputs, dict):
        return outputs.get("reconstruction"), outputs.get("label")
    return (outputs, None) if task == "autoencoder" else (None, outputs)


def evaluate_outputs(task, x_test_unit, y_test, outputs, class_names) -> dict:
    recon, probs = split_outputs(outputs, task)
    result = {}
    if probs is not None:
        result.update(classification_metrics(y_test, probs, class_names))
    if recon is not None:
        result.update(reconstruction_metrics(x_test_unit, recon))
    return result


def write_text_atomic(path, text):
    """Write text via a temp file and rename, so a killed run never leaves half a file."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, tuple, set)):
        return list(o)
    return str(o)
