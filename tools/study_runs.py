"""The study's table at the study's length: every study trial on the `study` preset, one run at a time.

    CIFAR10_DIR=../shared/cifar10 python tools/study_runs.py --cap v2-joint-aug-adam=40 \
        --keep results/runs/study --results results --commit                      # the plan, committed as it goes
    python tools/study_runs.py --table-only --keep results/runs/study --results results   # tables only

`study` trains up to 100 epochs with early stopping on the validation metric (patience 10, best epoch kept).
On a CPU the joint models may not fit a session at that length: `--cap TRIAL=N` stops a trial's runs after N
epochs, in a run folder named `study-s<seed>-max<N>`, and the table says so: a capped run is never reported as
the study's length. Each run resumes where it stopped when the command is rerun (cifar_ae.resume). As each
run finishes its small files (config, history, metrics, figures; not the model) are copied to
results/runs/study/ and, with --commit, committed at once. The tables come only from those copies:
results/study.md via `python -m cifar_ae report --study`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keep_runs import check_keepable, commit, keep  # noqa: E402  (a dev script beside this one)

# the order: the headline trial twice, the other joint models, then v1 and v0 (their autoencoders first);
# two seeds on every row (issue 44). The v0 and v1 seed-0 runs kept in results/runs/study/*/study-s0 are of the nets
# registered before issue 44; the as-built nets' runs go beside them with --variant as-built:
#   python tools/study_runs.py --only v0-dense v0-conv1d v1-feature-classifier --variant as-built \
#       --keep results/runs/study --results results --commit
PLAN = [("v2-joint-aug-adam", 0), ("v2-joint-aug-adam", 1), ("v2-joint-noaug", 0), ("v2-joint-aug-sgd", 0),
        ("v1-feature-classifier", 0), ("v0-dense", 0), ("v0-conv1d", 0), ("v2-joint-noaug", 1), ("v2-joint-aug-sgd", 1),
        ("v0-dense", 1), ("v0-conv1d", 1), ("v1-feature-classifier", 1)]

# The study's side experiments: (row, base trial, Trial changes, what the study saw). Each runs `SIDE_EPOCHS` epochs
# of `quick` (the length that shows the effect), seed 0, into <runs>/side/<trial>/quick-s0-<row> (the classifier
# rows share one upstream autoencoder run, the decoder-transpose row's); results/study_side.md tables them.
SIDE_EPOCHS = {"autoencoder": 10, "classifier": 5, "joint": 3}
# they ran on the v1 net registered before issue 44, one conv per block (v1-cnn-ae has the study's two since)
ONE_CONV = {"model_args": {"convs_per_block": 1}}
SIDE = [
    ("decoder-transpose", "v1-cnn-ae", ONE_CONV, "Conv2DTranspose decoder: MSE 0.0007"),
    ("decoder-upsampling-1", "v1-cnn-ae", {"model_args": {"upsampling": "upsampling", "convs_per_block": 1}},
     "UpSampling2D, one block of 32 and 64 filters: stuck at MSE 0.05 for 10+ epochs"),
    ("decoder-upsampling-2", "v1-cnn-ae", {"model_args": {"upsampling": "upsampling", "convs_per_block": 2}},
     "UpSampling2D, two blocks: MSE 0.008 after 30 epochs"),
    ("ae-batch-64", "v1-cnn-ae", {**ONE_CONV, "batch_size": 64},
     "batch 64: MSE 0.0008 (batch 128: 0.0007, converged earlier)"),
    ("ae-scaling-mean", "v1-cnn-ae", {**ONE_CONV, "scaling": "mean"}, "mean-subtracted input: MSE ~0.015"),
    ("ae-scaling-zscore", "v1-cnn-ae", {**ONE_CONV, "scaling": "zscore"},
     "z-scored input: validation MSE ~1.4 (in z units)"),
    ("cls-sgd-1e-3-b128", "v1-feature-classifier", {"optimizer": "sgd", "learning_rate": 1e-3, "batch_size": 128},
     "SGD, lr 1e-3, batch 128"),
    ("cls-adam-1e-2-b128", "v1-feature-classifier", {"learning_rate": 1e-2, "batch_size": 128},
     "Adam, lr 1e-2, batch 128: stuck near 85% train / 72% validation"),
    ("cls-adam-1e-3-b64", "v1-feature-classifier", {}, "Adam, lr 1e-3, batch 64, decay on plateau: 75%"),
    *[(f"joint-b{b}-lr{lr:g}", "v2-joint-noaug", {"batch_size": b, "learning_rate": lr},
       {(64, 1e-3): "stable", (128, 1e-2): "fast early, stuck near 78%"}.get((b, lr), ""))
      for b in (32, 64, 128) for lr in (1e-3, 1e-2)],
    ("joint-tied", "v2-joint-noaug", {"model_args": {"tie_weights": True}}, "weight tying: no gain in reconstruction"),
]


def parse_caps(items) -> dict:
    caps = {}
    for item in items:
        name, _, n = item.partition("=")
        if not n.isdigit() or int(n) < 1:
            raise SystemExit(f"bad --cap {item!r}; write TRIAL=EPOCHS, e.g. --cap v2-joint-aug-adam=40")
        caps[name] = int(n)
    from cifar_ae.trials import TRIALS  # a typo would cap nothing, silently
    cappable = {t for t, _ in PLAN} | {TRIALS[t].upstream for t, _ in PLAN if TRIALS[t].upstream}
    unknown = sorted(set(caps) - cappable)
    if unknown:
        raise SystemExit(f"bad --cap {unknown[0]!r}: not a trial of the plan; cap one of {', '.join(sorted(cappable))}")
    return caps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/study", help="run folders (models included)")
    ap.add_argument("--keep", default=None, help="copy each run's small files here, e.g. results/runs/study (the "
                    "tables are then built from the copies; default: no copy, tables from --runs)")
    ap.add_argument("--only", nargs="+", default=None, metavar="TRIAL[:SEED]", help="run these entries of the plan")
    ap.add_argument("--cap", action="append", default=[], metavar="TRIAL=EPOCHS",
                    help="stop this trial's runs after EPOCHS (the folder and the table say so)")
    ap.add_argument("--variant", default=None, metavar="NAME", help="end every run folder of this call, and its "
                    "autoencoder's, with -NAME (e.g. as-built, once the registered net changed: the earlier runs keep "
                    "study-s<seed>, and the table tells the two apart by what they changed)")
    ap.add_argument("--commit", action="store_true", help="git-commit each finished run's small files")
    ap.add_argument("--preset", default="study", help="study (default); smoke for a test of the loop")
    ap.add_argument("--results", default=None, help="where study.md / study.json go (default: --runs; results/ "
                    "only when named here)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--side", action="store_true", help="run the side experiments (SIDE) instead of the plan")
    ap.add_argument("--rows", nargs="+", default=None, metavar="ROW", help="with --side: run only these rows (the "
                    "table still lists every row that has run)")
    args = ap.parse_args(argv)
    caps = parse_caps(args.cap)
    runs_root = Path(args.runs)
    keep_root = Path(args.keep) if args.keep else None
    args.results = args.results or args.runs
    if args.side:
        return run_side(args, runs_root, keep_root)
    if not args.table_only:
        from cifar_ae.runs import variant_name
        from cifar_ae.training import plan_run, run_trial  # imports keras: not needed for --table-only
        from cifar_ae.trials import get_trial
        plan = PLAN
        if args.only:
            wanted = {(o.split(":")[0], int(o.split(":")[1]) if ":" in o else None) for o in args.only}
            plan = [(t, s) for t, s in PLAN if (t, s) in wanted or (t, None) in wanted]
        for trial, seed in plan:
            cap = caps.get(trial)
            # a classifier's frozen autoencoder is capped by its own name (--cap v0-mlp-ae=30); the classifier's
            # folder then says so too, for it is another run than one on an uncapped encoder
            up_cap = caps.get(get_trial(trial).upstream)
            variant = variant_name(f"max{cap}" if cap else "", f"ae-max{up_cap}" if up_cap else "", args.variant)
            up_variant = variant_name(f"max{up_cap}" if up_cap else "", args.variant)  # as the probe finds it
            how = dict(epochs=cap, variant=variant, upstream_epochs=up_cap,
                       upstream_variant=up_variant if get_trial(trial).upstream else None)
            if keep_root is not None:  # before training: a kept record of another run is never overwritten
                planned = plan_run(trial, args.preset, seed, runs_root, **how)
                for step in (planned, planned.upstream):
                    if step is not None:
                        check_keepable(step.folder, step.key_digest, runs_root, keep_root)
            t0 = time.time()
            print(f"=== {trial} seed {seed} on `study`" + (f", capped at {cap} epochs" if cap else "")
                  + (f", its autoencoder capped at {up_cap}" if up_cap else ""), flush=True)
            run = run_trial(trial, args.preset, seed, runs_root, verbose=2, **how)
            kept = [run]
            upstream = json.loads((run / "config.json").read_text()).get("upstream_run")
            if upstream:
                kept.append(Path(upstream))
            if keep_root is not None:
                kept = [keep(r, runs_root, keep_root) for r in kept]  # small files and figures
            print(f"=== {trial} seed {seed}: done in {time.time() - t0:.0f} s this call -> {kept[0]}", flush=True)
            tables = write_tables(keep_root or runs_root, args.results, args.preset)  # the run and its row land together
            if args.commit and keep_root is not None:
                commit(kept + tables, f"results: study preset, {trial} seed {seed}" + (f" (capped at {cap} epochs)" if cap else "")
                       + (f" (autoencoder capped at {up_cap} epochs)" if up_cap else ""))
    write_tables(keep_root or runs_root, args.results, args.preset)


def write_tables(root, results, preset) -> list:
    from cifar_ae.report import write_study_tables
    paths = [Path(p) for p in write_study_tables(root, results, preset=preset)]
    for path in paths:
        print(f"wrote {path}")
    return paths


def _curve(run, keys):
    """'a → b → c': the first, middle and last epoch's value of the first history column of `keys` present."""
    from cifar_ae.experiments import _history_column
    for key in keys:
        vals = _history_column(run, key)
        if vals:
            picks = sorted({0, len(vals) // 2, len(vals) - 1})
            fmt = "{:.4f}" if "mse" in key else "{:.1%}"
            return " → ".join(f"{i + 1}: {fmt.format(vals[i])}" for i in picks)
    return ""


def run_side(args, runs_root, keep_root):
    """The side experiments, one run each (resumable), then results/study_side.md from their run folders."""
    from cifar_ae import experiments as X
    from cifar_ae.trials import get_trial
    side_preset = "quick" if args.preset == "study" else args.preset
    # quick trains each row its side length; another preset (smoke: a test of the loop) its own length
    lengths = SIDE_EPOCHS if side_preset == "quick" else {task: None for task in SIDE_EPOCHS}
    names = [row for row, *_ in SIDE]
    unknown = [r for r in (args.rows or []) if r not in names]
    if unknown:
        raise SystemExit(f"bad --rows {unknown[0]!r}: not a side experiment; choose from {', '.join(names)}")
    wanted = args.rows or names
    records = []
    for row, base, changes, saw in SIDE:
        epochs = lengths[get_trial(base).task]
        if not args.table_only and row in wanted:
            from cifar_ae.training import run_trial
            # the classifier rows read the decoder-transpose row's autoencoder (at the side length) rather than
            # training another one
            up = (dict(upstream_epochs=lengths["autoencoder"], upstream_variant=SIDE[0][0],
                       upstream=get_trial(SIDE[0][1]).replace(**SIDE[0][2]))
                  if get_trial(base).upstream == SIDE[0][1] else {})
            print(f"=== side {row}: {base} on `{side_preset}`" + (f", {epochs} epochs" if epochs else ""), flush=True)
            run = run_trial(base, side_preset, 0, runs_root / "side", epochs=epochs, variant=row, verbose=2, **up,
                            **changes)
            if keep_root is not None:
                kept = [keep(run, runs_root, keep_root)]
                upstream = json.loads((run / "config.json").read_text()).get("upstream_run")
                if upstream:
                    kept.append(keep(Path(upstream), runs_root, keep_root))
                if args.commit:
                    commit(kept, f"results: study side experiment {row} ({epochs or 'its'} epochs of {side_preset})")
    for row, base, changes, saw in SIDE:  # after the training: a classifier row may have trained another's encoder
        run = (keep_root or runs_root) / "side" / base / f"{side_preset}-s0-{row}"
        if (run / "metrics.json").is_file():
            records.append((row, base, changes, saw, run, X.record(run)))
    lines = ["# The study's side experiments", "", f"Generated by `python tools/study_runs.py --side --table-only "
             + (f"--keep {keep_root} " if keep_root else f"--runs {runs_root} ") + f"--results {args.results}` "
             f"from the run folders under {keep_root or runs_root}/side. Each row is its base trial with the changes "
             f"shown, seed 0, on `{side_preset}` for " + ", ".join(f"{n or 'its'} epochs ({k})" for k, n in lengths.items())
             + ": long enough to show each effect, not the study's length. The classifier rows share one frozen "
             f"encoder, the `{SIDE[0][0]}` row's. Curves give the first, middle and last epoch. MSE is against "
             "the [0, 1] image in every row: a mean-subtracted or z-scored input is still reconstructed in [0, 1] "
             "(the study reconstructed the scaled image itself, so its MSEs for those rows are in other units).", "",
             f"Rows run: {len(records)} of {len(SIDE)}"
             + ("" if len(records) == len(SIDE) else " (not yet run: "
                + ", ".join(r for r in names if r not in {rec[0] for rec in records}) + ")") + ".", "",
             "| row | base | changes | epochs | test MSE | test acc | train acc | val MSE by epoch | val acc by epoch "
             "| what the study saw |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row, base, changes, saw, run, r in records:
        mse = "" if r["recon_mse"] is None else f"{r['recon_mse']:.5f}"
        acc = "" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.1f}%"
        train = X._history_column(run, "label_accuracy") or X._history_column(run, "accuracy")
        lines.append(f"| {row} | {base} | {json.dumps(changes) if changes else '(as registered)'} | {r['epochs']} | "
                     f"{mse} | {acc} | {'' if not train else f'{train[-1]:.1%}'} | "
                     f"{_curve(run, ['val_reconstruction_mse', 'val_mse'])} | "
                     f"{_curve(run, ['val_label_accuracy', 'val_accuracy'])} | {saw} |")
    out = Path(args.results) / "study_side.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    from cifar_ae.evaluate import write_text_atomic
    write_text_atomic(out, "\n".join(lines) + "\n")
    print(f"wrote {out} ({len(records)} of {len(SIDE)} rows)")


if __name__ == "__main__":
    sys.exit(main())
