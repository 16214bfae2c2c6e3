"""The v4 (airbench-style) joint model's experiments, all from run folders: the ablation (each trick removed, one
seed, a third of the 0.15 PFLOP budget), the sweeps (a lead with one change a row, the whole budget), the
controls (no reconstruction loss; the balanced set) at the same compute, and the accuracy-against-compute figure.

    CIFAR10_DIR=../shared/cifar10 python benchmarks/fast.py ablation --output results/ablation_v4 \
        --keep results/runs/ablation_v4 --commit
    CIFAR10_DIR=../shared/cifar10 python benchmarks/fast.py sweep --output results/sweep_v4 \
        --keep results/runs/sweep_v4 --commit
    CIFAR10_DIR=../shared/cifar10 python benchmarks/fast.py sweep --base v4-joint-fast-b256-recon40-narrow-lookahead-logitadj \
        --output results/sweep_v4_narrow --keep results/runs/sweep_v4 --commit
    CIFAR10_DIR=../shared/cifar10 python benchmarks/fast.py controls --output results/controls_v4 \
        --keep results/runs/controls_v4 --commit                          # --base v4-joint-fast-b256: the lead's
    python benchmarks/fast.py figure --output results/accuracy_vs_pflops.png
    python benchmarks/fast.py leaderboard --output results/leaderboard_v4     # every v4 result against the goals
    # the 3-seed time to accuracy: benchmarks/time_to_accuracy.py --trial v4-joint-fast --preset quick --seeds 0 1 2 \
    #     --output results/time_to_accuracy_v4.json --keep results/runs/time_to_accuracy --commit

Budgets are epochs of `quick` (42,500 images less the 2,000 held out): v4-joint-fast's 0.959 GFLOP per training
image make one epoch 0.039 PFLOP, so the ablation's 1 epoch is ~0.04 PFLOP and quick's 4 epochs ~0.155.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifar_ae import experiments as X
from cifar_ae.runs import named_folder
from cifar_ae.trials import V4_AUGMENTATION

BASE = "v4-joint-fast"
# row -> (what is removed, Trial changes); "baseline" is v4-joint-fast as defined in cifar_ae/trials.py
ABLATIONS = {
    "baseline": ("v4-joint-fast as defined", {}),
    "no-whitening": ("a trainable randomly initialised 2x2 stem instead of the frozen whitening", {"whitening": False}),
    "bn-momentum-0.9": ("BatchNorm momentum 0.9 (Keras; PyTorch 0.1) instead of 0.6", {"model_args": {"bn_momentum": 0.9}}),
    "bn-momentum-0.4": ("BatchNorm momentum 0.4 (the mis-converted value v4 first had) instead of 0.6",
                        {"model_args": {"bn_momentum": 0.4}}),
    "no-dirac": ("Keras' glorot conv init instead of airbench's partial identity (dirac)", {"model_args": {"dirac": False}}),
    "head-sd-1": ("the head's Dense at sd 1 (a later airbench variant's init) instead of glorot (sd ~0.09)",
                  {"model_args": {"head_std": 1.0}}),
    "bn-scale": ("BatchNorm with a learnt scale", {"model_args": {"bn_scale": True}}),
    "bias-lr-1": ("BatchNorm biases at the plain learning rate (no 64x)", {"model_args": {"bias_lr_scale": 1.0}}),
    "no-label-smoothing": ("label smoothing 0.2 -> 0", {"label_smoothing": 0.0}),
    "batch-256": ("batch 256 instead of 1024 (same learning rate)", {"batch_size": 256}),
    "random-flip": ("random flips instead of alternating ones", {"augmentation": {"policy": None, "flip": True, "translate": 2}}),
    "no-crop-tta": ("flip TTA only (no 1 px shifts)", {"tta_crops": False}),
    "adamw": ("v3's AdamW 3e-3, weight decay 5e-4, instead of Nesterov SGD", {"optimizer": "adamw", "momentum": None,
                                                                          "learning_rate": 3e-3, "weight_decay": 5e-4}),
    "narrow": ("widths 32/128/128 instead of 64/256/256", {"model_args": {"widths": (32, 128, 128)}}),
    "ema": ("an EMA of the weights (0.99), written in every epoch (off in the baseline)", {"ema_momentum": 0.99}),
}
# Each control base has its two control trials registered in cifar_ae/trials.py: <base>-norecon and <base>-balanced
CONTROL_BASES = ("v4-joint-fast", "v4-joint-fast-b256",
                 "v4-joint-fast-b256-recon40-narrow-lookahead-logitadj-wd-lr0.375-droplast-alltrain-lightdec")


def controls_of(base) -> list:
    """(trial, what differs, epochs): None = the preset's; "same-compute" = as many training images as the base saw."""
    return [(base, "as defined", None),
            (f"{base}-norecon", "no reconstruction loss (weight 0)", None),
            (f"{base}-balanced", "the balanced control set (2,500 per class), the same epochs", None),
            (f"{base}-balanced", "the balanced control set, the same compute (more epochs)", "same-compute")]
