"""Running a search: the tuners (random, Bayesian, Hyperband, grid), resume and process recycling, the upstream
autoencoder, and the end of a search: re-scoring the best, the test set scored once, the results written."""
from __future__ import annotations

import fcntl
import functools
import gc
import os
import shlex
import socket
import sys
import time
from pathlib import Path

import numpy as np
import keras
import keras_tuner as kt

from .. import evaluate as E, plots as P
from .distributed import configure_distributed, guard
from .report import SIDECAR, collect_trials, save_tuned_trial, scores_figure, tuned_trial_record, write_markdown
from .space import HYPERMODELS, MODELS, UPSTREAM, search_settings

TUNERS = ("random", "bayesian", "hyperband", "grid")


def _rss_mb():
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20, 1)
    except (OSError, ValueError, IndexError):
        return None


class _Recording:
    """Tuner mixin: records who ran each trial and how long it took; clears the Keras session after it.

    Keras models are freed by then, but TensorFlow 2.21 keeps each fit's traced step functions (~20-40 MB a
    trial here, also in a plain Keras loop). With `recycle_every` K the process re-executes itself after K
    trials (state is on disk, so the search simply continues), which returns that memory.
    """
    recycle_every = 0
    recycle_argv = None
    recycle_command = None
    trials_here = 0

    def run_trial(self, trial, *args, **kwargs):
        t0, rss0, status = time.perf_counter(), _rss_mb(), "failed"
        try:
            result = super().run_trial(trial, *args, **kwargs)
            status = "ran"
            return result
        finally:
            E.write_json_atomic(Path(self.get_trial_dir(trial.trial_id)) / SIDECAR, {
                "trial_id": trial.trial_id, "tuner_id": self.tuner_id, "host": socket.gethostname(), "pid": os.getpid(),
                "seconds": round(time.perf_counter() - t0, 2), "status": status, "rss_mb_before": rss0,
                "rss_mb_after": _rss_mb()})

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        keras.backend.clear_session()
        gc.collect()
        self.trials_here += 1
        remaining = getattr(self.oracle, "remaining_trials", None)  # a worker's OracleClient has none
        more = remaining is None or remaining() is None or remaining() > 0
        if self.recycle_every and self.recycle_argv and self.trials_here >= self.recycle_every and more:
            print(f"[tune] {self.trials_here} trials in this process (RSS {_rss_mb()} MB): re-executing it to "
                  "return TensorFlow's memory; the search continues from its project directory", flush=True)
            sys.stderr.flush()
            if self.recycle_command:  # so the next process records the command as it was typed
                os.environ["CIFAR_AE_TUNE_COMMAND"] = self.recycle_command
            os.execv(self.recycle_argv[0], self.recycle_argv)


class RandomTuner(_Recording, kt.RandomSearch):
    pass


class BayesianTuner(_Recording, kt.BayesianOptimization):
    pass


class HyperbandTuner(_Recording, kt.Hyperband):
    pass


class ResumableGridOracle(kt.oracles.GridSearchOracle):
    """keras-tuner 1.4's grid oracle keeps its place in the grid only in memory, so a reloaded search stops at once;
    here that place is rebuilt from the trials it reloads, and a rerun continues the grid."""

    def reload(self):
        super().reload()
        from keras_tuner.src.tuners.gridsearch import LinkedList
        ids = sorted(self.start_order, key=functools.cmp_to_key(
            lambda a, b: self._compare(self.trials[a].hyperparameters.values, self.trials[b].hyperparameters.values)))
        self._ordered_ids = LinkedList()
        for trial_id in ids:  # appended in grid order
            self._ordered_ids.insert(trial_id)
        self._populate_next = [t for t in self.end_order if t in self.trials]


class GridTuner(_Recording, kt.Tuner):
    """keras-tuner's GridSearch over a ResumableGridOracle."""

    def __init__(self, hypermodel=None, objective=None, max_trials=None, seed=None, max_consecutive_failed_trials=3,
                 **kwargs):
        oracle = ResumableGridOracle(objective=objective, max_trials=max_trials, seed=seed,
                                     max_consecutive_failed_trials=max_consecutive_failed_trials)
        super().__init__(oracle, hypermodel, **kwargs)


def project_name(model, tuner, preset, seed):
    return f"{model}-{tuner}-{preset}-s{seed}"


def tuning_dir(runs_dir=None) -> Path:
    from ..training import DEFAULT_OUT
    return Path(runs_dir or DEFAULT_OUT) / "tuning"


