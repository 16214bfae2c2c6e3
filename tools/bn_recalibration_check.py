"""Does a run's last partial batch spoil its final BatchNorm statistics? Score a kept run's model (flip + crop TTA,
logit-adjusted as its trial is), then recompute the moving statistics from full unaugmented training batches
(training-mode forward passes, no optimizer step) and score it again. A diagnostic, not a trick: a run's reported
numbers are its own metrics.json. It motivated Trial.drop_last.

    CIFAR10_DIR=../shared/cifar10 python tools/bn_recalibration_check.py RUN_FOLDER [--batches 20]
"""
import argparse
import json
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import balanced_accuracy_score

from cifar_ae import tricks as T
from cifar_ae.training import prepare_data, trial_from_config


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder with config.json and model.keras")
    ap.add_argument("--batches", type=int, default=20, help="full training batches to recompute the statistics on")
    args = ap.parse_args(argv)
    if not (args.run / "config.json").is_file() or not (args.run / "model.keras").is_file():
        ap.error(f"{args.run}: not a run folder with config.json and model.keras; pass one under runs/.")
    config = json.loads((args.run / "config.json").read_text())
    trial = trial_from_config(config)
    data = prepare_data(trial, config["settings"], config["seed"])
    model = keras.saving.load_model(args.run / "model.keras", safe_mode=True, compile=False)

    def score(tag):
        row = {}
        for split, x, y in (("test", data["x_test"], data["y_test"]), ("val_balanced", data["x_val"], data["y_val"])):
            if not len(y):
                continue
            out = T.predict_tta(model, x.astype(np.float32) / 255, flip=trial.tta_flip, crops=trial.tta_crops)
            pred = T.adjust_for_prior(out["label"], data["y_train"], trial.logit_adjustment).argmax(1)
            row[split] = round(float((pred == y).mean() if split == "test" else balanced_accuracy_score(y, pred)), 4)
        print(tag, row, flush=True)

    score("as saved:")
    rng = np.random.default_rng(0)
    batch = trial.batch_size
    for _ in range(args.batches):
        idx = rng.choice(len(data["y_train"]), batch, replace=False)
        model(data["x_train"][idx].astype(np.float32) / 255, training=True)
    score(f"statistics from {args.batches} full batches of {batch}:")


if __name__ == "__main__":
    main()