# the sweeps: a lead with one change a row, at the preset's whole length (--base picks the lead; its own seed-0
# time-to-accuracy run is the reference row). The first: what might carry the batch-256 lead to 90% and MSE <= 0.001
SWEEP_REFERENCE = "lead"
NARROW_LEAD = "v4-joint-fast-b256-recon40-narrow-lookahead-logitadj"
SWEEPS = {
    "v4-joint-fast-b256": {  # results/sweep_v4.md
        "lr-0.75": ("peak learning rate 0.75 instead of 1.5 (validation stalls just after the one-cycle peak)",
                    {"learning_rate": 0.75}),
        "recon-weight-30": ("reconstruction weight 30 instead of 10 (its MSE is 0.0021; the goal is <= 0.001)",
                            {"recon_weight": (30.0, 30.0)}),
        "recon-weight-40": ("reconstruction weight 40 instead of 10 (weight 30 reached MSE 0.00103, just above the goal)",
                            {"recon_weight": (40.0, 40.0)}),
        "batch-128": ("batch 128 instead of 256 (the same learning rate): twice the optimizer steps again",
                      {"batch_size": 128}),
    },
    NARROW_LEAD: {  # results/sweep_v4_narrow.md: what might carry the 0.15-PFLOP winner toward 93% at 0.36
        "bias-lr-16": ("BatchNorm biases at 16x the learning rate, not 64x: batch 256 at lr 1.5 is 4x airbench94's "
                       "per-example LR, so 16x keeps airbench's per-example bias LR", {"model_args": {"bias_lr_scale": 16.0}}),
        "translate-4": ("translate by up to 4 px instead of 2: the narrow net sees each image 3x as often as "
                        "airbench94's", {"augmentation": {**V4_AUGMENTATION, "translate": 4}}),
        "bn-scale": ("BatchNorm with a learnt scale (the 1-epoch ablation's +1.2 pt validation, inside its noise)",
                     {"model_args": {"bn_scale": True}}),
    },
}
SWEEP_BASE = next(iter(SWEEPS))  # --base's default for a sweep: the first
AIRBENCH94 = {"pflops": 0.36, "test_accuracy": 0.9401, "label": "airbench94 (published; 50,000 balanced images)"}


def ablation(args, done):
    title = f"Ablation of {BASE}: each trick removed, {args.epochs} epoch(s) of `{args.preset}`, seed {args.seed}"
    return one_change_table(args, done, BASE, ABLATIONS, args.epochs, title, "baseline")


def sweep(args, done):
    """SWEEPS[--base]'s rows on top of that lead, each at the preset's whole length; its seed-0 run (the time-to-accuracy
    benchmark's, under --reference) is the row they are compared to, so it is not trained again."""
    title = f"Sweep on {args.base}: one change a row, the whole `{args.preset}` preset, seed {args.seed}"
    reference = (Path(args.reference) / args.base / f"{args.preset}-s{args.seed}",
                 f"{args.base} as defined (its time-to-accuracy run)")
    return one_change_table(args, done, args.base, SWEEPS[args.base], None, title, SWEEP_REFERENCE, reference)


def one_change_table(args, done, base_trial, rows, epochs, title, base_row, reference=None):
    """Train each row (base_trial with one change), then table them against base_row: a row of `rows`, or
    reference = (a complete run folder, what it is)."""
    if not args.table_only:
        for row in args.rows or rows:  # each row kept (and committed) as it finishes
            done(X.run_row(base_trial, row, rows[row][1], args.preset, args.seed, epochs, args.runs))
        for seed in args.noise_seeds:  # the baseline again at other seeds: how big a row's difference must be
            done(X.run_row(base_trial, base_row, {}, args.preset, seed, epochs, args.runs))
    root = args.keep if args.table_only and args.keep else args.runs
    found = X.collect(root, base_trial, args.preset, args.rows or rows, [args.seed])
    described = dict(rows)
    if reference is not None and (reference[0] / "metrics.json").is_file():
        found = {base_row: X.summarize([X.record(reference[0])]), **found}
        described[base_row] = (reference[1], {})
    if not found:
        sys.exit(f"no complete runs under {root}; run without --table-only first.")
    base, first = found.get(base_row), next(iter(found.values()))
    length = f"{epochs} epoch(s)" if epochs else f"the preset's {first['epochs']} epochs"
    note = (f"Budget: {length}, about {first['train_pflops']:.3f} PFLOP per row (less for a narrower net: the PFLOP column). "
            "Judge a trick by validation accuracy (the 2,000 held-out training images); test is reported, not chosen on.")
    # logit adjustment is invisible to the per-epoch validation curve: such rows are also judged on the final
    # model's balanced validation accuracy, adjusted as on test
    adjusted = any(s.get("val_balanced_accuracy") is not None for s in found.values())
    lines = [f"| row | change | PFLOP | val acc |{' val balanced acc, logit-adjusted |' * adjusted} test acc | "
             f"test vs {base_row} | recon MSE | bird / deer / truck recall |", "|---|---|---|---|" + "---|" * adjusted + "---|---|---|---|"]
    for row, s in found.items():
        delta = "" if base is None or row == base_row else f"{100 * (s['test_accuracy'] - base['test_accuracy']):+.2f} pt"
        balanced = f" {X.pct(s.get('val_balanced_accuracy'))} |" if adjusted else ""
        lines.append(f"| {row} | {described[row][0]} | {s['train_pflops']:.3f} | {X.pct(s['val_accuracy'])} |{balanced} "
                     f"{X.pct(s['test_accuracy'])} | {delta} | {s['recon_mse']:.5f} | {X.reduced_recall(s)} |")
    noise = X.collect(root, base_trial, args.preset, [base_row], [args.seed, *args.noise_seeds]).get(base_row)
    if noise and len(noise["seeds"]) > 1:
        found[f"{base_row}-seeds"] = noise
        note += (f" Seed noise at this budget: the {base_row} at seeds {', '.join(map(str, noise['seeds']))} scores "
                 f"{X.pct(noise['val_accuracy'], noise['val_accuracy_sd'])} validation and "
                 f"{X.pct(noise['test_accuracy'], noise['test_accuracy_sd'])} test (mean ± sd), so a row within about "
                 "two sd of it is not a measured effect.")
    return title, note, "\n".join(lines) + "\n", found


def same_compute_epochs(name, base, preset, seed) -> int:
    """Epochs of `name` that see as many training images as `base` at the preset (the same FLOPs per image)."""
    from cifar_ae.training import prepare_data
    from cifar_ae.trials import get_trial
    images = {t: len(prepare_data(get_trial(t), get_trial(t).settings(preset), seed)["y_train"]) for t in (name, base)}
    return max(1, round(get_trial(base).settings(preset)["epochs"] * images[base] / images[name]))


def controls(args, done):
    from cifar_ae.training import run_trial
    found = {}
    for name, what, epochs in controls_of(args.base):
        epochs = same_compute_epochs(name, args.base, args.preset, args.seed) if epochs == "same-compute" else None
        variant = None if epochs is None else f"e{epochs}"
        if not args.table_only:
            done(run_trial(name, args.preset, args.seed, args.runs, epochs=epochs, variant=variant, verbose=2))
        root = Path(args.keep if args.table_only and args.keep else args.runs)
        run = named_folder(root, name, args.preset, args.seed, variant)
        if (run / "metrics.json").is_file():
            found[f"{name} ({what})"] = {**X.record(run), "trial": name, "what": what}
    if not found:
        sys.exit(f"no complete control runs under {root}; run without --table-only first.")
    title = f"Controls of {args.base}: `{args.preset}`, seed {args.seed}"
    note = ("The joint and no-reconstruction nets run the same epochs, so the same training PFLOPs (the decoder runs in "
            "both). The balanced set has 25,000 images (22,500 after the validation split) against 42,500, so it gets "
            "one row at the same epochs and one at the same compute.")
    lines = ["| trial | what differs | epochs | val acc | test acc | recon MSE | PFLOPs | " + " | ".join(X.CLASS_NAMES) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(X.CLASS_NAMES)]
    for r in found.values():
        mse = "" if r["recon_mse"] is None else f"{r['recon_mse']:.5f}"
        lines.append(f"| {r['trial']} | {r['what']} | {r['epochs']} | {X.pct(r['val_accuracy'])} | {X.pct(r['test_accuracy'])} | "
                     f"{mse} | {r['train_pflops']:.3f} | " + " | ".join(f"{100 * r['recall'][c]:.0f}%" for c in X.CLASS_NAMES) + " |")
    return title, note, "\n".join(lines) + "\n", found


# issue 20's goals for the joint net (mean of >= 3 seeds, reconstruction MSE from the same net)
GOALS = (dict(name="90% within 0.15 PFLOP", pflops=0.15, test_accuracy=0.90, recon_mse=0.001),
         dict(name="93% within 0.36 PFLOP", pflops=0.36, test_accuracy=0.93, recon_mse=0.001))
GOAL_SEEDS = 3


def goal_verdict(s) -> str:
    """The tightest goal whose budget this row fits: met, or how far short (test accuracy, MSE, seeds)."""
    goal = next((g for g in GOALS if s["train_pflops"] <= g["pflops"] + 1e-9), None)
    if goal is None:
        return f"over every goal's budget ({GOALS[-1]['pflops']} PFLOP)"
    short = []
    if s["test_accuracy"] < goal["test_accuracy"]:
        short.append(f"{100 * (goal['test_accuracy'] - s['test_accuracy']):.2f} pt short")
    if s["recon_mse"] is None or s["recon_mse"] > goal["recon_mse"]:
        short.append(f"MSE over {goal['recon_mse']}")
    if len(s["seeds"]) < GOAL_SEEDS:
        short.append(f"{len(s['seeds'])} of {GOAL_SEEDS} seeds")
    return f"{goal['name']}: " + ("**met**" if not short else ", ".join(short))


