"""What a linear code of k numbers can reconstruct: the test MSE of PCA fitted on the imbalanced training subset.

A reference for the autoencoders' MSE (the study's v0 MLP has a 768-unit code): no trained net with a k-number
code and an MSE loss needs to do worse than PCA-k, so it separates "the code is too small" from "the net is
under-trained". Usage: CIFAR10_DIR=../shared/cifar10 python tools/pca_reference.py --codes 768 192 64
"""
from __future__ import annotations

import argparse

import numpy as np


def pca_test_mse(x_train, x_test, codes) -> dict:
    """{k: test MSE of the best rank-k linear reconstruction} for images scaled to [0, 1] (the trials' /255)."""
    a = x_train.reshape(len(x_train), -1).astype(np.float32) / 255.0
    b = x_test.reshape(len(x_test), -1).astype(np.float32) / 255.0
    mean = a.mean(0)
    cov = np.cov((a - mean).T.astype(np.float64), bias=True)
    _, vectors = np.linalg.eigh(cov)
    vectors = vectors[:, ::-1].astype(np.float32)  # largest variance first
    out = {}
    for k in codes:
        v = vectors[:, :k]
        rec = (b - mean) @ v @ v.T + mean
        out[k] = float(np.mean((np.clip(rec, 0, 1) - b) ** 2))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codes", nargs="+", type=int, default=[768, 192, 64])
    ap.add_argument("--trial", default="v0-mlp-ae", help="whose training subset (and seed) to fit on")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if any(k < 1 or k > 3072 for k in args.codes):
        ap.error(f"--codes must lie in 1..3072 (a CIFAR image has 3072 numbers); got {args.codes}")
    from cifar_ae.training import prepare_data
    from cifar_ae.trials import get_trial
    trial = get_trial(args.trial)
    data = prepare_data(trial, trial.settings("study"), args.seed)
    for k, mse in pca_test_mse(data["x_train"], data["x_test"], args.codes).items():
        print(f"PCA-{k}: test MSE {mse:.5f} (fitted on {len(data['x_train'])} training images of {args.trial}, seed {args.seed})")


if __name__ == "__main__":
    main()
