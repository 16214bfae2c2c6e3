"""Encoder blocks compared (the study's next step: "check how much ResNet or Inception layers help in accuracy and
if they also help in reducing training time; the block of NASNet can also be tried").

    CIFAR10_DIR=../shared/cifar10 python benchmarks/blocks.py --preset quick --epochs 2 \
        --output results/blocks --keep results/runs/blocks --commit   # the committed table (without: all under runs/)

Each row is v2-joint-noaug (the study's joint model) with `model_args={"block": ...}` (models.ENCODER_BLOCKS, each
at a width within ~12% of the VGG encoder's parameters), trained for the same epochs; the two best (validation accuracy) get a second
seed (--extra-seed). The table comes from the run folders only: test accuracy, reconstruction MSE, parameters,
training FLOPs per image and in total, and images/s on this machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_ae import experiments as X

BLOCKS = ("vgg", "residual", "inception", "nasnet")
BASE = "v2-joint-noaug"


def table(found) -> str:
    lines = ["| block | test acc (mean ± sd) | seeds | recon MSE | bird / deer / truck recall | params | "
             "train GFLOP/img | PFLOPs | img/s |", "|---|---|---|---|---|---|---|---|---|"]
    for row, s in sorted(found.items(), key=lambda kv: -kv[1]["test_accuracy"]):
        lines.append(f"| {row.removeprefix('block-')} | {X.pct(s['test_accuracy'], s['test_accuracy_sd'])} | "
                     f"{', '.join(map(str, s['seeds']))} | {s['recon_mse']:.5f} | {X.reduced_recall(s)} | "
                     f"{s['params']:,} | {s['train_gflops_per_image']:.3f} | {s['train_pflops']:.4f} | "
                     f"{s['images_per_second'] or '':} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=BLOCKS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-seed", type=int, default=1, help="second seed for the two best blocks (-1: none)")
    ap.add_argument("--runs", default="runs/blocks")
    ap.add_argument("--keep", default="", help="copy the small run files here, e.g. results/runs/blocks")
    ap.add_argument("--output", default=None, help="table path without suffix (default: <runs>/blocks)")
    ap.add_argument("--commit", action="store_true", help="git-commit each finished run's kept files at once")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    rows = {f"block-{b}": {"model_args": {"block": b}} for b in args.blocks}
    if not args.table_only:
        done = X.keeper(args.runs, args.keep, args.commit, f"blocks {args.preset} {args.epochs} epochs")
        for row, ch in rows.items():
            done(X.run_row(BASE, row, ch, args.preset, args.seed, args.epochs, args.runs))
        if args.extra_seed >= 0:
            first = X.collect(args.runs, BASE, args.preset, rows, [args.seed])
            for row in X.by_validation(first)[:2]:
                done(X.run_row(BASE, row, rows[row], args.preset, args.extra_seed, args.epochs, args.runs))
    root = args.keep if args.table_only and args.keep else args.runs
    found = X.collect(root, BASE, args.preset, rows, [args.seed, args.extra_seed])
    if not found:
        sys.exit(f"no complete block runs under {root}; run without --table-only first.")
    command = "python " + " ".join(sys.argv)
    output = Path(args.output or Path(args.runs) / "blocks")
    X.write_table(output,
                  f"Encoder blocks: {BASE}, preset {args.preset}, {args.epochs} epochs each", command,
                  "Same epochs per row (compute differs: see PFLOPs); images/s is the median epoch's training speed on "
                  "the machine in each run's config.json.", table(found), {"base": BASE, "rows": found},
                  commit_message=args.commit and not args.table_only and "results/blocks: the table from its run folders")


if __name__ == "__main__":
    main()
