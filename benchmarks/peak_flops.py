"""This machine's measured peak: FLOP/s of a large matmul and a large 3x3 conv in TensorFlow, float32 (and
bfloat16 where the CPU or GPU has it natively). Training speed is reported as a fraction of it.

    python benchmarks/peak_flops.py            # prints the JSON; --output results/peak_flops.json to keep it

Median of `--repeats` timed calls after a warm-up; FLOPs are 2 per multiply-add.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _time(fn, repeats):
    fn()  # trace and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(repeats=7, dtypes=None) -> dict:
    import tensorflow as tf
    from cifar_ae import hardware as H
    dtypes = dtypes or (["float32", "bfloat16"] if H.native_bf16() else ["float32"])
    out = {"machine": H.describe(), "repeats": repeats, "kernels": {}}
    n = 2048
    x_shape, w_shape = (64, 32, 32, 128), (3, 3, 128, 128)
    for dtype in dtypes:
        a = tf.random.normal((n, n), dtype=tf.float32)
        b = tf.random.normal((n, n), dtype=tf.float32)
        x = tf.random.normal(x_shape)
        w = tf.random.normal(w_shape)
        if dtype != "float32":
            a, b, x, w = (tf.cast(t, dtype) for t in (a, b, x, w))
        matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
        conv = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME")))
        mm_s = _time(lambda: matmul().numpy(), repeats)
        cv_s = _time(lambda: conv().numpy(), repeats)
        conv_flops = 2 * 64 * 32 * 32 * 128 * 9 * 128
        out["kernels"][dtype] = {
            "matmul_2048_gflops": round(2 * n ** 3 / mm_s / 1e9, 1),
            "conv3x3_64x32x32x128_gflops": round(conv_flops / cv_s / 1e9, 1)}
        out["kernels"][dtype]["peak_gflops"] = max(out["kernels"][dtype].values())
    out["peak_gflops_float32"] = out["kernels"]["float32"]["peak_gflops"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    result = {**measure(args.repeats), "command": "python " + " ".join(sys.argv)}
    if args.output:
        from cifar_ae.evaluate import write_json_atomic
        write_json_atomic(args.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
