"""Ablation: the v3 joint model with each trick switched off (or, for the extras, on) one at a time.

    CIFAR10_DIR=../shared/cifar10 python benchmarks/ablation.py --preset quick --epochs 2 \
        --output results/ablation --keep results/runs/ablation      # the committed table; without these two
                                                                     # flags everything stays under runs/ablation/

Every row is one ``run_trial(trial, preset, seed, epochs=..., **overrides)`` into ``runs/ablation/<row>/``, so
a row is a set of Trial fields and the loop is the whole experiment. Complete rows are kept, so an
interrupted ablation resumes where it stopped. The table (``results/ablation.md`` and ``.json``) is built
only from run folders; ``--keep`` copies their small files (config, metrics, history) to
``results/runs/ablation/`` so the committed table can be regenerated: ``--table-only --runs results/runs/ablation``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_ae.evaluate import write_json_atomic, write_text_atomic
from cifar_ae import experiments as X
from cifar_ae.ablation import ABLATIONS, find_runs, table
from cifar_ae.trials import get_trial

def run_rows(rows, trial, preset, seed, epochs, out):
    from cifar_ae.training import run_trial  # imports keras: not needed for --table-only
    runs = {}
    for row in rows:
        print(f"=== {row}: {ABLATIONS[row][0]}", flush=True)
        runs[row] = run_trial(trial, preset, seed, Path(out) / row, epochs=epochs, verbose=2, variant=row,
                              **ABLATIONS[row][1])
    return runs


def keep_rows(runs, dest):
    """Copy each row's small files (not the model) to dest/<row>/<trial>/<preset-seed>/ (cifar_ae.experiments.keep)."""
    return {row: X.keep(run, run.parent.parent.parent, dest) for row, run in runs.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trial", default="v3-joint-resnet")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=None, help="cut every row to N epochs (same budget for all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS), metavar="ROW",
                    help=f"rows to run, from: {', '.join(ABLATIONS)}")
    ap.add_argument("--runs", default="runs/ablation", help="where the run folders go (and are read from)")
    ap.add_argument("--table-only", action="store_true", help="only rebuild the table from --runs")
    ap.add_argument("--keep", default="", help="copy small run files here, e.g. results/runs/ablation (default: no copy)")
    ap.add_argument("--output", default=None,
                    help="table path without suffix (default: <runs>/ablation; results/ablation only when named here)")
    args = ap.parse_args(argv)
    get_trial(args.trial)  # unknown trial -> one-line error before any work
    args.output = args.output or str(Path(args.runs) / "ablation")
    if not args.table_only:
        run_rows(args.rows, args.trial, args.preset, args.seed, args.epochs, args.runs)
    runs = find_runs(args.runs, args.trial, args.preset, args.seed)
    if not runs:
        sys.exit(f"no complete ablation runs under {args.runs}/<row>/{args.trial}/{args.preset}-s{args.seed}; "
                 "run without --table-only first.")
    if args.keep and not args.table_only:
        runs = keep_rows(runs, args.keep)
    text, records = table(runs)
    header = (f"# Ablation: {args.trial}, preset {args.preset}, seed {args.seed}\n\n"
              f"Command: `python {' '.join(sys.argv)}`\n\n")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(f"{args.output}.md", header + text)
    write_json_atomic(f"{args.output}.json", {"trial": args.trial, "preset": args.preset, "seed": args.seed,
                                              "command": "python " + " ".join(sys.argv), "rows": records})
    print(header + text)


if __name__ == "__main__":
    main()
