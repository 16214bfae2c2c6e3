"""run_trial: a trial + preset + seed -> one complete run folder, keyed by what decides its result.

A run folder (<runs>/<trial>/<preset>-s<seed>[-<variant>]/, see cifar_ae.runs) holds config.json (the run
key and its digest, code version, machine, versions, command), history.csv (one row per epoch, with its
wall and CPU seconds), model.keras (the best epoch by validation), metrics.json and figures/ (cifar_ae.scoring),
and state.json, written last: while it trains it and checkpoints/ let a killed run resume exactly (cifar_ae.resume);
once scored it seals the run with the sha256 of its files (cifar_ae.completeness decides what is complete).

Everything a user can get wrong (a field, an override, the seed, epochs, the data) is checked before the
folder is created, and one process at a time may write a folder.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import keras

from . import (backend, bypass, compute, completeness, evaluate, hardware, memory, models, resume, runs, scoring,
               tensorboard_log, tricks)
from .batches import ArrayBatches, steps_per_epoch
from .models import builder_defaults
from .data import class_index, fit_scaling, load_cifar10, make_balanced, make_imbalanced, sample_weights, train_val_split
from .optim import LR_SCHEDULES, OPTIMIZERS
from .runinfo import command_line
from .trials import Trial, TrialError, check_changes, check_epochs, check_seed, get_trial

DEFAULT_OUT = Path(os.environ.get("CIFAR_AE_RUNS", "runs"))


def runs_root(out_dir=None) -> Path:
    return Path(out_dir or os.environ.get("CIFAR_AE_RUNS") or DEFAULT_OUT)


def run_dir_for(name, preset, seed, out_dir=None) -> Path:
    """The folder of a registered trial as defined (no changes): <runs>/<trial>/<preset>-s<seed>."""
    return runs_root(out_dir) / name / f"{preset}-s{seed}"


def is_complete(run_dir) -> bool:
    """A run `train` reuses (cifar_ae.completeness: a checked state, not the presence of one file)."""
    return completeness.is_complete(run_dir)


# --------------------------------------------------------------------------- data for one run

def _take(x, y, n, seed):
    """A stratified random `n` of (x, y), or all of it when n is None or not smaller."""
    if n is None or n >= len(y):
        return x, y
    from sklearn.model_selection import train_test_split
    _, x_s, _, y_s = train_test_split(x, y, test_size=n, stratify=y, random_state=seed)
    return x_s, y_s


def prepare_data(trial, settings, seed, source=None) -> dict:
    """Training subset, validation split and test set for one run, as uint8 images and int labels."""
    d = load_cifar10(source)
    if trial.train_set == "imbalanced":
        x, y, _ = make_imbalanced(d.x_train, d.y_train, d.train_files)
    elif trial.train_set == "balanced":
        x, y, _ = make_balanced(d.x_train, d.y_train)
    else:  # "full" (Trial validates the field)
        x, y = d.x_train, d.y_train
    if trial.train_classes:  # training (and hold-out) images of these classes only; the test set stays whole
        keep = np.isin(y, [class_index(c) for c in trial.train_classes])
        x, y = x[keep], y[keep]
    x_test, y_test = _take(d.x_test, d.y_test, settings["test_images"], seed)
    if trial.validation == "test":  # the study's choice: validation curves on (a slice of) the test set
        x_val, y_val = _take(x_test, y_test, settings["val_images"], seed)
    elif trial.validation == "none":  # every training image trains; the run keeps its last epoch
        x_val, y_val = x[:0], y[:0]
    else:
        (x, y), (x_val, y_val) = train_val_split(x, y, val_fraction=settings["val_images"] / len(y), seed=seed)
    x, y = _take(x, y, settings["train_images"], seed)
    return dict(x_train=x, y_train=y, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
                class_names=list(d.class_names), source=d.source, source_digest=d.digest)


def plan_data_size(trial, preset, seed) -> int:
    """How many training images a run of `trial` at `preset` trains on (for epochs from a compute budget)."""
    return len(prepare_data(trial, trial.settings(preset), seed)["y_train"])


def data_identity(data) -> dict:
    """The data part of a run key: the decoded source's digest and a digest of the exact training subset."""
    h = hashlib.sha256()
    for k in ("x_train", "y_train", "x_val", "y_val"):
        h.update(np.ascontiguousarray(data[k]).tobytes())
    return {"source_digest": data["source_digest"], "subset_digest": h.hexdigest()[:16]}


# --------------------------------------------------------------------------- model for one run

def resolve_trial(trial, **changes) -> Trial:
    """A trial name or a Trial object, with `changes` applied (model_args merged, as in get_trial)."""
    check_changes(getattr(trial, "name", trial), changes)  # before anything: never a rename through --set
    if isinstance(trial, Trial):
        if not changes:
            return trial
        if isinstance(changes.get("model_args"), dict):
            changes = {**changes, "model_args": {**trial.model_args, **changes["model_args"]}}
        return trial.replace(**changes)
    if not isinstance(trial, str):
        raise TrialError(f"run_trial takes a trial name or a Trial, got {type(trial).__name__}.")
    return get_trial(trial, **changes)


def builder_source(model: str) -> str | None:
    """For a builder defined outside cifar_ae.models (e.g. in a notebook cell): a digest of its source code (or,
    without one, of its compiled code), so that editing the function makes a new run. None for the package's own."""
    fn = models.BUILDERS[model]
    if getattr(fn, "__module__", None) == models.__name__:
        return None
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = repr((code.co_code, code.co_consts, code.co_names)) if code is not None else repr(fn)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_buildable(trial: Trial) -> None:
    """The builder exists and takes the trial's model_args; a classifier's upstream is an autoencoder trial."""
    if trial.model not in models.BUILDERS:
        raise TrialError(f"trial '{trial.name}': unknown model '{trial.model}'; valid builders: {', '.join(models.BUILDERS)}.")
    params = inspect.signature(models.BUILDERS[trial.model]).parameters
    accepted = [p for p in params if p != "encoder"]
    unknown = sorted(set(trial.model_args) - set(accepted))
    if unknown:
        raise TrialError(f"trial '{trial.name}': model_args {unknown[0]!r} is not an argument of {trial.model}; "
                         f"valid: {', '.join(accepted)}.")
    for arg, value in trial.model_args.items():
        models.check_arg(trial.model, arg, value, params[arg].default)
    takes_encoder = "encoder" in params
    if takes_encoder != (trial.upstream is not None):
        raise TrialError(f"trial '{trial.name}': a classifier on frozen features needs upstream=<autoencoder trial> "
                         f"and a builder that takes an encoder; got upstream={trial.upstream!r}, model={trial.model}.")
    if trial.upstream is not None and get_trial(trial.upstream).task != "autoencoder":
        raise TrialError(f"trial '{trial.name}': upstream '{trial.upstream}' is not an autoencoder trial.")
    if trial.momentum is not None and trial.optimizer not in ("sgd", "muon"):
        raise TrialError(f"trial '{trial.name}': momentum applies to optimizer 'sgd' or 'muon' (its SGD part) only; "
                         f"got optimizer={trial.optimizer!r} (remove momentum, or change the optimizer).")
    if trial.whitening and "whiten_channels" not in inspect.signature(models.BUILDERS[trial.model]).parameters:
        raise TrialError(f"trial '{trial.name}': whitening=True needs a builder with a `whiten` layer (fast_joint); "
                         f"{trial.model} has none.")
    if trial.weight_decay_skip and trial.upstream is None:
        names = [layer.name for layer in models.BUILDERS[trial.model](**trial.model_args).layers]
        unmatched = [p for p in trial.weight_decay_skip if not any(n.startswith(p) for n in names)]
        if unmatched:
            raise TrialError(f"trial '{trial.name}': weight_decay_skip prefixes {unmatched} match no layer of "
                             f"{trial.model}; its layers: {', '.join(names)}.")
    if trial.optimizer == "muon" and trial.upstream is None:
        from .optim import batchnormed_convs
        if not batchnormed_convs(models.BUILDERS[trial.model](**trial.model_args)):
            raise TrialError(f"trial '{trial.name}': optimizer 'muon' steps conv layers followed by BatchNorm and "
                             f"{trial.model} has none; use optimizer 'sgd' or 'adam'.")
    backend.check_strategy(trial.strategy)


