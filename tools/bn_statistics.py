"""Is a mid-run validation collapse the weights, or BatchNorm's running statistics?

For each epoch checkpoint of a run (``checkpoints/epoch-<n>.npz``, which a finished run deletes: copy them while it
trains), the validation accuracy three ways: inference mode (the running statistics, what Keras' validation
reports), BatchNorm on each validation batch's own statistics (train mode), and inference mode after the running
statistics are recomputed from 1,024 training images under that checkpoint's weights ("precise BN"). If the last
two agree and the first is far below, the weights are fine and the statistics lag.

    python tools/bn_statistics.py RUN_FOLDER CHECKPOINT.npz [CHECKPOINT.npz ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="the run folder (its config.json names the trial, preset and seed)")
    ap.add_argument("checkpoints", type=Path, nargs="+", help="epoch-<n>.npz files saved from that run")
    args = ap.parse_args(argv)
    for path in [args.run / "config.json", *args.checkpoints]:
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist; pass a run folder and checkpoint files copied from it.")
    import keras
    from cifar_ae import models as M, training as TR
    config = json.loads((args.run / "config.json").read_text())
    trial = TR.trial_from_config(config)
    if trial.scaling != "unit" or trial.task != "joint":
        raise SystemExit(f"error: {args.run} is a {trial.task} run with scaling={trial.scaling!r}; this diagnostic "
                         "reads joint models on unit-scaled images (the v4 trials).")
    data = TR.prepare_data(trial, config["settings"], config["seed"])
    x_val, y_val = data["x_val"].astype(np.float32) / 255, data["y_val"]
    pick = np.random.default_rng(0).choice(len(data["y_train"]), 1024, replace=False)
    x_stats = data["x_train"][pick].astype(np.float32) / 255

    def accuracy(model, training=False):
        if not training:
            return float((model.predict(x_val, batch_size=256, verbose=0)["label"].argmax(1) == y_val).mean())
        hits = [keras.ops.convert_to_numpy(model(x_val[i:i + 256], training=True)["label"]).argmax(1) == y_val[i:i + 256]
                for i in range(0, len(y_val), 256)]
        return float(np.concatenate(hits).mean())

    print("| checkpoint | inference mode | batch statistics | running statistics recomputed |")
    print("|---|---|---|---|")
    for ckpt in args.checkpoints:
        model = M.BUILDERS[trial.model](**trial.model_args)
        with np.load(ckpt, allow_pickle=False) as z:  # model variables first, then the optimizer's (cifar_ae.resume)
            arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
        for variable, array in zip(model.variables, arrays[:len(model.variables)]):
            variable.assign(array)
        inference, batch = accuracy(model), accuracy(model, training=True)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.0  # the next train-mode call replaces the running statistics outright
        model(x_stats, training=True)
        print(f"| {ckpt.name} | {inference:.2%} | {batch:.2%} | {accuracy(model):.2%} |", flush=True)


if __name__ == "__main__":
    main()
