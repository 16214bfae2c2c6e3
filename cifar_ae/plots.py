"""Figures for a run: training curves, reconstructions, confusion matrix, t-SNE of features, class counts.

Each function returns a matplotlib Figure (notebooks show it, `save` writes it), built on the Agg-safe
object API so nothing depends on a display.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def save(fig, path):
    """Save atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def training_curves(history: dict) -> Figure:
    """Loss (and accuracy, where there is a classifier) per epoch, train vs validation."""
    keys = [k for k in history if not k.startswith("val_") and k not in ("epoch", "learning_rate", "lr")]
    acc = [k for k in keys if k.endswith("accuracy")]
    loss = [k for k in keys if k.endswith("loss") or k.endswith("mse")]
    panels = [p for p in (loss, acc) if p]
    fig = Figure(figsize=(5.5 * len(panels), 3.8))
    for i, group in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for k in group:
            epochs = np.arange(1, len(history[k]) + 1)
            line, = ax.plot(epochs, history[k], marker="o", ms=3, label=f"train {k}")
            if f"val_{k}" in history:
                ax.plot(epochs, history[f"val_{k}"], ls="--", color=line.get_color(), marker="o", ms=3, label=f"val {k}")
        ax.set_xlabel("epoch")
        ax.set_title("accuracy" if group is acc else "loss")
        values = np.concatenate([np.asarray(history[k], float) for k in group])
        if group is loss and values.min() > 0 and values.max() / values.min() > 10:  # log only for wide ranges
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def reconstruction_grid(originals, reconstructions, n=10) -> Figure:
    """Originals (top row) over their reconstructions (bottom row); images in [0, 1] or uint8."""
    n = min(n, len(originals))
    fig = Figure(figsize=(n * 1.1, 2.5))
    for row, imgs in enumerate((originals, reconstructions)):
        for i in range(n):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            img = np.asarray(imgs[i])
            ax.imshow(img if img.dtype == np.uint8 else np.clip(img, 0, 1))
            ax.set_axis_off()
    fig.suptitle("originals (top) and reconstructions (bottom)", fontsize=9)
    return fig


def confusion_matrix(cm, class_names, normalize=True) -> Figure:
    """Heatmap with class names; row-normalised (recall on the diagonal) unless `normalize` is false."""
    cm = np.asarray(cm, dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}", ha="center", va="center",
                    fontsize=7, color="white" if cm[i, j] > 0.5 * cm.max() else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def tsne(features, labels, class_names, seed=0) -> Figure:
    """2-D t-SNE (scikit-learn) of flattened encoder features, coloured by class."""
    from sklearn.manifold import TSNE
    feats = np.asarray(features, np.float32).reshape(len(features), -1)
    emb = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, max(5, len(feats) // 4))).fit_transform(feats)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    labels = np.asarray(labels).reshape(-1)
    for c, name in enumerate(class_names):
        m = labels == c
        ax.scatter(emb[m, 0], emb[m, 1], s=5, label=name, color=f"C{c}")
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(f"t-SNE of encoder features ({len(feats)} test images)")
    ax.set_axis_off()
    return fig


def class_distribution(y, class_names, title="training images per class") -> Figure:
    counts = np.bincount(np.asarray(y).reshape(-1), minlength=len(class_names))
    fig = Figure(figsize=(6.5, 3))
    ax = fig.add_subplot()
    ax.bar(class_names, counts, color=[f"C{i}" for i in range(len(class_names))])
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    for i, c in enumerate(counts):
        ax.text(i, c, str(c), ha="center", va="bottom", fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig
