"""Which augmentation helps (the study's next step: "different data augmentation techniques that contribute to
better performance can be checked (AutoAugment)").

    CIFAR10_DIR=../shared/cifar10 python benchmarks/augmentation.py --preset quick --epochs 2 --model-epochs v3=1 \
        --output results/augmentation --keep results/runs/augmentation --commit   # the committed table

Rows: none, flip + translate, the study's PIL policy, AutoAugment CIFAR-10, RandAugment, TrivialAugment (each with
flip + translate), then cutout 16 added to the best of those (by validation accuracy); for the study's joint model
(v2-joint-noaug's recipe) and the v3 joint model (v3-joint-resnet-patch). One short fixed budget (the same epochs) for every row of a
model (v3's epochs cost ~4x v2's on CPU, hence --model-epochs), one seed; the three best rows of each model get a
second seed. Test accuracy, the halved classes' recall and the reconstruction MSE, from the run folders only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_ae import experiments as X

BASES = {"v2": "v2-joint-noaug", "v3": "v3-joint-resnet-patch"}
BASE_AUG = {"flip": True, "translate": 4}
ROWS = {
    "none": None,
    "flip-translate": {"policy": None, **BASE_AUG},
    "study-pil": {"policy": "study", **BASE_AUG},
    "autoaugment": {"policy": "autoaugment-cifar10", **BASE_AUG},
    "randaugment": {"policy": "randaugment", **BASE_AUG},
    "trivialaugment": {"policy": "trivialaugment", **BASE_AUG},
}


def rows_for(found=None) -> dict:
    rows = {k: {"augmentation": v} for k, v in ROWS.items()}
    if found:  # cutout on the best of the six
        best = next(r for r in X.by_validation(found) if r in ROWS)
        aug = dict(ROWS[best] or {"policy": None, "flip": False, "translate": 0})
        rows[f"{best}-cutout"] = {"augmentation": {**aug, "cutout": 16}}
    return rows


def table(found, seed=0, extra_seed=1) -> str:
    """Rows in the order of the seed every row has (a mean over two seeds beside a single seed would rank the
    rows by which seeds they drew); the second seed and the mean beside it."""
    lines = [f"| augmentation | test acc, seed {seed} | seed {extra_seed} | mean ± sd | bird / deer / truck recall | "
             "recon MSE | PFLOPs |", "|---|---|---|---|---|---|---|"]
    def acc(s, k):
        v = s["test_accuracy_by_seed"].get(k)
        return "" if v is None else X.pct(v)
    for row, s in sorted(found.items(), key=lambda kv: -(kv[1]["test_accuracy_by_seed"].get(seed) or 0.0)):
        mean = X.pct(s["test_accuracy"], s["test_accuracy_sd"]) if len(s["seeds"]) > 1 else ""
        lines.append(f"| {row} | {acc(s, seed)} | {acc(s, extra_seed)} | {mean} | {X.reduced_recall(s)} | "
                     f"{s['recon_mse']:.5f} | {s['train_pflops']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per row, for every model")
    ap.add_argument("--model-epochs", nargs="+", default=[], metavar="MODEL=N",
                    help="another budget for one model's rows, e.g. v3=1 (its epochs cost ~4x v2's on CPU)")
    ap.add_argument("--models", nargs="+", default=list(BASES), choices=list(BASES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-seed", type=int, default=1, help="second seed for each model's three best rows (-1: none)")
    ap.add_argument("--runs", default="runs/augmentation")
    ap.add_argument("--keep", default="", help="copy the small run files here, e.g. results/runs/augmentation")
    ap.add_argument("--output", default=None, help="table path without suffix (default: <runs>/augmentation)")
    ap.add_argument("--commit", action="store_true", help="git-commit each finished run's kept files at once")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    epochs = {key: args.epochs for key in args.models}
    for item in args.model_epochs:
        key, _, n = item.partition("=")
        if key not in epochs or not n.isdigit() or int(n) < 1:
            ap.error(f"--model-epochs takes MODEL=N with MODEL one of {', '.join(epochs)} and N >= 1; got '{item}'")
        epochs[key] = int(n)
    command, sections, records = "python " + " ".join(sys.argv), [], {}
    for key in args.models:
        base, root, n_epochs = BASES[key], Path(args.runs) / key, epochs[key]
        if not args.table_only:
            done = X.keeper(args.runs, args.keep, args.commit, f"augmentation {key} {args.preset} {n_epochs} epochs")
            for row, ch in rows_for().items():
                done(X.run_row(base, row, ch, args.preset, args.seed, n_epochs, root))
            found = X.collect(root, base, args.preset, rows_for(), [args.seed])
            cut_row, cut = list(rows_for(found).items())[-1]
            done(X.run_row(base, cut_row, cut, args.preset, args.seed, n_epochs, root))
            if args.extra_seed >= 0:
                found = X.collect(root, base, args.preset, rows_for(found), [args.seed])
                all_rows = rows_for(found)
                for r in X.by_validation(found)[:3]:
                    done(X.run_row(base, r, all_rows[r], args.preset, args.extra_seed, n_epochs, root))
        read_root = Path(args.keep) / key if args.table_only and args.keep else root
        first = X.collect(read_root, base, args.preset, rows_for(), [args.seed])
        found = X.collect(read_root, base, args.preset, rows_for(first), [args.seed, args.extra_seed])
        if found:
            records[key] = found
            ran = "/".join(str(e) for e in sorted({s["epochs"] for s in found.values()}))  # as the runs recorded it
            sections.append(f"## {base}, {ran} epochs per row\n\n" + table(found, args.seed, args.extra_seed))
    if not sections:
        sys.exit(f"no complete augmentation runs under {args.runs}; run without --table-only first.")
    output = Path(args.output or Path(args.runs) / "augmentation")
    X.write_table(output,
                  f"Which augmentation helps: preset {args.preset}", command,
                  "One budget (the same epochs) for every row of a model; the three best rows of each model by validation "
                  "accuracy (the hold-out split) have a second seed, and cutout goes on the best. Recall and MSE "
                  "are means over a row's seeds.",
                  "\n".join(sections), {"bases": BASES, "epochs": epochs, "rows": records},
                  commit_message=args.commit and not args.table_only and "results/augmentation: the table from its run folders")


if __name__ == "__main__":
    main()
