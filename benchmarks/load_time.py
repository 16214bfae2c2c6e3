"""First load (decode 60,000 PNGs) and cached load of CIFAR-10; targets: <= 30 s and <= 2 s on 2 cores.

    CIFAR10_DIR=../shared/cifar10 python benchmarks/load_time.py [--repeats 3]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

from cifar_ae.data import load_cifar10


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    first, cached = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["CIFAR_AE_CACHE"] = cache  # empty cache: decode every image and write the .npz
            t, d = timed(load_cifar10)
            first.append(t)
            t, d2 = timed(load_cifar10)
            cached.append(t)
            assert np.array_equal(d.x_train, d2.x_train)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"source: {d.source}  train {d.x_train.shape}  test {d.x_test.shape}")
    print(f"first load (decode + write cache): median {np.median(first):.2f} s  runs {[round(t, 2) for t in first]}  target <= 30 s")
    print(f"cached load:                       median {np.median(cached):.2f} s  runs {[round(t, 2) for t in cached]}  target <= 2 s")


if __name__ == "__main__":
    main()