def build_model(trial, upstream_dir=None):
    """The trial's model; a classifier on frozen features reads its upstream autoencoder from upstream_dir (a
    complete run folder: run_trial trains or reuses it first)."""
    builder = models.BUILDERS[trial.model]
    if trial.upstream is None:
        return builder(**trial.model_args), None
    if upstream_dir is None:
        raise TrialError(f"trial '{trial.name}' reads the frozen encoder of '{trial.upstream}': pass its run folder "
                         "as upstream_dir (run_trial trains or reuses it first).")
    ae = scoring.load_model(Path(upstream_dir) / "model.keras")
    encoder = models.encoder_of(ae, trial.feature_layer)
    encoder.trainable = False  # frozen features, as in the study
    return builder(encoder, **trial.model_args), str(upstream_dir)


def trial_flops(trial) -> int:
    """Training FLOPs per image of a trial's model (cifar_ae.compute), built fresh: a classifier on frozen
    features gets an untrained copy of its upstream encoder, which costs the same."""
    builder = models.BUILDERS[trial.model]
    if trial.upstream is None:
        model = builder(**trial.model_args)
    else:
        up = get_trial(trial.upstream)
        encoder = models.encoder_of(models.BUILDERS[up.model](**up.model_args), trial.feature_layer)
        encoder.trainable = False
        model = builder(encoder, **trial.model_args)
    return compute.train_flops_per_image(model)


def label_loss(trial):
    return tricks.SmoothedSparseCE(trial.label_smoothing) if trial.label_smoothing else "sparse_categorical_crossentropy"


def compile_model(model, trial, steps_per_epoch=None):
    optimizer = OPTIMIZERS[trial.optimizer](trial.learning_rate, trial.weight_decay, trial.momentum,
                                            trial.ema_momentum, steps_per_epoch, trial.muon_learning_rate)
    if trial.optimizer == "muon":  # Muon steps the conv kernels BatchNorm follows; it must know which they are
        optimizer.use_muon_for(model)
    if trial.weight_decay_skip:  # check_buildable has made sure each prefix names layers
        skip = tuple(trial.weight_decay_skip)
        optimizer.exclude_from_weight_decay(
            var_list=[v for layer in model.layers if layer.name.startswith(skip) for v in layer.trainable_variables])
    if trial.task == "autoencoder":
        model.compile(optimizer, loss="mse", metrics=["mse"])
    elif trial.task == "classifier":
        model.compile(optimizer, loss=label_loss(trial), metrics=["accuracy"])
    else:  # "joint"
        recon = tricks.WeightedMSE(trial.recon_weight[0]) if trial.recon_weight else "mse"
        model.compile(optimizer, loss={"reconstruction": recon, "label": label_loss(trial)},
                      loss_weights=trial.loss_weights, metrics={"reconstruction": ["mse"], "label": ["accuracy"]})
    return model


def monitor_for(task):
    return {"autoencoder": ("val_loss", "min"), "classifier": ("val_accuracy", "max"),
            "joint": ("val_label_accuracy", "max")}[task]


# --------------------------------------------------------------------------- the run



def _batches(trial, data, settings, seed, train: bool, batch_size=None):
    targets = {"autoencoder": "reconstruction", "classifier": "label", "joint": "joint"}[trial.task]
    if not train:
        return ArrayBatches(data["x_val"], data["y_val"], batch_size=256, targets=targets, shuffle=False,
                            scaling=data["scaling"])
    transform, sample_weight = None, None
    if trial.augmentation:
        from augment import make_augmenter
        transform = make_augmenter(trial.augmentation)
    if trial.class_weight and trial.task != "autoencoder":
        sample_weight = sample_weights(data["y_train"], trial.class_weight)
    workers = hardware.usable_cores() if transform is not None else 1
    # threads, not processes: the augmenter's numpy kernels and Pillow release the GIL, and threads skip
    # pickling every batch (benchmarks/augment_throughput.py: 1.3-1.5x the throughput of 2 processes)
    return ArrayBatches(data["x_train"], data["y_train"], batch_size=batch_size or trial.batch_size, targets=targets,
                        transform=transform, sample_weight=sample_weight, scaling=data["scaling"], seed=seed,
                        workers=workers, use_multiprocessing=False, drop_last=trial.drop_last)


@dataclass
class RunPlan:
    """What a run is and where it lives, decided before anything is trained or written."""
    trial: Trial
    preset: str
    seed: int
    settings: dict
    precision: str
    data: dict
    key: dict
    key_digest: str
    folder: Path
    plain: bool
    upstream: "RunPlan | None" = None


def plan_run(trial, preset="quick", seed=0, out_dir=None, epochs=None, variant=None, source=None, upstream=None,
             upstream_epochs=None, upstream_variant=None, folder=None, **changes) -> RunPlan:
    """Resolve and check a run (trial, changes, preset, seed, epochs, variant, data) and compute its key and folder,
    without training: a classifier's upstream autoencoder run is planned the same way, for its key. `upstream`: a
    Trial to use as the autoencoder instead of the registered trial named by trial.upstream (an edited one);
    `upstream_epochs` / `upstream_variant`: that run's epochs and folder name, as `epochs` / `variant` are this one's
    (a capped autoencoder is another run, so its classifier is too). `folder`: where the run lives instead of
    <runs>/<trial>/... (an experiment row's <runs>/<experiment>/<row>/<preset>-s<seed>); the key is the same."""
    trial = resolve_trial(trial, **changes)
    seed = check_seed(seed)
    settings = trial.run_settings(preset)
    if epochs is not None:
        settings["epochs"] = check_epochs(epochs)
    check_epochs(settings["epochs"])
    runs.folder_name(preset, seed, "", True, variant)  # a bad variant name fails here
    check_buildable(trial)
    runs.check_writable(runs_root(out_dir) if folder is None else Path(folder).parent)  # before the data loads
    backend.initialize_processes()  # JAX: before any computation
    backend.configure_threads()  # before "auto" times its kernels, and before any op fixes the pools
    precision = hardware.resolve_precision(trial.precision)
    data = prepare_data(trial, settings, seed, source)
    upstream_trial, upstream = upstream, None
    if upstream_trial is not None and trial.upstream is None:
        raise TrialError(f"trial '{trial.name}' reads no frozen encoder: upstream= applies to classifiers only.")
    if (upstream_epochs is not None or upstream_variant is not None) and trial.upstream is None:
        raise TrialError(f"trial '{trial.name}' reads no frozen encoder: upstream_epochs= / upstream_variant= apply "
                         "to classifiers only.")
    if trial.upstream is not None:
        up = resolve_trial(upstream_trial if upstream_trial is not None else trial.upstream)
        if up.task != "autoencoder":
            raise TrialError(f"upstream trial '{up.name}' is not an autoencoder.")
        upstream = plan_run(up, preset, seed, out_dir, upstream_epochs, upstream_variant, source=source)
    up_key = None if upstream is None else {"trial": upstream.trial.name, "key_digest": upstream.key_digest}
    defaults = builder_defaults(trial.model)
    key = backend.key_with_backend(runs.run_key(trial, preset, settings, seed, precision, data_identity(data), up_key,
                                                defaults, builder_source(trial.model)))
    key_digest = runs.digest(key)
    plain = runs.is_registered(trial, settings, preset, defaults)
    if folder is None:
        folder = runs.run_folder(runs_root(out_dir), trial, preset, seed, key_digest, plain, variant)
    folder = backend.own_folder(folder)  # TensorFlow's unchanged; another backend's or process's beside it
    return RunPlan(trial, preset, seed, settings, precision, data, key, key_digest, folder, plain, upstream)