def leaderboard(args):
    """Every v4 time-to-accuracy result in --results, re-read from its kept run folders: validation (what a trial
    is chosen on) and test accuracy over seeds, and where each stands against issue 20's goals."""
    found = {}
    for path in sorted(Path(args.results).glob("time_to_accuracy*.json")):
        r = json.loads(path.read_text())
        if not r.get("trial", "").startswith("v4-"):
            continue
        runs = [Path(s.get("kept_folder") or s["run_folder"]) for s in r["per_seed"]]
        missing = [str(run) for run in runs if not (run / "metrics.json").is_file()]
        if missing:
            sys.exit(f"{path}: its run folder(s) {', '.join(missing)} are missing; restore them from git or rerun "
                     "its command.")
        found[path.stem] = {**X.summarize([X.record(run) for run in runs]), "trial": r["trial"],
                            "preset": r["preset"], "result": str(path), "command": r.get("command")}
    if not found:
        sys.exit(f"no v4 time_to_accuracy*.json under {args.results}; run benchmarks/time_to_accuracy.py first.")
    rows = sorted(found.values(), key=lambda s: (round(s["train_pflops"], 2), -(s["val_accuracy"] or 0)))
    lines = ["| trial | preset | seeds | PFLOP | val acc (best epoch) | val balanced acc, logit-adjusted / not | "
             "test acc | recon MSE | goal |", "|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        s["goal"] = goal_verdict(s)
        adjusted = "" if s.get("val_balanced_accuracy") is None else (
            f"{X.pct(s['val_balanced_accuracy'])} / {X.pct(s['val_balanced_accuracy_without_logit_adjustment'])}")
        lines.append(f"| {s['trial']} | {s['preset']} | {', '.join(map(str, s['seeds']))} | {s['train_pflops']:.3f} | "
                     f"{X.pct(s['val_accuracy'], s['val_accuracy_sd'])} | {adjusted} | "
                     f"{X.pct(s['test_accuracy'], s['test_accuracy_sd'])} | {s['recon_mse']:.5f} | {s['goal']} |")
    title = "v4 joint models against issue 20's goals: every time-to-accuracy result, by budget"
    note = (f"Rows are sorted by budget, then by validation accuracy (the 2,000 held-out training images, best epoch): "
            f"that is the column to choose a trial on; test accuracy (flip + crop TTA, the kept checkpoint, mean ± sd "
            f"over seeds) is reported. A goal counts as met at the mean of {GOAL_SEEDS} or more seeds, with "
            "reconstruction MSE <= 0.001 from the same net. Logit adjustment (a test-time prior correction) is invisible to "
            "the per-epoch validation accuracy; a trial that uses it is judged on the final model's balanced validation "
            "accuracy with and without it (TTA as on test).")
    return title, note, "\n".join(lines) + "\n", found


def figure(args):
    """Test accuracy against training PFLOPs: every time-to-accuracy curve in results/, the v2 runs' final points, and
    airbench94's published point."""
    import matplotlib
    from matplotlib.figure import Figure
    from cifar_ae.plots import save
    fig = Figure(figsize=(12, 5.5))
    ax = fig.add_subplot()
    colors = matplotlib.colormaps["tab20"]  # 20 distinct colours: the curves outnumber the default 10
    for c, path in enumerate(sorted(Path(args.results).glob("time_to_accuracy*.json"))):
        r = json.loads(path.read_text())
        gf = r.get("train_gflops_per_image")
        if gf is None:
            from cifar_ae.training import trial_flops
            from cifar_ae.trials import get_trial
            gf = trial_flops(get_trial(r["trial"])) / 1e9
        pts = [(p["epoch"] * r["train_images"] * gf / 1e6, 100 * p["test_accuracy"]) for p in r["curve"]
               if p.get("test_accuracy") is not None]
        ax.plot(*zip(*pts), marker="o", ms=3, color=colors(c % 20), label=f"{r['trial']}, {r.get('preset', '?')}")
    for marker, (label, pattern) in zip("sD", (("v2 runs, quick", "runs/main/*/*/metrics.json"),
                                               ("v2 runs, study preset", "runs/study/v2-*/*/metrics.json"))):
        pts = []
        for path in sorted(Path(args.results).glob(pattern)):
            m, cfg = json.loads(path.read_text()), json.loads((path.parent / "config.json").read_text())
            pf = m.get("train_pflops")
            if pf is None:  # a run from before FLOPs were recorded: count them now
                from cifar_ae.training import trial_flops, trial_from_config
                pf = trial_flops(trial_from_config(cfg)) * cfg["train_images"] * m["epochs"] / 1e15
            pts.append((pf, 100 * m["test_accuracy"]))
        if pts:
            ax.scatter(*zip(*pts), marker=marker, s=40, color="grey", label=label, zorder=4)
    ax.scatter([AIRBENCH94["pflops"]], [100 * AIRBENCH94["test_accuracy"]], marker="*", s=160, color="black",
               label=AIRBENCH94["label"], zorder=5)
    ax.set_xlabel("training PFLOPs (cifar_ae.compute)")
    ax.set_ylabel("test accuracy (%), per-epoch probe below 60% cut off")
    ax.set_ylim(60, 96)  # the peak-LR collapses (down to 15%) would squash the curves that matter
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save(fig, args.output)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("ablation", "sweep", "controls", "figure", "leaderboard"))
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=1, help="ablation: epochs per row (the budget)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default=None, help="run folders (default: runs/<what>_v4)")
    ap.add_argument("--keep", default="", help="copy the small run files here")
    ap.add_argument("--commit", action="store_true", help="with --keep: commit each run's files and the table at once")
    ap.add_argument("--results", default="results", help="figure: where the time_to_accuracy*.json files are")
    ap.add_argument("--output", default=None, help="table path without suffix, or the figure's .png")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--rows", nargs="+", default=None, metavar="ROW", help="ablation / sweep: only these rows")
    ap.add_argument("--reference", default="results/runs/time_to_accuracy",
                    help="sweep: the runs root holding the lead's own run (its row of the table)")
    ap.add_argument("--base", default=None, help=f"controls: the trial whose controls run (<base>-norecon, "
                    f"<base>-balanced), one of {', '.join(CONTROL_BASES)}; sweep: the lead, one of {', '.join(SWEEPS)}")
    ap.add_argument("--noise-seeds", nargs="+", type=int, default=[], metavar="SEED",
                    help="ablation: also run the baseline at these seeds; the table states their spread")
    args = ap.parse_args(argv)
    bases = {"controls": CONTROL_BASES, "sweep": tuple(SWEEPS)}.get(args.what, ())
    args.base = args.base or (bases[0] if bases else None)  # the first is the default
    if bases and args.base not in bases:
        ap.error(f"--base {args.base!r} has no {args.what}; valid: {', '.join(bases)}")
    table_rows = {"ablation": ABLATIONS, "sweep": SWEEPS.get(args.base, {})}.get(args.what, {})
    unknown = [r for r in args.rows or [] if r not in table_rows]
    if unknown:
        ap.error(f"unknown {args.what} row(s) {', '.join(unknown)}; valid: {', '.join(table_rows) or 'none'}")
    args.runs = args.runs or f"runs/{args.what}_v4"
    if args.what == "figure":
        print(figure(argparse.Namespace(**{**vars(args), "output": args.output or f"{args.runs}.png"})))
        return
    if args.what == "leaderboard":  # from results/ alone: nothing trains
        title, note, body, found = leaderboard(args)
        X.write_table(args.output or "results/leaderboard_v4", title, "python " + " ".join(sys.argv), note, body,
                      {"rows": found})
        return
    if args.commit and not args.keep:
        ap.error("--commit needs --keep DIR (the folder the small run files are copied to)")
    done = X.keeper(args.runs, args.keep, args.commit, f"v4 {args.what} {args.preset}")
    title, note, body, found = {"ablation": ablation, "sweep": sweep, "controls": controls}[args.what](args, done)
    X.write_table(args.output or Path(args.runs) / args.what, title, "python " + " ".join(sys.argv), note, body,
                  {"rows": found}, commit_message=args.commit and not args.table_only and f"results: v4 {args.what}, the table")

if __name__ == "__main__":
    main()
