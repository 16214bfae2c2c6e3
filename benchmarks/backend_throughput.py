"""Training throughput of the v2 and v4 models on each Keras backend, side by side on this CPU: one child process per
backend (TensorFlow, TensorFlow with XLA `jit_compile=True`, JAX, and PyTorch where it is installed).

    CIFAR10_DIR=../shared/cifar10 python benchmarks/backend_throughput.py          # writes results/backend_throughput.{md,json}
    CIFAR10_DIR=../shared/cifar10 python benchmarks/backend_throughput.py --quick  # a check that it runs (to /tmp)

Each child trains every model on the trainer's own input (cifar_ae.training._batches, no augmentation) at float32
and reports the median over `--repeats` rounds of `--steps` timed steps after a traced warm-up: images/s, and the
achieved GFLOP/s as a fraction of this machine's measured peak (benchmarks/peak_flops.py, TensorFlow's oneDNN
kernels, measured once in the first child: one yardstick for all backends). Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
MODELS = {"v2": "v2-joint-aug-adam", "v4": "v4-joint-lead", "v4-honest": "v4_honest:recon80",
          "v4-honest-muon": "v4_honest:muon-lr0.1"}
# engine label -> (KERAS_BACKEND, jit_compile)
ENGINES = {"tensorflow": ("tensorflow", False), "tensorflow+xla": ("tensorflow", True), "jax": ("jax", True),
           "torch": ("torch", False)}


def measure(models, steps, repeats, jit_compile, peak) -> dict:
    """In this process (its backend): the rows for `models`."""
    import keras
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import measure_once
    from cifar_ae import backend, compute, memory, models as M, training as TR
    from cifar_ae.batches import steps_per_epoch
    from cifar_ae.probe import encoder_trial  # a registered trial or an experiment's row
    malloc, threads = memory.tune_malloc(), backend.configure_threads()
    if peak is None:
        import peak_flops
        peak = peak_flops.measure()
    rows = []
    for key in models:
        trial = encoder_trial(MODELS[key]).replace(augmentation=None, class_weight=None, precision="float32")
        n_images = trial.batch_size * (steps + 3)
        data = TR.prepare_data(trial, trial.settings("quick"), 0)
        data = {**data, "x_train": data["x_train"][:n_images], "y_train": data["y_train"][:n_images], "scaling": None}
        keras.utils.set_random_seed(0)
        model = M.BUILDERS[trial.model](**trial.model_args)
        if trial.whitening:
            M.init_whitening(model, data["x_train"])
        TR.compile_model(model, trial, steps_per_epoch(n_images, trial.batch_size, trial.drop_last))
        model.jit_compile = jit_compile  # compile() set "auto"; this is the engine under test
        flops = compute.train_flops_per_image(model)
        batches = TR._batches(trial, data, trial.settings("quick"), 0, train=True)
        t0 = time.perf_counter()
        measure_once(model, batches, 2, trial.batch_size, warmup=1)  # trace and compile once
        first = time.perf_counter() - t0
        samples = [measure_once(model, batches, steps, trial.batch_size) for _ in range(repeats)]
        ips = statistics.median(s["images_per_second"] for s in samples)
        rows.append({"model": key, "trial": trial.name, "batch_size": trial.batch_size,
                     "train_gflops_per_image": round(flops / 1e9, 4), "images_per_second": round(ips, 1),
                     "achieved_gflops": round(ips * flops / 1e9, 1),
                     "fraction_of_peak": round(ips * flops / 1e9 / peak["peak_gflops_float32"], 3),
                     "first_fit_seconds": round(first, 1), "jit_compile": bool(model.jit_compile)})
    return {"backend": backend.name(), "versions": backend.versions(), "jit_compile": jit_compile,
            "threads": threads, "malloc": malloc, "peak": peak, "rows": rows}


def child(engine, args, peak) -> dict:
    name, jit = ENGINES[engine]
    cmd = [sys.executable, __file__, "--child", engine, "--models", *args.models, "--steps", str(args.steps),
           "--repeats", str(args.repeats)]
    env = {**os.environ, "KERAS_BACKEND": name, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if peak is not None:
        env["BACKEND_THROUGHPUT_PEAK"] = json.dumps(peak)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"engine": engine, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return {"engine": engine, **json.loads(proc.stdout.split("=== JSON\n", 1)[1])}


def table(result) -> str:
    lines = [f"# Training throughput by backend\n",
             f"CPU: {result['machine']['cpu_model']}, {result['machine']['usable_cores']} usable cores; peak "
             f"{result['peak_gflops_float32']} GFLOP/s float32 (TensorFlow matmul/conv, benchmarks/peak_flops.py). "
             f"Median of {result['repeats']} x {result['steps']} steps, float32, no augmentation. "
             f"Generated by `{result['command']}`.\n",
             "| model | engine | backend version | images/s | GFLOP/s | fraction of peak | first fit (s, incl. compile) |",
             "|---|---|---|---|---|---|---|"]
    for engine in result["engines"]:
        if "error" in engine:
            lines.append(f"| all | {engine['engine']} | did not run: {engine['error'][:100]} | | | | |")
            continue
        version = engine["versions"].get(engine["backend"])
        for r in engine["rows"]:
            lines.append(f"| {r['model']} ({r['trial']}) | {engine['engine']} | {version} | {r['images_per_second']} | "
                         f"{r['achieved_gflops']} | {r['fraction_of_peak']} | {r['first_fit_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="3 steps, 1 repeat, v2 only, into /tmp: does it run?")
    ap.add_argument("--output", default=None, help="results/backend_throughput (.md and .json); --quick: /tmp/...")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        peak = json.loads(os.environ["BACKEND_THROUGHPUT_PEAK"]) if os.environ.get("BACKEND_THROUGHPUT_PEAK") else None
        print("=== JSON\n" + json.dumps(measure(args.models, args.steps, args.repeats, ENGINES[args.child][1], peak)))
        return
    command = "python benchmarks/backend_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.steps, args.repeats, args.models = 3, 1, ["v2"]
    output = Path(args.output or ("/tmp/backend_throughput" if args.quick else REPO / "results" / "backend_throughput"))
    from cifar_ae.hardware import describe
    engines, peak = [], None
    for engine in args.engines:
        found = child(engine, args, peak)
        peak = peak or found.get("peak")
        engines.append(found)
        print(json.dumps({k: found.get(k) for k in ("engine", "rows", "error") if k in found}), flush=True)
    result = {"machine": describe(), "peak_gflops_float32": (peak or {}).get("peak_gflops_float32"),
              "steps": args.steps, "repeats": args.repeats, "engines": engines, "command": command.strip()}
    from cifar_ae.evaluate import write_json_atomic
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output.with_suffix(".json"), result)
    output.with_suffix(".md").write_text(table(result))
    print(output.with_suffix(".md").read_text())
    print(f"wrote {output.with_suffix('.md')} and {output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