def run_trial(trial, preset="quick", seed=0, out_dir=None, epochs=None, force=False, callbacks=(),
              verbose="auto", source=None, variant=None, upstream=None, upstream_epochs=None, upstream_variant=None,
              folder=None, **changes) -> Path:
    """Train, evaluate and record one run; returns its folder.

    trial: a name in TRIALS or a Trial object (e.g. built in a notebook cell); `changes` are Trial fields
    applied to it (model_args merged). The run's key (cifar_ae.runs) picks its folder: the registered trial at
    the preset's settings keeps <trial>/<preset>-s<seed>, anything else gets a digest suffix or `variant`.
    A complete run with the same key is reused; an unfinished one resumes; `force` retrains that one run.
    upstream: a Trial to train (or reuse) as a classifier's frozen autoencoder instead of the registered one;
    upstream_epochs / upstream_variant: that autoencoder run's epochs and folder name (e.g. a capped study run).
    """
    plan = plan_run(trial, preset, seed, out_dir, epochs, variant, source, upstream, upstream_epochs,
                    upstream_variant, folder, **changes)
    trial, seed, settings, precision, data = plan.trial, plan.seed, plan.settings, plan.precision, plan.data
    key, key_digest, run = plan.key, plan.key_digest, plan.folder
    defaults = builder_defaults(trial.model)
    if not force:
        runs.check_same_run(run, key_digest, runs.read_config(run), trial.model_args, defaults)
        if _reusable(run, trial):
            print(scoring.summary_line(run, "reused"), flush=True)
            return run
    upstream_dir = None
    if plan.upstream is not None:
        upstream_dir = run_trial(plan.upstream.trial, preset, seed, out_dir, epochs=upstream_epochs, verbose=verbose,
                                 source=source, variant=upstream_variant)

    speed = {"malloc": memory.tune_malloc(), "tf_threads": backend.configure_threads()}
    keras.utils.set_random_seed(seed)  # here, after any upstream training, so the same seed builds the same net
    determinism = backend.enable_determinism()
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(precision)
    created = not run.exists()
    try:
        with backend.distribution_scope(trial.strategy):
            model, _ = build_model(trial, upstream_dir)
            if trial.whitening:  # from this run's training images, before compile fixes what trains
                models.init_whitening(model, data["x_train"])
            compile_model(model, trial, steps_per_epoch(len(data["y_train"]), trial.batch_size, trial.drop_last))
        with runs.RunLock(run):  # a process refused here has written nothing, and removes nothing
            try:
                config = runs.read_config(run)
                if force:
                    _clear_run(run)
                    config = None
                if config is not None:
                    runs.check_same_run(run, key_digest, config, trial.model_args, defaults)
                    if _reusable(run, trial):  # another process finished it while this one waited
                        return run
                else:
                    config = _write_config(run, trial, preset, seed, settings, data, key, key_digest, precision,
                                           determinism, upstream_dir,
                                           {**speed, "train_flops_per_image": compute.train_flops_per_image(model),
                                            "builder_defaults": runs.canonical(defaults),
                                            "pixel_bypass": bypass.pixel_bypass(model) if trial.task == "joint"
                                            and trial.upstream is None else None})
                _train_and_record(trial, preset, seed, settings, run, data, model, callbacks, verbose)
                print(scoring.summary_line(run, "trained"), flush=True)
                return run
            except BaseException:
                # still holding the lock: a folder this process made, with no epoch committed, goes
                if created and resume.read_state(run) is None and not (run / "model.keras").exists():
                    shutil.rmtree(run, ignore_errors=True)
                raise
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        backend.end_distribution()


def _reusable(run, trial) -> bool:
    """A complete run (or a kept record of one: its numbers, no model) is reused; a damaged one is a one-line
    error naming the file and the fix; anything else trains or resumes (cifar_ae.completeness)."""
    status = completeness.run_status(run)
    if status.state == "damaged":
        raise completeness.RunDamaged(status.reason)
    if status.usable:
        what = "complete run" if status.state == "complete" else "kept record (numbers, no model)"
        print(f"[{trial.name}] {what} found at {run} (force=True / --force retrains it)")
    return status.usable


def _clear_run(run):
    """force: empty this run's folder (never another's), keeping the lock file this process holds."""
    for p in Path(run).iterdir():
        if p.name == ".lock":
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _write_config(run, trial, preset, seed, settings, data, key, key_digest, precision, determinism, upstream_dir,
                  compute):
    config = {"trial": trial.to_dict(), "preset": preset, "settings": settings, "seed": seed,
              "key": key, "key_digest": key_digest, "code_version": runs.code_version(),
              "precision": precision, "precision_why": hardware.choose_precision(trial.precision)[1],
              "op_determinism": determinism, "machine": hardware.describe(),
              "upstream_run": None if upstream_dir is None else str(upstream_dir), "command": command_line(),
              "cwd": os.getcwd(), "data_source": data["source"], "versions": backend.versions(),
              "train_images": len(data["y_train"]), "val_images": len(data["y_val"]), "test_images": len(data["y_test"]),
              "train_class_counts": np.bincount(data["y_train"], minlength=10).tolist(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), **compute}
    evaluate.write_json_atomic(run / "config.json", config)
    return config


def trick_callbacks(trial, model, settings, train_images):
    """The trial's schedules and the preset's early stopping; ReduceLROnPlateau only when no LR schedule is set."""
    monitor, mode = monitor_for(trial.task)
    epochs = settings["epochs"]
    cbs = [LR_SCHEDULES[trial.lr_schedule](trial, settings, monitor, mode)]
    if trial.recon_weight and trial.task == "joint":
        cbs.append(tricks.ReconWeightSchedule(model.loss["reconstruction"], *trial.recon_weight, epochs))
    if trial.lookahead is not None:
        steps = sum((end - first) * steps_per_epoch(train_images, bs, trial.drop_last)
                    for first, end, bs in tricks.batch_stages(trial.batch_sizes or (trial.batch_size,), epochs))
        cbs.append(tricks.Lookahead(model, trial.lookahead, steps))
    if settings.get("early_stopping"):  # best weights come back from the run's best checkpoint, not from memory
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=int(settings["early_stopping"])))
    return cbs


