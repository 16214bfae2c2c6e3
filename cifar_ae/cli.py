"""Command line: python -m cifar_ae list | train NAME | evaluate RUN | report.

Every error a user can cause (unknown trial or preset, missing data) prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path


def cmd_list(args):
    from .trials import PRESETS, all_trials
    trials = all_trials()
    flops = {}
    if not args.no_flops:
        from .training import trial_flops
        flops = {name: trial_flops(t) for name, t in trials.items()}
    width = max(map(len, trials))
    print(f"{'trial':<{width}}  {'train GFLOP/img':>15}  {'epochs ' + '/'.join(PRESETS):<26} the study")
    for t in trials.values():
        epochs = "/".join(str(t.settings(p)["epochs"]) for p in PRESETS)
        study = ", ".join(f"{k} {v}" for k, v in t.study.items() if k != "train_accuracy")
        gflops = f"{flops[t.name] / 1e9:15.3f}" if t.name in flops else f"{'':15}"
        print(f"{t.name:<{width}}  {gflops}  {epochs:<26} {study}")
    print("Variants, sweeps, ablations and controls: experiments/*.toml (python -m cifar_ae experiment FILE).")


def cmd_experiment(args):
    from .experiments import commands, load_experiment, run_experiment, select, write_table
    experiment = load_experiment(args.file)
    rows, seeds = select(experiment, args.rows), args.seeds or list(experiment.seeds)
    preset = args.preset or experiment.preset
    runs_root = Path(args.runs or os.environ.get("CIFAR_AE_RUNS") or "runs")
    if args.commands:
        print("\n".join(commands(experiment, rows, seeds, preset, runs_root)))
        return
    if not args.table_only:
        run_experiment(experiment, rows, seeds, preset, runs_root, verbose=1 if sys.stdout.isatty() else 2)
    command = "python -m cifar_ae " + " ".join(sys.argv[1:]) if args.table_only else None
    table = write_table(experiment, runs_root, args.tables or runs_root, None, command)
    print(table.read_text())
    print(f"wrote {table} and {table.with_suffix('.json')}")


def cmd_probe(args):
    from .probe import at_preset, load_probe, run_probe, write_table
    probe = load_probe(args.file)
    if args.preset:
        probe = at_preset(probe, args.preset)
    runs_root = Path(args.runs or os.environ.get("CIFAR_AE_RUNS") or "runs")
    if not args.table_only:
        run_probe(probe, args.rows, args.seeds, runs_root)
    command = "python -m cifar_ae " + " ".join(sys.argv[1:]) if args.table_only else None
    table = write_table(probe, runs_root, args.tables or runs_root, command)
    print(table.read_text())
    print(f"wrote {table} and {table.with_suffix('.json')}")


def cmd_train(args):
    from .runinfo import parse_assignments
    from .training import run_trial
    changes, verbose = parse_assignments(args.set), 1 if sys.stdout.isatty() else 2
    if ":" in args.name:  # an experiment row, <file>:<row>: its own folder, at its compute
        from .experiments import row_trial, run_row
        from .training import resolve_trial, runs_root
        trial = resolve_trial(row_trial(args.name), **changes) if changes else None
        run = run_row(args.name, args.preset, args.seed, runs_root(args.out),
                      trial=trial, variant=args.variant, epochs=args.epochs, force=args.force, verbose=verbose)
    else:
        run = run_trial(args.name, args.preset, args.seed, args.out, epochs=args.epochs, force=args.force,
                        verbose=verbose, variant=args.variant, **changes)
    from .completeness import require_usable
    print(against_the_study(require_usable(run).metrics))  # run_trial printed the run's own line


def against_the_study(m) -> str:
    """One line: this run's headline number beside the study's, with its length and compute."""
    study, parts = m.get("study") or {}, []
    if "test_accuracy" in m:
        theirs = study.get("test_accuracy")
        parts.append(f"test accuracy {100 * m['test_accuracy']:.1f}%" +
                     ("" if theirs is None else f" (the study: {100 * theirs:.0f}%, {100 * (m['test_accuracy'] - theirs):+.1f} pt)"))
    if "recon_mse" in m:
        theirs = study.get("recon_mse")
        parts.append(f"reconstruction MSE {m['recon_mse']:.5f}" + ("" if theirs is None else f" (the study: {theirs})"))
    length = f"{m.get('epochs')} epochs of `{m.get('preset')}`"
    if m.get("train_pflops") is not None:
        length += f", {m['train_pflops']:.3f} PFLOP"
    if m.get("train_seconds"):
        length += f", {m['train_seconds'] / 60:.1f} min training"
    note = "" if m.get("preset") == "study" else "; the study's numbers are for its full length (`--preset study`, results/study.md)"
    return f"{m.get('trial')}: " + "; ".join(parts) + f" after {length}{note}."


def cmd_evaluate(args):
    from .training import reevaluate
    metrics = reevaluate(Path(args.run))
    shown = {k: metrics[k] for k in ("test_accuracy", "balanced_accuracy", "recon_mse", "recon_psnr") if k in metrics}
    print(f"{args.run}: {json.dumps(shown)}")


def cmd_report(args):
    from .evaluate import write_text_atomic
    from .report import collect_runs, markdown_table, write_study_tables
    if args.index:  # results/README.md and the README's results table, from the committed tables
        from .front import write_index
        for path in write_index():
            print(f"wrote {path}")
        return
    if args.study:  # the study's table: study trials on the study preset -> <output>/study.md and study.json
        for path in write_study_tables(args.runs, args.output or args.runs, preset=args.preset or "study"):
            print(f"wrote {path}")
        return
    if args.notebooks:  # executed notebooks' timing.json files -> one table
        from .notebooks_run import timing_table
        table = (f"Generated by `python -m cifar_ae report {' '.join(sys.argv[2:])}` from the notebooks' timing.json "
                 "files.\n\n" + timing_table(args.runs))
        if args.output:
            write_text_atomic(args.output, table)
        print(table)
        return
    runs = collect_runs(args.runs)
    if args.preset:
        runs = [r for r in runs if r["metrics"].get("preset") == args.preset]
    table = f"Generated by `python -m cifar_ae report {' '.join(sys.argv[2:])}` from {len(runs)} run folders.\n\n" + markdown_table(runs)
    if args.output:
        write_text_atomic(args.output, table)
    print(table)


def cmd_figures(args):
    """Redraw what a run folder's small files hold: curves (history.csv), the confusion matrix (metrics.json) and
    the class distribution (config.json's class counts). Reconstructions and t-SNE need the model."""
    from .report import redraw_figures
    for run in args.runs:
        for path in redraw_figures(run):
            print(path)


def cmd_compare(args):
    from .report import compare_figure, compare_markdown
    print(compare_markdown(*args.runs), end="")
    if args.figure:
        from .plots import save
        print(f"curves: {save(compare_figure(*args.runs), args.figure)}")


def cmd_notebooks(args):
    from .notebooks_run import run_notebooks
    run_notebooks(args.names, args.preset, args.seed, args.runs, args.out, args.data, args.force, args.param,
                  progress_bar=sys.stderr.isatty())


def cmd_tune(args):
    from .tuning import run_search
    summary = run_search(args.tuner, args.max_trials, args.preset, args.model, args.seed, args.overwrite,
                         epochs=args.epochs, runs_dir=args.out, results_dir=args.results, save_trial=args.save_trial,
                         chief=args.chief, worker=args.worker, oracle_ip=args.oracle_ip, oracle_port=args.oracle_port,
                         verbose=1 if sys.stdout.isatty() else 2, recycle_every=args.recycle_every,
                         allow_remote=args.allow_remote_workers, trial_timeout=args.trial_timeout)
    if summary:
        best = summary["best"]
        print(json.dumps({"best_trial": best["trial_id"], "val_balanced_accuracy": best["val_balanced_accuracy"],
                          "test_accuracy": best["test"]["test_accuracy"], "saved_trial": summary["saved_trial"]["name"]}))


def cmd_anomaly(args):
    from .anomaly import cli_command, load_result, run_protocol
    run = run_protocol(args.protocol, args.preset, args.seed, args.out, command=cli_command(),
                       verbose=2 if args.verbose else 0)
    result = load_result(run)
    print((run / "auroc.md").read_text())
    print(f"{run}: best {result['best']['score']} mean AUROC {result['best']['mean']:.1f}")


def _file_of_rows(p, file_help, preset_help, layout, table_only_help):
    """The arguments `experiment` and `probe` share: a file of rows, which rows and seeds, where runs and tables go."""
    p.add_argument("file", help=file_help)
    p.add_argument("--rows", nargs="+", default=None, metavar="ROW", help="only these rows (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED", help="default: the file's seeds")
    p.add_argument("--preset", default=None, help=preset_help)
    p.add_argument("--runs", default=None, help=f"runs root (default: $CIFAR_AE_RUNS or ./runs); they live in {layout}")
    p.add_argument("--tables", default=None, metavar="DIR", help="write <file>.md/.json here (default: --runs)")
    p.add_argument("--table-only", action="store_true", help=table_only_help)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cifar_ae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the named trials, with training FLOPs per image (cifar_ae.compute)")
    p.add_argument("--no-flops", action="store_true", help="skip building the models (no TensorFlow import)")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("train", help="train one trial into runs/<trial>/<preset>-s<seed>, or one experiment row "
                       "(<file>:<row>, e.g. v4_honest:recon40) into runs/<file>/<row>/<preset>-s<seed>")
    p.add_argument("name", help="a registered trial (`list`) or an experiment row, <file>:<row>")
    p.add_argument("--preset", default="quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="runs root (default: $CIFAR_AE_RUNS or ./runs)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (a variant run)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a Trial field for this run, e.g. --set learning_rate=3e-4 (model_args keys are merged)")
    p.add_argument("--variant", default=None, help="name the changed run's folder <preset>-s<seed>-<VARIANT>")
    p.add_argument("--force", action="store_true", help="retrain this run even if it is complete")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="re-evaluate a run folder's saved model on the test set")
    p.add_argument("run")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("report", help="markdown table of all run folders")
    p.add_argument("--runs", default=os.environ.get("CIFAR_AE_RUNS", "runs"))
    p.add_argument("--preset", default=None)
    p.add_argument("--output", default=None, help="also write the table to this file (with --study: a folder)")
    p.add_argument("--study", action="store_true", help="the study's table (study.md): mean and sd over seeds, "
                   "the study's numbers, verdicts, per-class recall")
    p.add_argument("--index", action="store_true", help="rewrite results/README.md and the README's results table "
                   "from the committed tables")
    p.add_argument("--notebooks", action="store_true", help="a table of the executed notebooks' timing.json "
                   "files under --runs (wall time, trial runs trained or reused)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("experiment", help="train an experiment file's missing runs, then write its table")
    _file_of_rows(p, "an experiment file, e.g. experiments/v4.toml", "default: the file's preset",
                  "<runs>/<experiment>/<row>/<preset>-s<seed>", "train nothing; table the complete runs")
    p.add_argument("--commands", action="store_true", help="print one command per missing run (for a scheduler) "
                   "and train nothing")
    p.set_defaults(func=cmd_experiment)
    p = sub.add_parser("probe", help="a linear probe of frozen features (experiments/probes/*.toml), then its table")
    _file_of_rows(p, "a probe file, e.g. experiments/probes/probe.toml",
                  "the encoders' preset and the data sizes (default: the file's)",
                  "<runs>/probe/<file>/<row>/<preset>-s<seed>, encoders where train and experiment put them",
                  "fit nothing; table the finished probes")
    p.set_defaults(func=cmd_probe)
    p = sub.add_parser("figures", help="redraw a run folder's figures from its small files")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.set_defaults(func=cmd_figures)
    p = sub.add_parser("compare", help="two or more run folders side by side: metrics, per-class recall, curves")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, e.g. runs/v2-joint-noaug/quick-s0 (baseline first)")
    p.add_argument("--figure", default=None, metavar="PNG", help="also write the overlaid training curves here")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("notebooks", help="execute research notebooks (papermill) into runs/notebooks/<name>/<preset>-s<seed>")
    p.add_argument("names", nargs="*", metavar="NAME", help="notebook stem or alias (v0, v1, v2-noaug, v2-aug-adam, v2-aug-sgd); none = all")
    p.add_argument("--preset", default="quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=None, help="trial runs root the notebooks read and write (default: $CIFAR_AE_RUNS or the repo's runs/)")
    p.add_argument("--out", default=None, help="executed notebooks root (default: <runs>/notebooks)")
    p.add_argument("--data", default=None, help="CIFAR10_DIR parameter (default: the environment's)")
    p.add_argument("--force", action="store_true", help="FORCE=True: retrain runs the notebooks would reuse")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="another notebook parameter")
    p.set_defaults(func=cmd_notebooks)
    p = sub.add_parser("tune", help="keras-tuner search (random, bayesian, hyperband, grid); resumes; chief/worker mode")
    p.add_argument("--tuner", choices=["random", "bayesian", "hyperband", "grid"], default="bayesian",
                   help="grid enumerates a smaller, listed space (depth x optimizer x learning rate x batch x weights)")
    p.add_argument("--max-trials", type=int, required=True)
    p.add_argument("--preset", default="quick", help="search size: smoke | quick | full (images and epochs per trial)")
    p.add_argument("--model", choices=["joint", "feature-classifier"], default="joint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="start the search over instead of continuing it")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs per trial")
    p.add_argument("--out", default=None, help="runs root; the search lives in <out>/tuning/<model>-<tuner>-<preset>-s<seed>")
    p.add_argument("--results", default=None, help="where tuning.json/.md/_scores.png and tuned_trials.json go "
                   "(default: the search's project folder under --out; results/ only when named here)")
    p.add_argument("--save-trial", default=None, metavar="NAME", help="name of the saved best trial (default tuned-<model>-<tuner>-<preset>)")
    p.add_argument("--chief", action="store_true", help="run the oracle for workers (KERASTUNER_TUNER_ID=chief)")
    p.add_argument("--worker", default=None, metavar="ID", help="run trials for the chief (KERASTUNER_TUNER_ID=worker<ID>)")
    p.add_argument("--oracle-ip", default=None, help="chief address (KERASTUNER_ORACLE_IP; default 127.0.0.1); "
                   "the chief binds it")
    p.add_argument("--allow-remote-workers", action="store_true",
                   help="let the chief bind a non-loopback address (keras-tuner's gRPC is unauthenticated: private "
                        "networks only; prefer an SSH tunnel to 127.0.0.1)")
    p.add_argument("--trial-timeout", type=float, default=None, metavar="S",
                   help="chief: expire a trial not ended within S seconds (default 3600) and send it for retry")
    p.add_argument("--oracle-port", type=int, default=None, help="chief port (KERASTUNER_ORACLE_PORT)")
    p.add_argument("--recycle-every", type=int, default=10, metavar="K",
                   help="re-execute the process after K trials to return TensorFlow's memory (0: never)")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("anomaly", help="anomaly detection AUROC into runs/anomaly/<protocol>/<preset>-s<seed>")
    p.add_argument("--protocol", required=True, choices=("one-class", "held-out", "corruptions"))
    p.add_argument("--preset", default="quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="runs root (default: $CIFAR_AE_RUNS or ./runs)")
    p.add_argument("--verbose", action="store_true", help="print Keras training progress")
    p.set_defaults(func=cmd_anomaly)
    args = parser.parse_args(argv)
    from .runinfo import set_command
    set_command(sys.argv[1:] if argv is None else argv)
    from .quiet import quiet_tensorflow
    quiet_tensorflow(import_now=False)
    from .data import DataError
    try:
        args.func(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment: a full disk, a read-only filesystem, a file where a folder belongs
        fix = {errno.ENOSPC: "the disk is full: free space, or pass --out / set CIFAR_AE_RUNS to another disk",
               errno.EROFS: "the filesystem is read-only: pass --out / set CIFAR_AE_RUNS to a writable folder",
               errno.EACCES: "no permission: pass --out / set CIFAR_AE_RUNS to a folder you can write"}.get(
            e.errno, "fix that path and rerun")
        print(f"error: {e.filename or ''}: {e.strerror or e}; {fix}.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
