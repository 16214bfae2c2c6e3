"""The v3 ablation as data: each row is a set of Trial field changes against v3-joint-resnet, and its table is
built only from run folders (benchmarks/ablation.py runs the rows; the v3 notebook reads the table).
"""
from __future__ import annotations

import json
from pathlib import Path

V3_AUGMENTATION = {"policy": None, "flip": True, "translate": 4, "cutout": 8}

# row -> (what changes, Trial field overrides); "baseline" is the trial as defined in cifar_ae/trials.py
ABLATIONS = {
    "baseline": ("v3-joint-resnet as defined", {}),
    "no-onecycle": ("constant LR 3e-3 + ReduceLROnPlateau instead of one-cycle", {"lr_schedule": None}),
    "no-label-smoothing": ("label smoothing 0.1 -> 0", {"label_smoothing": 0.0}),
    "no-cutout": ("cutout 8 px -> off (flip + translate stay)", {"augmentation": {**V3_AUGMENTATION, "cutout": 0}}),
    "no-augmentation": ("no flip, translate or cutout", {"augmentation": None}),
    "no-recon-loss": ("reconstruction loss weight 0: a plain classifier with an idle decoder",
                      {"loss_weights": {"reconstruction": 0.0, "label": 1.0}, "recon_weight": None}),
    "recon-weight-10": ("reconstruction weight 10 instead of 1, constant", {"recon_weight": (10.0, 10.0)}),
    "recon-schedule": ("reconstruction weight scheduled 10 -> 1 over the epochs", {"recon_weight": (10.0, 1.0)}),
    "float32": ("float32 instead of precision='auto' (bf16 where the hardware has it)", {"precision": "float32"}),
    "bn-momentum-0.99": ("BatchNorm momentum 0.99 (Keras' default) instead of 0.9",
                         {"model_args": {"width": 32, "bn_momentum": 0.99}}),
    "growing-batch": ("batch size grows 128 -> 256 -> 512 over the epochs (off in the baseline)",
                      {"batch_sizes": (128, 256, 512)}),
}


def find_runs(root, trial, preset, seed):
    """row -> run folder, for every row with a complete run under root/<row>/."""
    found = {}
    for row in ABLATIONS:
        for name in (f"{preset}-s{seed}-{row}", f"{preset}-s{seed}"):  # the second: folders from before run keys
            run = Path(root) / row / trial / name
            if (run / "metrics.json").is_file():
                found[row] = run
                break
    return found


def table(runs: dict) -> tuple[str, list]:
    """Markdown table and records, with each row's change in test accuracy against the baseline."""
    records = []
    for row, run in runs.items():
        m = json.loads((run / "metrics.json").read_text())
        records.append({"row": row, "change": ABLATIONS[row][0], "run": str(run), "epochs": m.get("epochs"),
                        "test_accuracy": m["test_accuracy"], "test_accuracy_without_tta": m.get("test_accuracy_without_tta"),
                        "recon_mse": m.get("recon_mse"), "train_images_per_second": m.get("train_images_per_second")})
    base = next((r for r in records if r["row"] == "baseline"), None)
    if base and base["test_accuracy_without_tta"] is not None:  # TTA is evaluation only: the baseline run scores both
        records.insert(1, {**base, "row": "no-tta", "change": "no flip test-time augmentation (baseline run, scored once)",
                           "test_accuracy": base["test_accuracy_without_tta"]})
    lines = ["| row | change | test acc | vs baseline | recon MSE | train img/s | epochs |", "|---|---|---|---|---|---|---|"]
    for r in records:
        delta = "" if base is None or r["row"] == "baseline" else f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f} pt"
        speed = "" if r["train_images_per_second"] is None else f"{r['train_images_per_second']:.0f}"
        mse = "" if r["recon_mse"] is None else f"{r['recon_mse']:.5f}"
        lines.append(f"| {r['row']} | {r['change']} | {100 * r['test_accuracy']:.2f}% | {delta} | {mse} | {speed} | {r['epochs']} |")
    return "\n".join(lines) + "\n", records
