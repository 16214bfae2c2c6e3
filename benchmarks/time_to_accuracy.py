"""Time to accuracy: train a trial, score the full test set after every epoch, report when it crosses
80 / 85 / 86 / 90%, and measure in the same run its training throughput against the study's v2 joint model.

    CIFAR10_DIR=../shared/cifar10 python benchmarks/time_to_accuracy.py --trial v3-joint-resnet --preset quick
    (add --epochs N to cut a CPU run short; the JSON says what was run)

Writes results/time_to_accuracy.json (atomically) with the command, curve and thresholds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import keras

from cifar_ae import models as M
from cifar_ae.batches import ArrayBatches
from cifar_ae.evaluate import write_json_atomic
from cifar_ae.training import compile_model, run_trial
from cifar_ae.trials import get_trial

THRESHOLDS = (0.80, 0.85, 0.86, 0.90)


class TestEveryEpoch(keras.callbacks.Callback):
    """Scores the whole test set after each epoch (label accuracy and reconstruction MSE), with wall time."""

    def __init__(self, x_test, y_test, tta=False):
        super().__init__()
        self.x, self.y, self.tta = x_test.astype(np.float32) / 255.0, y_test, tta
        self.curve, self.t0, self.images = [], None, 0

    def on_train_begin(self, logs=None):
        if self.t0 is None:
            self.t0 = time.perf_counter()
            self.paused = 0.0

    def on_epoch_end(self, epoch, logs=None):
        start = time.perf_counter()
        out = self.model.predict(self.x, batch_size=512, verbose=0)
        probs = out["label"]
        if self.tta:
            probs = (probs + self.model.predict(self.x[:, :, ::-1], batch_size=512, verbose=0)["label"]) / 2
        acc = float(np.mean(probs.argmax(1) == self.y))
        mse = float(np.mean((out["reconstruction"] - self.x) ** 2))
        train_seconds = start - self.t0 - self.paused
        self.paused += time.perf_counter() - start  # scoring time is not training time
        self.curve.append({"epoch": epoch + 1, "test_accuracy": acc, "recon_mse": mse,
                           "train_seconds": round(train_seconds, 1)})
        print(f"  epoch {epoch + 1}: test accuracy {acc:.4f}  recon MSE {mse:.5f}", flush=True)


def throughput(trial_name, batch_size=128, images=2560, repeats=3, **overrides):
    """Training images/s of a trial's model (at its own precision) on random uint8 batches, same input path as run_trial."""
    trial = get_trial(trial_name, **overrides)
    keras.utils.set_random_seed(0)
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(trial.precision)
    try:
        model = compile_model(M.BUILDERS[trial.model](**trial.model_args), trial)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    rng = np.random.default_rng(0)
    ds = ArrayBatches(rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, images),
                      batch_size=batch_size, targets="joint")
    model.fit(ds, epochs=1, verbose=0)  # warm-up: tracing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0)
        times.append(time.perf_counter() - t0)
    return images / float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trial", default="v3-joint-resnet")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/time_to_accuracy")
    ap.add_argument("--output", default=None,
                    help="JSON result (default: <out>/<trial>-<preset>.json; results/... only when named here)")
    args = ap.parse_args()
    args.output = args.output or str(Path(args.out) / f"{args.trial}-{args.preset}.json")
    command = "python " + " ".join(sys.argv)

    from cifar_ae.data import load_cifar10
    d = load_cifar10()
    trial = get_trial(args.trial)
    scorer = TestEveryEpoch(d.x_test, d.y_test, tta=trial.tta_flip)
    t0 = time.perf_counter()
    run = run_trial(args.trial, args.preset, args.seed, args.out, epochs=args.epochs, force=True, verbose=2,
                    callbacks=[scorer])
    wall = time.perf_counter() - t0
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    train_images = config["train_images"]

    reached = {}
    for thr in THRESHOLDS:
        hit = next((p for p in scorer.curve if p["test_accuracy"] >= thr), None)
        reached[f"{int(thr * 100)}"] = None if hit is None else {
            "epochs": hit["epoch"], "images_seen": hit["epoch"] * train_images, "train_seconds": hit["train_seconds"]}

    print("measuring training throughput side by side ...", flush=True)
    tp_new = throughput(args.trial, batch_size=128)
    tp_v2 = throughput("v2-joint-noaug", batch_size=128)
    result = {
        "trial": args.trial, "preset": args.preset, "seed": args.seed, "epochs": len(scorer.curve),
        "train_images": train_images, "run_folder": str(run), "command": command,
        "epochs_to_80": reached["80"] and reached["80"]["epochs"],
        "epochs_to_85": reached["85"] and reached["85"]["epochs"],
        "epochs_to_86": reached["86"] and reached["86"]["epochs"],
        "epochs_to_90": reached["90"] and reached["90"]["epochs"],
        "thresholds": reached,
        "final_test_accuracy": metrics["test_accuracy"], "final_test_accuracy_without_tta": metrics.get("test_accuracy_without_tta"),
        "recon_mse": metrics["recon_mse"], "curve": scorer.curve, "wall_seconds": round(wall, 1),
        "throughput_images_per_s": round(tp_new, 1), "v2_throughput_images_per_s": round(tp_v2, 1),
        "throughput_ratio_vs_v2": round(tp_new / tp_v2, 3),
        "note": "throughputs measured one after the other in this process, batch 128, random data; "
                "final accuracy is the run's best-validation checkpoint on the full test set",
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "thresholds")}, indent=2))


if __name__ == "__main__":
    main()
