"""This machine's measured peak: FLOP/s of a large matmul and a large 3x3 conv in TensorFlow, float32 (and
bfloat16 where the CPU or GPU has it natively). Training speed is reported as a fraction of it.

    python benchmarks/peak_flops.py            # prints the JSON; --output results/peak_flops.json to keep it

Median of `--repeats` timed calls after a warm-up; FLOPs are 2 per multiply-add.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(repeats=7, dtypes=None) -> dict:
    from cifar_ae import hardware as H, memory
    memory.configure_threads()  # the pools training uses
    dtypes = dtypes or (["float32", "bfloat16"] if H.native_bf16() else ["float32"])
    kernels = H.measure_kernels(repeats, dtypes)
    return {"machine": H.describe(), "repeats": repeats, "kernels": kernels,
            "peak_gflops_float32": kernels["float32"]["peak_gflops"]}


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
