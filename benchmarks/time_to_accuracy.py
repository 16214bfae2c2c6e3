"""Time to accuracy, on a compute axis: train a trial, score the full test set after every epoch (for reporting
only: the kept checkpoint is chosen on the validation split), and report the epochs, images and training PFLOPs
to 80 / 85 / 86 / 90 / 93%, over one or more seeds.

    CIFAR10_DIR=../shared/cifar10 python benchmarks/time_to_accuracy.py --trial v3-joint-resnet-patch --preset quick \
        --seeds 0 1 2 --output results/time_to_accuracy_v3.json
    (--epochs N cuts a run short, as a variant; --pflops P sets the epochs from a compute budget;
    --keep results/runs/time_to_accuracy --commit keeps and commits each run as it finishes)

A seed already kept under --keep with the same run key is read from there, not trained again: the seeds of one
result can be trained in different sessions (`--seeds 0`, then later `--seeds 0 1 2`). A kept run made with
another key (another precision on another CPU, an edited trial) is trained again.

The per-epoch test scores go into each run's history.csv (test_accuracy, test_recon_mse), so a killed run resumes
and its curve stays whole. Compute is cifar_ae.compute's count (6 FLOPs per trainable multiply-add); speed is the
median epoch's, as a fraction of this machine's peak measured in the same process (benchmarks/peak_flops.py).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import keras

THRESHOLDS = (0.80, 0.85, 0.86, 0.90, 0.93)


class TestEveryEpoch(keras.callbacks.Callback):
    """Adds the full test set's label accuracy (flip TTA if the trial uses it) and reconstruction MSE to each
    epoch's logs, so they are recorded in history.csv."""

    def __init__(self, x_test, y_test, tta=False):
        super().__init__()
        self.x, self.y, self.tta = x_test.astype(np.float32) / 255.0, y_test, tta

    def on_epoch_end(self, epoch, logs=None):
        out = self.model.predict(self.x, batch_size=512, verbose=0)
        probs = out["label"]
        if self.tta:
            probs = (probs + self.model.predict(self.x[:, :, ::-1], batch_size=512, verbose=0)["label"]) / 2
        acc = float(np.mean(probs.argmax(1) == self.y))
        mse = float(np.mean((out["reconstruction"] - self.x) ** 2))
        if logs is not None:
            logs["test_accuracy"], logs["test_recon_mse"] = acc, mse
        print(f"  epoch {epoch + 1}: test accuracy {acc:.4f}  recon MSE {mse:.5f}", flush=True)


