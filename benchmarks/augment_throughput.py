"""Augmentation throughput (images/s) on real CIFAR-10: is augmentation fast enough to never starve training?

    python benchmarks/augment_throughput.py [--train-throughput 370] [--images 5000] [--repeats 3]

(a) keras_preprocessing.ImageDataGenerator, rotation/shift/flip, one process (scipy per image);
(b) augment.ImageDataGenerator, (a) plus Pillow contrast/sharpness/equalize: the study's notebook path;
(c) the fast path: ArrayBatches + augment.BatchAugmenter (numpy kernels over each batch), consumed through
    Keras' own PyDataset adapter, i.e. exactly as model.fit reads it (pool start-up included), with (b)'s ops,
    with the trials' config, and with the AutoAugment policy; in 2 worker threads (what run_trial uses),
    2 worker processes, and in-process; plus the same policy through Pillow per image, for the kernels' share.
Each number is the median of --repeats passes over --images images. Writes results/augment_throughput.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import augment  # noqa: E402
from cifar_ae.batches import ArrayBatches  # noqa: E402
from cifar_ae.data import load_cifar10  # noqa: E402
from cifar_ae.evaluate import write_json_atomic  # noqa: E402

BASE_ARGS = dict(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True)
PIL_ARGS = dict(contrast_range=(0.6, 1.4), sharpness_range=(0.5, 1.5), equalize_prob=0.5)
# (b)'s work as a policy: rotate always, contrast and sharpness always, equalize half the time.
SAME_OPS_POLICY = {"subpolicies": [[("Rotate", 1.0, None), ("Contrast", 1.0, None), ("Equalize", 0.5, None),
                                    ("Sharpness", 1.0, None)]], "bins": 11}
FAST_CONFIGS = {  # label -> BatchAugmenter kwargs; each runs in every MODE
    "(b)'s ops": dict(policy=SAME_OPS_POLICY, flip=True, translate=3),
    "trial config 'study'": dict(policy="study", flip=True, translate=4),
    "autoaugment-cifar10 + cutout 16": dict(policy="autoaugment-cifar10", flip=True, translate=4, cutout=16),
}
MODES = {  # label -> (workers, use_multiprocessing, vectorised); the first is (c), as run_trial reads it
    "threads": (2, False, True), "processes": (2, True, True), "in-process": (1, False, True),
    "in-process, Pillow per image": (1, False, False)}
FAST_MODE = next(iter(MODES))
A = "(a) keras_preprocessing: rotation/shift/flip"
B = "(b) augment.ImageDataGenerator: (a) + contrast/sharpness/equalize"


def measure(run_epoch, n_images, repeats):
    """Median over repeats of (wall images/s, CPU us per image in this process) for one full pass."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        seen = run_epoch()
        walls.append(seen / (time.perf_counter() - wall))
        cpus.append((time.process_time() - cpu) / seen * 1e6)
        assert seen == n_images, (seen, n_images)
    return statistics.median(walls), statistics.median(cpus)


def generator_epoch(generator, x, y, batch_size):
    """One pass the way fit reads a one-worker PyDataset: it[i] for every batch, in-process."""
    it = generator.flow(x, y, batch_size=batch_size, seed=0)
    return lambda: sum(len(it[i][0]) for i in range(len(it)))


def fast_epoch(x, y, batch_size, augmenter_kwargs, workers, use_multiprocessing, vectorised):
    """One epoch of ArrayBatches through Keras' PyDataset adapter, which is what model.fit iterates."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter  # fit's own reader
    pool = dict(workers=workers, use_multiprocessing=use_multiprocessing) if workers > 1 else {}
    transform = augment.BatchAugmenter(**augmenter_kwargs, vectorised=vectorised)
    data = ArrayBatches(x, y, batch_size=batch_size, transform=transform, **pool)
    adapter = PyDatasetAdapter(data)

    def run():
        adapter.on_epoch_begin()
        seen = sum(len(batch[0]) for batch in adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        return seen
    return run


def verdict(ratio, goal):
    return f"{ratio:5.1f}x {'ok  ' if ratio >= goal else 'MISS'}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-throughput", type=float, default=370.0,
                        help="training images/s to compare against (joint model on this machine: 370)")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data", default=None, help="CIFAR-10 folder (default: $CIFAR10_DIR, then the keras cache)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "benchmarks" / "augment_throughput.json",
                        help="JSON result (default under runs/; pass results/augment_throughput.json to update it)")
    args = parser.parse_args(argv)
    command = " ".join([Path(sys.executable).name, *sys.argv])
    print("command:", command)
    load_before = os.getloadavg()[0]

    data = load_cifar10(args.data or os.environ.get("CIFAR10_DIR") or "/work/shared/cifar10")
    x, y = data.x_train[:args.images], data.y_train[:args.images]
    from keras_preprocessing.image import ImageDataGenerator as KerasPreprocessingGenerator

    n, reps, bs = len(x), args.repeats, args.batch_size
    rows = {  # label -> (workers, wall img/s, CPU us/img or None)
        A: (1, *measure(generator_epoch(KerasPreprocessingGenerator(**BASE_ARGS), x, y, bs), n, reps)),
        B: (1, *measure(generator_epoch(augment.ImageDataGenerator(**BASE_ARGS, **PIL_ARGS), x, y, bs), n, reps)),
    }
    for name, kwargs in FAST_CONFIGS.items():
        for mode, (workers, processes, vectorised) in MODES.items():
            wall, cpu = measure(fast_epoch(x, y, bs, kwargs, workers, processes, vectorised), n, reps)
            label = f"(c) fast path, {name}" if mode == FAST_MODE else f"    {name}, {mode}"
            rows[label] = (workers, wall, None if processes else cpu)  # a process pool's CPU is not ours

    b_wall = rows[B][1]
    width = max(map(len, rows))
    print(f"\n{n} real CIFAR-10 images, batch {bs}, median of {reps}; {os.cpu_count()} CPUs, "
          f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (other users' work included)\n")
    print(f"{'pipeline':<{width}}  workers  {'images/s':>9}  {'vs (b)':>7}  {'vs train':>8}  CPU us/img")
    for label, (workers, wall, cpu) in rows.items():
        cpu_text = f"{cpu:>10.0f}" if cpu is not None else f"{'(workers)':>10}"
        print(f"{label:<{width}}  {workers:>7}  {wall:>9,.0f}  {wall / b_wall:>6.1f}x  "
              f"{wall / args.train_throughput:>7.1f}x  {cpu_text}")

    print(f"\ngoals: (c) >= 5x (b), (c) >= 10x training ({args.train_throughput:g} img/s); (c) = {FAST_MODE}, "
          f"{MODES[FAST_MODE][0]} workers, wall clock.")
    ratios = {}
    for name in FAST_CONFIGS:
        wall = rows[f"(c) fast path, {name}"][1]
        ratios[name] = {"vs_b": wall / b_wall, "vs_train": wall / args.train_throughput}
        print(f"  {name:<34} {verdict(ratios[name]['vs_b'], 5)} (b)   {verdict(ratios[name]['vs_train'], 10)} training")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {
        "command": command, "images": n, "batch_size": bs, "repeats": reps, "fast_mode": FAST_MODE,
        "cpus": os.cpu_count(), "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "train_throughput": args.train_throughput,
        "rows": {label: {"workers": w, "images_per_s": wall, "cpu_us_per_image": cpu}
                 for label, (w, wall, cpu) in rows.items()},
        "ratios": ratios})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
