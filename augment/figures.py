"""Figures of ops and policies on real images. Built on ``matplotlib.figure.Figure``, so no pyplot state and
any backend (Agg in scripts, inline in notebooks): ``fig.savefig(path)`` or display ``fig`` in a notebook."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .ops import OPS, apply_op
from .policies import apply_policy, get_policy

CELL_INCHES = 0.95  # CIFAR images are 32 px: small cells, still readable


def _grid(rows, cols, title):
    fig = Figure(figsize=(cols * CELL_INCHES + 0.9, rows * CELL_INCHES + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return fig, axes


def _show(ax, img):
    ax.imshow(np.asarray(img), interpolation="nearest")  # nearest: show the real 32x32 pixels, no smoothing


def plot_ops(images, magnitudes=(2, 6, 10), ops=None, seed=0) -> Figure:
    """Every op (rows) at each magnitude on each image (columns), under an 'original' row.

    Each cell uses a fresh ``default_rng(seed)``, so a signed op keeps the same sign across magnitudes.
    """
    ops = list(OPS) if ops is None else list(ops)
    columns = [(i, m) for i in range(len(images)) for m in magnitudes]
    fig, axes = _grid(len(ops) + 1, len(columns), "ops by magnitude level (0..10)")
    for col, (i, m) in enumerate(columns):
        _show(axes[0, col], images[i])
        axes[0, col].set_title(f"img {i}, m={m}", fontsize=7)
        for row, name in enumerate(ops, start=1):
            _show(axes[row, col], apply_op(images[i], name, m, np.random.default_rng(seed)))
    for row, name in enumerate(["original", *ops]):
        axes[row, 0].set_ylabel(name, fontsize=8)
    return fig


def plot_policy_samples(images, policy, n=8, seed=0) -> Figure:
    """Each image (rows): the original, then ``n`` independent samples of the policy."""
    name = policy if isinstance(policy, str) else "custom policy"
    policy = get_policy(policy)
    rng = np.random.default_rng(seed)
    fig, axes = _grid(len(images), n + 1, f"{name}: {n} samples per image (seed {seed})")
    for row, img in enumerate(images):
        _show(axes[row, 0], img)
        for col in range(1, n + 1):
            _show(axes[row, col], apply_policy(img, policy, rng))
    axes[0, 0].set_title("original", fontsize=8)
    for col in range(1, n + 1):
        axes[0, col].set_title(f"sample {col}", fontsize=8)
    return fig