def curve(run) -> list[dict]:
    """Per epoch: test accuracy and MSE, cumulative training seconds, images and PFLOPs (from the run's files)."""
    config = json.loads((Path(run) / "config.json").read_text())
    with open(Path(run) / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n, flops, seconds, out = config["train_images"], config.get("train_flops_per_image"), 0.0, []
    for i, r in enumerate(rows):
        seconds += float(r.get("train_seconds") or 0)
        out.append({"epoch": i + 1, "test_accuracy": float(r["test_accuracy"]) if r.get("test_accuracy") else None,
                    "recon_mse": float(r["test_recon_mse"]) if r.get("test_recon_mse") else None,
                    "train_seconds": round(seconds, 1), "images_seen": n * (i + 1),
                    "pflops": None if flops is None else round(flops * n * (i + 1) / 1e15, 5)})
    return out


def reached(points, threshold):
    return next((p for p in points if p["test_accuracy"] is not None and p["test_accuracy"] >= threshold), None)


def summarize(per_seed) -> dict:
    """Mean and sd over seeds; a threshold's PFLOPs is null unless every seed reached it."""
    def mean_sd(vals):
        vals = [v for v in vals if v is not None]
        return (statistics.fmean(vals) if vals else None, statistics.stdev(vals) if len(vals) > 1 else None)
    out = {}
    for thr in THRESHOLDS:
        key = f"{int(round(thr * 100))}"
        hits = [s["thresholds"][key] for s in per_seed]
        for what, field in (("pflops", "pflops"), ("epochs", "epoch"), ("images_seen", "images_seen"),
                            ("train_seconds", "train_seconds")):
            out[f"{what}_to_{key}"] = None if any(h is None for h in hits) else mean_sd([h[field] for h in hits])[0]
    for key in ("final_test_accuracy", "final_test_accuracy_without_tta", "final_test_accuracy_without_logit_adjustment",
                "val_balanced_accuracy", "val_balanced_accuracy_without_logit_adjustment", "recon_mse", "train_pflops"):
        out[f"{key}_mean"], out[f"{key}_sd"] = mean_sd([s.get(key) for s in per_seed])
    return out


def kept_run(trial, preset, seed, keep_root, epochs, variant):
    """This seed's run, already finished and kept (its small files under --keep, e.g. from an earlier session whose
    runs/ is gone), or None. Only the very same run counts: its key (trial, settings, seed, data, precision)
    must match the one this command would train, so a run made with another precision or an edited trial is
    trained again, not reused."""
    if not keep_root:
        return None
    from cifar_ae import runs as R
    from cifar_ae.training import builder_defaults, plan_run
    plan = plan_run(trial, preset, seed, keep_root, epochs=epochs, variant=variant)
    if not (plan.folder / "metrics.json").is_file():
        return None
    try:
        R.check_same_run(plan.folder, plan.key_digest, R.read_config(plan.folder), plan.trial.model_args,
                         builder_defaults(plan.trial.model))
    except R.RunConflict as e:
        print(f"seed {seed}: the kept run is another run, so it is trained again ({e})", flush=True)
        return None
    return plan.folder


def main(argv=None):
    from cifar_ae import hardware as H
    from cifar_ae.data import load_cifar10
    from cifar_ae.evaluate import write_json_atomic
    from cifar_ae.training import run_trial, trial_flops
    from cifar_ae.trials import get_trial
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trial", default="v3-joint-resnet-patch")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=None, help="cut (or extend) the preset's epochs: a variant run")
    ap.add_argument("--pflops", type=float, default=None, help="a compute budget: the epochs that fit in it")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--peak-repeats", type=int, default=5, help="timed calls of the peak microbenchmark")
    ap.add_argument("--out", default="runs/time_to_accuracy")
    ap.add_argument("--output", default=None,
                    help="JSON result (default: <out>/<trial>-<preset>.json; results/... only when named here)")
    ap.add_argument("--keep", default=None, help="copy each run's small files here (e.g. results/runs/time_to_accuracy)")
    ap.add_argument("--commit", action="store_true", help="with --keep: commit each run, and the JSON, as they finish")
    args = ap.parse_args(argv)
    if args.commit and not args.keep:
        ap.error("--commit needs --keep DIR (the folder the small run files are copied to)")
    from cifar_ae.experiments import commit, keeper
    done = keeper(args.out, args.keep, args.commit, f"time to accuracy {args.trial}")
    trial = get_trial(args.trial)
    d = load_cifar10()
    epochs = args.epochs
    if args.pflops is not None:  # epochs = budget / (FLOPs per image x training images)
        from cifar_ae.training import prepare_data
        n = len(prepare_data(trial, trial.settings(args.preset), args.seeds[0])["y_train"])
        epochs = max(1, math.floor(args.pflops * 1e15 / (trial_flops(trial) * n)))
        print(f"{args.pflops} PFLOP budget: {epochs} epochs of {n} images", flush=True)
    variant = None if epochs is None else f"e{epochs}"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peak_flops
    peak = peak_flops.measure(repeats=args.peak_repeats)
    per_seed = []
    for seed in args.seeds:
        reused = kept_run(trial, args.preset, seed, args.keep, epochs, variant)
        if reused is not None:
            print(f"seed {seed}: reusing the kept run {reused} (delete it to train this seed again)", flush=True)
            run = kept_folder = reused
        else:
            run = run_trial(trial, args.preset, seed, args.out, epochs=epochs, variant=variant, verbose=2,
                            callbacks=[TestEveryEpoch(d.x_test, d.y_test, tta=trial.tta_flip)])
            done(run)
            kept_folder = Path(args.keep) / Path(run).relative_to(args.out) if args.keep else None
        m = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
        points = curve(run)
        speeds = [config["train_images"] / (b["train_seconds"] - a["train_seconds"]) for a, b in
                  zip([{"train_seconds": 0.0}] + points, points) if b["train_seconds"] > a["train_seconds"]]
        ips = statistics.median(speeds) if speeds else None
        precision = config.get("precision", "float32")
        ref = peak["kernels"].get("bfloat16" if "bfloat16" in precision else "float32", peak["kernels"]["float32"])
        here = config.get("machine") == H.describe()  # a reused seed may have run on another CPU than the peak's
        achieved = None if ips is None or not here else ips * config["train_flops_per_image"] / 1e9
        per_seed.append({
            "seed": seed, "run_folder": str(run),
            "kept_folder": None if kept_folder is None else str(kept_folder), "reused": reused is not None,
            "epochs": m["epochs"], "best_epoch": m.get("best_epoch"),
            "final_test_accuracy": m["test_accuracy"], "final_test_accuracy_without_tta": m.get("test_accuracy_without_tta"),
            # a logit-adjusted trial (cifar_ae.tricks.adjust_for_prior) also scores itself without the adjustment
            "final_test_accuracy_without_logit_adjustment": m.get("test_accuracy_without_logit_adjustment"),
            "val_balanced_accuracy": m.get("val_balanced_accuracy"),
            "val_balanced_accuracy_without_logit_adjustment": m.get("val_balanced_accuracy_without_logit_adjustment"),
            "recon_mse": m.get("recon_mse"), "train_pflops": m.get("train_pflops"), "curve": points,
            "thresholds": {f"{int(round(t * 100))}": reached(points, t) for t in THRESHOLDS},
            "images_per_second": None if ips is None else round(ips, 1), "precision": precision,
            "machine": config.get("machine"),
            "achieved_gflops": None if achieved is None else round(achieved, 1),
            "fraction_of_peak": None if achieved is None else round(achieved / ref["peak_gflops"], 3)})
    summary = summarize(per_seed)
    result = {"trial": args.trial, "preset": args.preset, "seeds": args.seeds, "epochs": epochs or trial.settings(args.preset)["epochs"],
              "train_images": json.loads((Path(per_seed[0]["run_folder"]) / "config.json").read_text())["train_images"],
              "train_gflops_per_image": round(trial_flops(trial) / 1e9, 4),
              "pflops_to_90": summary["pflops_to_90"], "pflops_to_93": summary["pflops_to_93"],
              "final_test_accuracy_mean": summary["final_test_accuracy_mean"],
              "final_test_accuracy_sd": summary["final_test_accuracy_sd"], "recon_mse": summary["recon_mse_mean"],
              "summary": summary, "per_seed": per_seed, "machine": H.describe(), "peak": peak,
              "curve": per_seed[0]["curve"], "command": "python " + " ".join(sys.argv),
              "note": "final accuracy: each run's best-validation checkpoint on the full test set; the per-epoch "
                      "test curve is for reporting only; PFLOPs: cifar_ae.compute, training FLOPs only"}
    output = Path(args.output or Path(args.out) / f"{args.trial}-{args.preset}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, result)
    if args.commit:
        commit([output], f"results: time to accuracy {args.trial} {args.preset}, seeds {args.seeds}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_seed", "curve", "summary", "peak", "machine")},
                     indent=2))


if __name__ == "__main__":
    main()
