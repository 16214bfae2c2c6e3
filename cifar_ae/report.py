"""Markdown table of every run folder's metrics, with the study's number beside ours."""
from __future__ import annotations

import json
from pathlib import Path

from .data import CLASS_NAMES


def collect_runs(root) -> list[dict]:
    """metrics.json + config.json of every complete run under `root`, sorted by trial, preset, seed."""
    runs = []
    for metrics_path in sorted(Path(root).glob("**/metrics.json")):
        run = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
        runs.append({"run": str(run), "metrics": metrics, "config": config})
    return sorted(runs, key=lambda r: (r["metrics"].get("trial", ""), r["metrics"].get("preset", ""), r["metrics"].get("seed", 0)))


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def markdown_table(runs) -> str:
    head = ["trial", "preset", "seed", "test acc", "study acc", "balanced acc", "recon MSE", "study MSE", "PSNR dB",
            "epochs", "train img/s", "wall s"] + [f"recall {c}" for c in CLASS_NAMES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m, study = r["metrics"], r["metrics"].get("study", {})
        recalls = [_fmt(m.get("per_class", {}).get(c, {}).get("recall"), ".2f") for c in CLASS_NAMES]
        row = [m.get("trial", "?"), m.get("preset", "?"), str(m.get("seed", "")),
               _fmt(m.get("test_accuracy"), ".4f"), _fmt(study.get("test_accuracy"), ".2f"),
               _fmt(m.get("balanced_accuracy"), ".4f"), _fmt(m.get("recon_mse"), ".5f"), _fmt(study.get("recon_mse"), ".4f"),
               _fmt(m.get("recon_psnr"), ".2f"), str(m.get("epochs", "")), _fmt(m.get("train_images_per_second"), ".0f"),
               _fmt(m.get("train_seconds_this_session"), ".0f")] + recalls
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