def make_tuner(tuner, hypermodel, max_trials, epochs, seed=0, directory=None, name=None, overwrite=False,
               trial_timeout=None):
    """A keras-tuner tuner over `hypermodel`, stored in directory/name (reloaded from there unless overwrite);
    its oracle checks every trial report (TrialGuard)."""
    t = _make_tuner(tuner, hypermodel, max_trials, epochs, seed, directory, name, overwrite)
    if not hasattr(t.oracle, "stub"):  # a worker's OracleClient proxies to the chief, which does the checking
        guard(t.oracle, trial_timeout)
    return t


def _make_tuner(tuner, hypermodel, max_trials, epochs, seed, directory, name, overwrite):
    if tuner not in TUNERS:
        raise ValueError(f"unknown tuner '{tuner}'; valid tuners: {', '.join(TUNERS)}.")
    objective = kt.Objective(hypermodel.objective, direction="max")
    # keras-tuner treats seed 0 as "no seed"; offset it so --seed 0 is reproducible too
    common = dict(hypermodel=hypermodel, objective=objective, seed=seed + 1, directory=str(directory),
                  project_name=name, overwrite=overwrite, max_consecutive_failed_trials=3)
    if tuner == "random":
        return RandomTuner(max_trials=max_trials, **common)
    if tuner == "bayesian":
        # default is 3 random points per dimension (~40 here): with a handful of trials the GP would never
        # be used, so start it after a third of the budget (at least 2 random points)
        return BayesianTuner(max_trials=max_trials, num_initial_points=max(2, max_trials // 3), **common)
    if tuner == "grid":
        return GridTuner(max_trials=max_trials, **common)  # stops early when the grid is exhausted
    t = HyperbandTuner(max_epochs=max(2, epochs), factor=2, **common)
    t.oracle.max_trials = max_trials  # Hyperband sizes itself by epochs; --max-trials caps it as well
    return t


def ensure_upstream(preset, seed=0, runs_dir=None, verbose=2) -> Path:
    """The `v1-cnn-ae` run the feature-classifier search needs, trained once even when workers start together."""
    from ..training import is_complete, run_dir_for, run_trial
    run = run_dir_for(UPSTREAM, preset, seed, runs_dir)
    if is_complete(run):
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f".{run.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait here, then find it complete
        if not is_complete(run):
            print(f"[tune] training upstream autoencoder {UPSTREAM} ({preset}, seed {seed}) first -> {run}")
            run_trial(UPSTREAM, preset, seed, runs_dir, verbose=verbose)
    return run


def run_search(tuner="bayesian", max_trials=10, preset="quick", model="joint", seed=0, overwrite=False,
               epochs=None, runs_dir=None, results_dir=None, save_trial=None, chief=False, worker=None,
               oracle_ip=None, oracle_port=None, source=None, verbose=1, command=None, recycle_every=0,
               recycle_argv=None, allow_remote=False, trial_timeout=None, rescore_top=3) -> dict | None:
    """Run (or continue) a search; the chief or single process then re-scores the best configurations itself,
    scores the best on the test set once and writes tuning.json / tuning.md / tuning_scores.png and the tuned
    trial to `results_dir` (default: the search's own project folder; results/ only when asked). Returns that
    summary (None on a worker). `recycle_every` K: re-execute `recycle_argv` (default: this `python -m cifar_ae
    tune` command without --overwrite) after every K trials, to keep memory flat."""
    from ..trials import check_name
    if save_trial is not None:
        check_name(save_trial, "--save-trial")
    if model not in MODELS:
        raise ValueError(f"unknown model '{model}'; valid models: {', '.join(MODELS)}.")
    settings = search_settings(preset)  # an unknown preset fails here
    if tuner not in TUNERS:
        raise ValueError(f"unknown tuner '{tuner}'; valid tuners: {', '.join(TUNERS)}.")
    if int(max_trials) < 1:
        raise ValueError(f"--max-trials must be at least 1, got {max_trials}.")
    if epochs is not None:
        from ..trials import check_epochs
        check_epochs(epochs)  # before the search: --epochs 0 would run every trial, then fail
    role = configure_distributed(chief, worker, oracle_ip, oracle_port, allow_remote)
    if role == "worker" and overwrite:
        overwrite = False  # only the chief may wipe the shared project directory
        print("[tune] --overwrite is ignored on a worker (the chief owns the project directory)")
    if epochs is not None:
        settings["epochs"] = int(epochs)
    if model == "feature-classifier":  # every process builds on it (the chief too, to declare the space)
        ensure_upstream(preset, seed, runs_dir)
    hypermodel = HYPERMODELS[model](preset, seed, source, runs_dir, grid=tuner == "grid")
    directory, name = tuning_dir(runs_dir), project_name(model, tuner, preset, seed)
    t = make_tuner(tuner, hypermodel, int(max_trials), settings["epochs"], seed, directory, name, overwrite,
                   trial_timeout)
    cli_command, cli_argv = _cli_invocation()
    command = command or cli_command
    if role != "chief" and recycle_every:  # the chief trains nothing
        t.recycle_every, t.recycle_argv, t.recycle_command = int(recycle_every), recycle_argv or cli_argv, command
    address = f"{os.environ.get('KERASTUNER_ORACLE_IP')}:{os.environ.get('KERASTUNER_ORACLE_PORT')}"
    where = {"single": "", "chief": f" as chief on {address}",
             "worker": f" as {os.environ.get('KERASTUNER_TUNER_ID')} of the chief at {address}"}[role]
    print(f"[tune] {tuner} search of {model} on '{preset}' ({max_trials} trials, {settings['epochs']} epochs each)"
          f"{where}; project {Path(t.project_dir)}")
    t0 = time.perf_counter()
    t.search(epochs=settings["epochs"], verbose=verbose)
    if role == "worker":
        mine = [r for r in collect_trials(t.project_dir) if r.get("tuner_id") == t.tuner_id]
        print(f"[tune] {t.tuner_id}: the chief has no more trials; this worker ran {len(mine)}")
        return None
    return finalize(t, hypermodel, tuner=tuner, model=model, preset=preset, seed=seed, max_trials=int(max_trials),
                    settings=settings, results_dir=results_dir or t.project_dir, save_trial=save_trial, role=role,
                    command=command, search_seconds=time.perf_counter() - t0, rescore_top=rescore_top)


def _cli_invocation():
    """(command as typed, argv to re-execute) when this process is `python -m cifar_ae tune ...`, else (None, None)."""
    if sys.argv[1:2] != ["tune"]:
        return None, None
    command = os.environ.pop("CIFAR_AE_TUNE_COMMAND", None) or \
        "python -m cifar_ae " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    # never --overwrite again: the re-executed process must continue the search, not wipe it
    return command, [sys.executable, "-m", "cifar_ae"] + [a for a in sys.argv[1:] if a != "--overwrite"]


def _best_model(t, best, epochs):
    """The best trial's model at its best epoch (the checkpoint its tuner saved), or retrained if that
    checkpoint is not on this machine."""
    import warnings
    try:
        with warnings.catch_warnings():  # the checkpoint's optimizer state is not needed to predict
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return t.load_model(best), "checkpoint"
    except (OSError, FileNotFoundError, ValueError) as e:
        print(f"[tune] no checkpoint for trial {best.trial_id} here ({type(e).__name__}); retraining it")
        return _retrain(t, best, epochs), "retrained"


def _retrain(t, trial, epochs):
    model = t.hypermodel.build(trial.hyperparameters)
    t.hypermodel.fit(trial.hyperparameters, model, verbose=0,
                     epochs=int(trial.hyperparameters.values.get("tuner/epochs", 0)) or epochs)
    return model


def validation_balanced_accuracy(model, hypermodel) -> float:
    """The search's objective, computed here on the hold-out split (not taken from any report)."""
    from sklearn.metrics import balanced_accuracy_score
    d = hypermodel.data
    out = model.predict(d["x_val"].astype(np.float32) / 255.0, batch_size=256, verbose=0)
    probs = out["label"] if isinstance(out, dict) else out
    return float(balanced_accuracy_score(d["y_val"], probs.argmax(1)))


def rescore_best(t, hypermodel, top, epochs):
    """Retrain the `top` best-reported trials on this process and rank them by its own validation score: what a
    worker reported is never taken on its word. Returns (best trial, its model, [records])."""
    records, best = [], None
    for tr in t.oracle.get_best_trials(top):
        model = _retrain(t, tr, epochs)
        score = validation_balanced_accuracy(model, hypermodel)
        records.append({"trial_id": tr.trial_id, "reported": None if tr.score is None else float(tr.score),
                        "chief": round(score, 4)})
        print(f"[tune] re-scored trial {tr.trial_id}: reported {tr.score}, chief {score:.4f}", flush=True)
        if best is None or score > best[0]:
            best = (score, tr, model)
    return best[1], best[2], records


def finalize(t, hypermodel, tuner, model, preset, seed, max_trials, settings, results_dir, save_trial=None,
             role="single", command=None, search_seconds=None, rescore_top=3) -> dict:
    """Pick the best configuration (re-scored here on a chief), score it on the test set once, write the results."""
    from ..backend import versions
    rows = collect_trials(t.project_dir, list(t.oracle.trials.values()))
    completed = [r for r in rows if r["score"] is not None and r["status"] == "COMPLETED"]
    if not completed:
        msgs = "; ".join(sorted({r["message"] for r in rows if r["message"]})) or "no trial ran"
        raise RuntimeError(f"no tuning trial completed ({len(rows)} trials): {msgs}")
    rescored = None
    if role == "chief":  # the trials ran elsewhere: retrain the best-reported ones and rank them by our own score
        best, best_model, rescored = rescore_best(t, hypermodel, max(1, int(rescore_top)), settings["epochs"])
        how = "retrained and re-scored by the chief"
    else:
        best = t.oracle.get_best_trials(1)[0]
        best_model, how = _best_model(t, best, settings["epochs"])
    values = hypermodel.space(best.hyperparameters.copy())
    d = hypermodel.data
    x_unit = d["x_test"].astype(np.float32) / 255.0
    outputs = best_model.predict(x_unit, batch_size=256, verbose=0)
    test = E.evaluate_outputs(hypermodel.task, x_unit, d["y_test"], outputs, d["class_names"])
    test_summary = {k: test[k] for k in ("test_accuracy", "balanced_accuracy", "recon_mse", "recon_psnr") if k in test}
    test_summary["per_class_recall"] = {c: round(v["recall"], 4) for c, v in test["per_class"].items()}
    test_summary.update(test_images=len(d["y_test"]), model_from=how)
    keras.backend.clear_session()

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    trial_name = save_trial or f"tuned-{model}-{tuner}-{preset}"
    best_row = next(r for r in rows if r["trial_id"] == best.trial_id)
    best_score = best_row["score"] if rescored is None else next(r["chief"] for r in rescored
                                                                   if r["trial_id"] == best.trial_id)
    description = (f"Best of {len(completed)} {tuner} trials ({model}, '{preset}' search, seed {seed}): "
                   f"val balanced acc {best_score:.3f}; see tuning.json beside this file.")
    record = tuned_trial_record(hypermodel, values, trial_name, description)
    if command is None:
        command = " ".join(shlex.quote(a) for a in sys.argv)
    summary = {
        "command": command,
        "tuner": tuner, "model": model, "preset": preset, "seed": seed, "mode": role,
        "objective": {"name": hypermodel.objective, "direction": "max",
                      "what": "balanced accuracy on the hold-out validation split of the imbalanced training subset"},
        "settings": settings, "max_trials": max_trials,
        "data": {"train_images": int(len(d["y_train"])), "val_images": int(len(d["y_val"])),
                 "test_images": int(len(d["y_test"])), "source": d["source"],
                 "split": "training.prepare_data: stratified hold-out of make_imbalanced (as `train` uses)"},
        "project_dir": str(t.project_dir),
        "search_seconds_this_session": None if search_seconds is None else round(search_seconds, 1),
        "trial_seconds_total": round(sum(r["seconds"] or 0 for r in rows), 1),
        "trials": rows,
        "rescored": rescored,
        "refused_reports": list(getattr(t.oracle, "refused", [])),
        "best": {"trial_id": best.trial_id, "val_balanced_accuracy": best_score,
                 "scored_by": "the process that ran the trials" if rescored is None else "chief",
                 "val_accuracy": best_row["val_accuracy"], "hyperparameters": best_row["hyperparameters"],
                 "config": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()},
                 "test": test_summary},
        "saved_trial": {"name": trial_name, "rerun": f"python -m cifar_ae train {trial_name} --preset quick",
                        "record": record},
        "versions": versions(),
    }
    E.write_json_atomic(results_dir / "tuning.json", summary)
    title = (f"{tuner} search, {model}, '{preset}' preset: {len(completed)} of {len(rows)} trials completed; "
             f"best val bal. acc {best_score:.3f}, its test acc {test_summary['test_accuracy']:.3f}")
    P.save(scores_figure(rows, title), results_dir / "tuning_scores.png")
    write_markdown(summary, results_dir / "tuning.md")
    saved = save_tuned_trial(record, results_dir / "tuned_trials.json")
    print(f"[tune] best trial {best.trial_id}: val balanced acc {best_score:.4f}, "
          f"test acc {test_summary['test_accuracy']:.4f}; wrote {results_dir / 'tuning.json'}, tuning.md, "
          f"tuning_scores.png; saved trial '{trial_name}' in {saved}")
    return summary