def _train_and_record(trial, preset, seed, settings, run, data, model, callbacks, verbose):
    """Train (resuming from state.json), save the best epoch's model, then score it (cifar_ae.scoring.record)."""
    stats = fit_scaling(data["x_train"], trial.scaling)
    data["scaling"] = None if trial.scaling == "unit" else stats
    state = resume.read_state(run) or {}
    if state.get("trained") and (run / "model.keras").is_file():  # killed while scoring: score the saved model
        model = scoring.load_saved_model(run, state)
    else:
        model = _train(trial, settings, run, data, model, callbacks, verbose, seed)
    scoring.record(model, trial, preset, seed, settings, run, data)
    return run


def _train(trial, settings, run, data, model, callbacks, verbose, seed):
    monitor, mode = monitor_for(trial.task)
    val = backend.shard(_batches(trial, data, settings, seed, False)) if len(data["y_val"]) else None  # None: no best epoch, the last
    schedules = trick_callbacks(trial, model, settings, len(data["y_train"]))
    stateful = [cb for cb in schedules if type(cb).__name__ in resume.STATEFUL_ATTRS]
    extra = [v for cb in schedules for v in getattr(cb, "variables", ())]  # a callback's own state (Lookahead's)
    for first, end, batch_size in tricks.batch_stages(trial.batch_sizes or (trial.batch_size,), settings["epochs"]):
        train = backend.shard(_batches(trial, data, settings, seed, train=True, batch_size=batch_size))
        state = resume.RunState(run, monitor, mode, stateful=stateful, datasets=[train], variables=extra)
        if state.stopped or state.epochs_done >= end:
            continue
        if not model.optimizer.built:  # restoring needs the optimizer's variables to exist
            with backend.optimizer_scope(model):
                model.optimizer.build(model.trainable_variables)
        model.fit(train, validation_data=val, initial_epoch=max(first, state.epochs_done), epochs=end,
                  callbacks=[*schedules, *callbacks, state, *tensorboard_log.callbacks(run, state)], verbose=verbose,
                  shuffle=False)
    state = resume.RunState(run, monitor, mode)
    state.restore_final(model)
    resume.save_model_atomic(model, run / "model.keras")
    model = backend.undistributed(model, run / "model.keras")
    final = resume.read_state(run)
    final.update(trained=True, model_sha256=resume.sha256_file(run / "model.keras"), best_epoch=state.best_epoch)
    resume.write_state(run, final)  # checkpoints/ stays until the run is scored (scoring.seal)
    return model


def reevaluate(run_dir) -> dict:
    """Score a trained run again (its model, Keras safe mode) under the run's lock, through scoring.record: a run
    still training, or killed before its model was saved, is refused."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json); train one with "
                                "`python -m cifar_ae train NAME`.")
    status = completeness.run_status(run_dir)
    if status.state == "damaged":
        raise completeness.RunDamaged(status.reason)
    if status.state == "record":
        raise FileNotFoundError(f"{run_dir} is a kept record without its model: nothing to evaluate; rerun its "
                                "command to train it again.")
    with runs.RunLock(run_dir):
        state = resume.read_state(run_dir) or {}
        config = runs.read_config(run_dir)
        if not state.get("trained"):
            raise runs.RunConflict(f"{run_dir} has not finished training ({state.get('epochs_done', 0)} of "
                                   f"{config.get('settings', {}).get('epochs', '?')} epochs committed); resume it "
                                   f"with its command: {config.get('command', 'python -m cifar_ae train NAME')}")
        model = scoring.load_saved_model(run_dir, state)  # run_status has checked the key already
        trial = scoring.trial_from_config(config, run_dir / "config.json")
        data = prepare_data(trial, config["settings"], config["seed"])
        stats = fit_scaling(data["x_train"], trial.scaling)
        data["scaling"] = None if trial.scaling == "unit" else stats
        return scoring.record(model, trial, config["preset"], config["seed"], config["settings"], run_dir, data)
