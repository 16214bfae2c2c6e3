"""Figures for a run: training curves, reconstructions, confusion matrix, t-SNE of features, class counts.

Each function returns a matplotlib Figure (notebooks show it, `save` writes it), built on the Agg-safe
object API so nothing depends on a display.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from .atomic import write_atomic


def save(fig, path):
    """Save atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"), suffix=path.suffix)


# One panel per metric, in this order: (title, y label, log scale, how to find its history.csv column). A trial's
# task decides which exist: an autoencoder has MSE, a classifier loss + accuracy, a joint model all three.
CURVE_PANELS = (
    ("label loss (cross-entropy)", "loss", False,
     lambda h: "label_loss" if "label_loss" in h else ("loss" if "accuracy" in h else None)),
    ("reconstruction MSE", "MSE", True,
     lambda h: "reconstruction_mse" if "reconstruction_mse" in h else ("mse" if "mse" in h else None)),
    ("label accuracy", "accuracy", False,
     lambda h: "label_accuracy" if "label_accuracy" in h else ("accuracy" if "accuracy" in h else None)),
)


def _panels(history):
    """[(key, title, ylabel, log)] for the metrics this history has."""
    found = [(find(history), title, ylabel, log) for title, ylabel, log, find in CURVE_PANELS]
    found = [p for p in found if p[0] is not None]
    return found or ([("loss", "loss", "loss", False)] if "loss" in history else [])


def _epoch_axis(ax, n):
    from matplotlib.ticker import MaxNLocator
    ax.set_xlabel("epoch")
    if n <= 12:
        ax.set_xticks(range(1, n + 1))
        ax.set_xlim(0.5, n + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_curves(history: dict, title=None) -> Figure:
    """One panel per metric (label loss, reconstruction MSE, accuracy): train solid, validation dashed, same colour."""
    return compare_curves({"": history}, title=title)


def compare_curves(histories: dict, title=None) -> Figure:
    """Several runs' curves on shared panels: one colour per run, train solid and validation dashed.

    histories: {label: history dict (column -> values per epoch)}; a single run may use the label "".
    """
    from matplotlib.lines import Line2D
    labels = list(histories)
    panels = []
    for h in histories.values():
        for p in _panels(h):
            if p[0] not in [q[0] for q in panels]:
                panels.append(p)
    panels = panels or [("loss", "loss", "loss", False)]
    cols = min(2, len(panels))  # two panels a row stay legible at a notebook's width
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows + 0.7))
    for i, (key, ptitle, ylabel, log) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        n = 1
        for c, label in enumerate(labels):
            h = histories[label]
            if key not in h:
                continue
            epochs = np.arange(1, len(h[key]) + 1)
            n = max(n, len(epochs))
            ax.plot(epochs, h[key], color=f"C{c}", ls="-", marker="o", ms=3)
            if f"val_{key}" in h:
                ax.plot(epochs, h[f"val_{key}"], color=f"C{c}", ls="--", marker="o", ms=3, mfc="white")
        _epoch_axis(ax, n)
        ax.set_title(ptitle)
        ax.set_ylabel(ylabel)
        values = np.concatenate([np.asarray(h[k], float) for h in histories.values() for k in (key, f"val_{key}")
                                 if k in h])
        if log and values.size and values.min() > 0 and values.max() / values.min() > 10:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    # markers in the legend too: a one-epoch run (smoke) draws single points, not lines
    handles = [Line2D([], [], color="black", ls="-", marker="o", ms=4, label="train"),
               Line2D([], [], color="black", ls="--", marker="o", ms=4, mfc="white", label="validation")]
    handles += [Line2D([], [], color=f"C{c}", lw=3, label=label) for c, label in enumerate(labels) if label]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=10, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    legend_rows = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, (0.35 * legend_rows + 0.1) / fig.get_figheight(), 1, 1))
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



def accuracy_against_mse(rows, title=None, mse_bound=None) -> Figure:
    """The joint frontier from an experiment table's rows: validation accuracy against validation MSE (filled;
    what rows are chosen by) and test accuracy against test MSE (hollow), a point per row. A row that trains no
    decoder (the classifier alone: pixel_bypass None) is a dashed line; a pixel-bypass row is a red control point.
    mse_bound: the selection's MSE bound (a vertical line): rows to its right cannot be chosen."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    shown = []  # every accuracy drawn, for the y range (lines and hollow points included)
    for r in rows:
        acc = r.get("val_accuracy") if r.get("val_accuracy") is not None else r.get("test_accuracy")
        if acc is None:
            continue
        if r.get("pixel_bypass") is None:  # the kept (last) epoch's validation accuracy, as the points below
            val = r.get("val_accuracy_last") if r.get("val_accuracy_last") is not None else acc
            ax.axhline(100 * val, color="0.4", linestyle="--", label=f"{r['row']}: no reconstruction (val)")
            shown.append(val)
            if r.get("test_accuracy") is not None:
                ax.axhline(100 * r["test_accuracy"], color="0.4", linestyle=":",
                           label=f"{r['row']}: no reconstruction (test)")
                shown.append(r["test_accuracy"])
            continue
        if r.get("recon_mse") is None:
            continue
        colour = "tab:red" if r["pixel_bypass"] else "tab:blue"
        if r.get("val_recon_mse") is not None and r.get("val_accuracy_last") is not None:
            acc, mse = r["val_accuracy_last"], r["val_recon_mse"]  # the kept (last) epoch's model, both numbers
        else:
            mse = r["recon_mse"]
        ax.scatter([mse], [100 * acc], color=colour, zorder=3)
        shown.append(acc)
        if r.get("test_accuracy") is not None:
            ax.scatter([r["recon_mse"]], [100 * r["test_accuracy"]], facecolors="none", edgecolors=colour, zorder=3)
            shown.append(r["test_accuracy"])
        ax.annotate(r["row"] + (" (pixel bypass)" if r["pixel_bypass"] else ""), (mse, 100 * acc),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    if shown:
        low, high = 100 * min(shown), 100 * max(shown)
        pad = max(0.25, 0.1 * (high - low))
        ax.set_ylim(low - pad, high + pad)
    if mse_bound is not None:
        ax.axvline(mse_bound, color="tab:green", linestyle="-.", label=f"the marks' MSE bound ({mse_bound})")
    ax.set_xscale("log")
    ax.set_xlabel("reconstruction MSE (log): validation filled, test hollow")
    ax.set_ylabel("accuracy (%): validation filled, test hollow")
    ax.set_title(title or "accuracy against reconstruction quality")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    return fig
