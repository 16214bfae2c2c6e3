"""AUROC tables (Markdown) and the figures of the anomaly protocols: histograms, ROC curves, extremes, bars."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .. import data as D
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .scores import SCORES, auroc, roc

# One-class CIFAR-10 AUROC (%) of Deep SVDD (Ruff et al., ICML 2018, Table 1, one-class Deep SVDD).
DEEP_SVDD = dict(zip(D.CLASS_NAMES, (61.7, 65.9, 50.8, 59.1, 60.9, 65.7, 67.7, 67.3, 75.9, 73.1)))
DEEP_SVDD_MEAN = 64.8


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


def auroc_markdown(table: dict, units, reference: dict | None = None, reference_name="") -> str:
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
            ax.set_title("anomaly" if y[i] else "normal", fontsize=9, color="C3" if y[i] else "C2")
            ax.set_axis_off()
    fig.suptitle(f"{title}: most anomalous (top), least anomalous (bottom)", fontsize=11)
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
    cols = min(3, len(table))  # rows of three stay legible at a notebook's width
    rows = -(-len(table) // cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows + 0.6))
    for i, (score, row) in enumerate(table.items()):
        ax = fig.add_subplot(rows, cols, i + 1, sharey=fig.axes[0] if i else None)
        for j, c in enumerate(CORRUPTIONS):
            ax.plot(SEVERITIES, [row.get(f"{c}/s{s}", np.nan) for s in SEVERITIES], marker="o", ms=3,
                    color=f"C{j}", label=c)
        ax.axhline(50, ls=":", color="grey", lw=1)
        ax.set_title(score, fontsize=11)
        ax.set_xlabel("severity")
        ax.set_xticks(SEVERITIES)
        ax.grid(alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("AUROC %")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=10, frameon=False)
    fig.suptitle("AUROC, clean against corrupted test images, by severity", fontsize=12)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
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
