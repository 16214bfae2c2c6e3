"""Training throughput of the v2 and v3 joint models, fed three ways, at float32 and bfloat16, in one process.

    CIFAR10_DIR=../shared/cifar10 python benchmarks/train_throughput.py --output results/train_throughput.json

Feeds, measured round-robin (so drift hits all alike), median over `--repeats` rounds of `--steps` steps:
- memory: tf.data.Dataset.from_tensor_slices of pre-scaled float32 arrays, no augmentation (the reference);
- pipeline: the trainer's own input (cifar_ae.training._batches) without augmentation;
- pipeline+aug: the same with the trial's augmentation (v2: the study's PIL policy + flip + translate).
Per feed: images/s, user and sys CPU ms per image, minor page faults per second, and the achieved GFLOP/s as a
fraction of this machine's measured peak (benchmarks/peak_flops.py, run first in the same process).
`--allocation` instead runs the v2 pipeline+aug feed in child processes with glibc's defaults and with
cifar_ae.memory's settings (malloc and thread pools), one after the other: the before/after of that fix.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
MODELS = {"v2": "v2-joint-aug-adam", "v3": "v3-joint-resnet-patch"}
FEEDS = ("memory", "pipeline", "pipeline+aug")


class StepClock:
    """Wall, CPU and page-fault readings at every train batch end."""

    def __init__(self):
        import keras

        class CB(keras.callbacks.Callback):
            def on_train_batch_end(cb, batch, logs=None):
                self.marks.append((time.perf_counter(), os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt))
        self.callback, self.marks = CB(), []


def feed(kind, trial, data, steps):
    import numpy as np
    import tensorflow as tf
    from cifar_ae import training as TR
    if kind == "memory":
        x = data["x_train"].astype(np.float32) / 255.0
        ds = tf.data.Dataset.from_tensor_slices((x, {"reconstruction": x, "label": data["y_train"]}))
        return ds.batch(trial.batch_size, drop_remainder=True).repeat().prefetch(2)
    t = trial if kind == "pipeline+aug" else trial.replace(augmentation=None, class_weight=None)
    return TR._batches(t, data, t.settings("quick"), 0, train=True)


def measure_once(model, ds, steps, batch_size, warmup=3):
    clock = StepClock()
    model.fit(ds, epochs=1, steps_per_epoch=steps + warmup, verbose=0, callbacks=[clock.callback], shuffle=False)
    (t0, c0, f0), (t1, c1, f1) = clock.marks[warmup - 1], clock.marks[-1]
    n = (len(clock.marks) - warmup) * batch_size
    return {"images_per_second": n / (t1 - t0), "user_ms_per_image": 1000 * (c1.user - c0.user) / n,
            "sys_ms_per_image": 1000 * (c1.system - c0.system) / n, "minor_faults_per_second": (f1 - f0) / (t1 - t0)}


def run(models, precisions, feeds, steps, repeats, peak=None) -> dict:
    import keras
    from cifar_ae import compute as C, hardware as H, memory, models as M, training as TR
    from cifar_ae.trials import get_trial
    malloc, threads = memory.tune_malloc(), memory.configure_threads()
    if peak is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import peak_flops
        peak = peak_flops.measure()
    results = {"machine": H.describe(), "malloc": malloc, "threads": threads, "peak": peak, "steps": steps,
               "repeats": repeats, "rows": []}
    for key in models:
        trial = get_trial(MODELS[key])
        n_images = trial.batch_size * (steps + 3)
        data = TR.prepare_data(trial, trial.settings("quick"), 0)
        data = {**data, "x_train": data["x_train"][:n_images], "y_train": data["y_train"][:n_images], "scaling": None}
        for precision in precisions:
            keras.mixed_precision.set_global_policy(precision)
            keras.utils.set_random_seed(0)
            model = TR.compile_model(M.BUILDERS[trial.model](**trial.model_args), trial)
            flops = C.train_flops_per_image(model)
            datasets = {k: feed(k, trial, data, steps) for k in feeds}
            measure_once(model, datasets[feeds[0]], 2, trial.batch_size, warmup=1)  # trace once
            samples = {k: [] for k in feeds}
            for _ in range(repeats):
                for k in feeds:
                    samples[k].append(measure_once(model, datasets[k], steps, trial.batch_size))
            for k in feeds:
                row = {"model": key, "trial": trial.name, "precision": precision, "feed": k,
                       "batch_size": trial.batch_size, "train_gflops_per_image": round(flops / 1e9, 4)}
                for metric in samples[k][0]:
                    row[metric] = round(statistics.median(s[metric] for s in samples[k]), 3)
                row["achieved_gflops"] = round(row["images_per_second"] * flops / 1e9, 1)
                ref = peak["kernels"].get("bfloat16" if "bfloat16" in precision else "float32", peak["kernels"]["float32"])
                row["fraction_of_peak"] = round(row["achieved_gflops"] / ref["peak_gflops"], 3)
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
            keras.mixed_precision.set_global_policy("float32")
    results["ratios"] = ratios(results["rows"])
    return results


def ratios(rows) -> dict:
    """pipeline / memory and pipeline+aug / memory per model and precision; bf16 / fp32 per model and feed."""
    get = {(r["model"], r["precision"], r["feed"]): r["images_per_second"] for r in rows}
    out = {}
    for (m, p, f), v in get.items():
        if f != "memory" and (m, p, "memory") in get:
            out[f"{m} {p}: {f} / memory"] = round(v / get[(m, p, "memory")], 3)
        if p == "mixed_bfloat16" and (m, "float32", f) in get:
            out[f"{m} {f}: bf16 / fp32"] = round(v / get[(m, "float32", f)], 3)
    return out


def allocation(steps, repeats) -> dict:
    """v2 pipeline+aug, float32, in two child processes: glibc/TensorFlow defaults, then cifar_ae.memory's."""
    out = {}
    for label, env in (("defaults", {"CIFAR_AE_MALLOC": "off", "CIFAR_AE_TF_THREADS": "default"}),
                       ("tuned", {"CIFAR_AE_MALLOC": "on", "CIFAR_AE_TF_THREADS": "on"})):
        cmd = [sys.executable, __file__, "--models", "v2", "--precisions", "float32", "--feeds", "pipeline+aug",
               "--steps", str(steps), "--repeats", str(repeats), "--skip-peak", "--output", "-"]
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
        out[label] = json.loads(proc.stdout.split("=== JSON\n", 1)[1].splitlines()[0])
    row = lambda label: out[label]["rows"][0]  # noqa: E731
    out["tuned_vs_defaults"] = {k: round(row("tuned")[k] / row("defaults")[k], 3) if row("defaults")[k] else None
                                for k in ("images_per_second", "user_ms_per_image", "sys_ms_per_image")}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    ap.add_argument("--feeds", nargs="+", default=list(FEEDS), choices=FEEDS)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--allocation", action="store_true", help="before/after of cifar_ae.memory, in child processes")
    ap.add_argument("--skip-peak", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--output", default=None, help="JSON file ('-': stdout, after a '=== JSON' line)")
    args = ap.parse_args(argv)
    command = "python " + " ".join(sys.argv)
    if args.allocation:
        result = {"allocation": allocation(args.steps, args.repeats)}
    else:
        peak = {"kernels": {"float32": {"peak_gflops": float("nan")}}} if args.skip_peak else None
        result = run(args.models, args.precisions, args.feeds, args.steps, args.repeats, peak)
    result["command"] = command
    if args.output == "-":
        print("=== JSON\n" + json.dumps(result))
        return
    elif args.output:
        from cifar_ae.evaluate import write_json_atomic
        path = Path(args.output)
        previous = json.loads(path.read_text()) if path.is_file() else {}
        write_json_atomic(path, {**previous, **result})
        print(f"wrote {path}")
    print(json.dumps(result.get("ratios") or result.get("allocation", {}).get("tuned_vs_defaults"), indent=2))


if __name__ == "__main__":
    main()
