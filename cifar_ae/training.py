"""run_trial: a named trial + preset + seed -> one complete run folder.

A run folder (runs/<trial>/<preset>-s<seed>/) holds config.json (trial, preset, seed, versions, command),
history.csv, model.keras (best epoch by validation), metrics.json (written last, atomically) and figures/.
A killed run resumes from its last finished epoch (BackupAndRestore) when the same command is rerun.
"""
from __future__ import annotations

import csv
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import keras

from . import data as D, evaluate as E, models as M, plots as P, tricks as T
from .batches import ArrayBatches
from .runinfo import command_line
from .trials import get_trial

DEFAULT_OUT = Path(os.environ.get("CIFAR_AE_RUNS", "runs"))


def run_dir_for(name, preset, seed, out_dir=None) -> Path:
    return Path(out_dir or DEFAULT_OUT) / name / f"{preset}-s{seed}"


def is_complete(run_dir) -> bool:
    return (Path(run_dir) / "metrics.json").is_file()


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
    d = D.load_cifar10(source)
    if trial.train_set == "imbalanced":
        x, y, _ = D.make_imbalanced(d.x_train, d.y_train, d.train_files)
    elif trial.train_set == "balanced":
        x, y, _ = D.make_balanced(d.x_train, d.y_train)
    elif trial.train_set == "full":
        x, y = d.x_train, d.y_train
    else:
        raise ValueError(f"unknown train_set '{trial.train_set}'; valid: imbalanced, balanced, full.")
    x_test, y_test = _take(d.x_test, d.y_test, settings["test_images"], seed)
    if trial.validation == "test":  # the study's choice: validation curves on (a slice of) the test set
        x_val, y_val = _take(x_test, y_test, settings["val_images"], seed)
    elif trial.validation == "holdout":
        (x, y), (x_val, y_val) = D.train_val_split(x, y, val_fraction=settings["val_images"] / len(y), seed=seed)
    else:
        raise ValueError(f"unknown validation '{trial.validation}'; valid: holdout, test.")
    x, y = _take(x, y, settings["train_images"], seed)
    return dict(x_train=x, y_train=y, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
                class_names=list(d.class_names), source=d.source)


# --------------------------------------------------------------------------- model for one run

def build_model(trial, preset, seed, out_dir=None, verbose="auto"):
    """The trial's model; a classifier on an upstream encoder first makes sure that autoencoder run exists."""
    builder = M.BUILDERS[trial.model]
    if trial.upstream is None:
        return builder(**trial.model_args), None
    upstream_dir = run_dir_for(trial.upstream, preset, seed, out_dir)
    if not is_complete(upstream_dir):
        print(f"[{trial.name}] training upstream autoencoder {trial.upstream} first -> {upstream_dir}")
        run_trial(trial.upstream, preset, seed, out_dir, verbose=verbose)
    ae = keras.saving.load_model(upstream_dir / "model.keras", safe_mode=True, compile=False)
    encoder = M.encoder_of(ae, trial.feature_layer)
    encoder.trainable = False  # frozen features, as in the study
    return builder(encoder, **trial.model_args), str(upstream_dir)


def make_optimizer(trial):
    kw = {"weight_decay": trial.weight_decay} if trial.weight_decay else {}
    if trial.optimizer == "adam":
        return keras.optimizers.Adam(trial.learning_rate, **kw)
    if trial.optimizer == "adamw":
        return keras.optimizers.AdamW(trial.learning_rate, **kw)
    if trial.optimizer == "sgd":
        return keras.optimizers.SGD(trial.learning_rate, momentum=0.9, nesterov=True, **kw)
    raise ValueError(f"unknown optimizer '{trial.optimizer}'; valid: adam, adamw, sgd.")


def label_loss(trial):
    return T.SmoothedSparseCE(trial.label_smoothing) if trial.label_smoothing else "sparse_categorical_crossentropy"


def compile_model(model, trial):
    if trial.task == "autoencoder":
        model.compile(make_optimizer(trial), loss="mse", metrics=["mse"])
    elif trial.task == "classifier":
        model.compile(make_optimizer(trial), loss=label_loss(trial), metrics=["accuracy"])
    elif trial.task == "joint":
        recon = T.WeightedMSE(trial.recon_weight[0]) if trial.recon_weight else "mse"
        model.compile(make_optimizer(trial), loss={"reconstruction": recon, "label": label_loss(trial)},
                      loss_weights=trial.loss_weights, metrics={"reconstruction": ["mse"], "label": ["accuracy"]})
    else:
        raise ValueError(f"unknown task '{trial.task}'; valid: autoencoder, classifier, joint.")
    return model


def monitor_for(task):
    return {"autoencoder": ("val_loss", "min"), "classifier": ("val_accuracy", "max"),
            "joint": ("val_label_accuracy", "max")}[task]


# --------------------------------------------------------------------------- the run

def versions() -> dict:
    import sklearn
    import tensorflow as tf
    return {"python": platform.python_version(), "keras": keras.__version__, "backend": keras.backend.backend(),
            "tensorflow": tf.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "platform": platform.platform()}


def _read_history(path) -> dict:
    if not Path(path).is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


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
        cw = D.class_weights(data["y_train"], trial.class_weight)
        sample_weight = np.array([cw[int(c)] for c in data["y_train"]], np.float32)
    workers = settings["workers"] if transform is not None else 1
    # threads, not processes: the augmenter's numpy kernels and Pillow release the GIL, and threads skip
    # pickling every batch (benchmarks/augment_throughput.py: 1.3-1.5x the throughput of 2 processes)
    return ArrayBatches(data["x_train"], data["y_train"], batch_size=batch_size or trial.batch_size, targets=targets,
                        transform=transform, sample_weight=sample_weight, scaling=data["scaling"], seed=seed,
                        workers=workers, use_multiprocessing=False)


def run_trial(name, preset="quick", seed=0, out_dir=None, epochs=None, force=False, callbacks=(),
              verbose="auto", source=None, **overrides) -> Path:
    """Train, evaluate and record one trial; returns its run folder. A complete run is kept unless `force`."""
    trial = get_trial(name, **overrides)
    settings = trial.settings(preset)
    if epochs is not None:
        settings["epochs"] = int(epochs)
    run = run_dir_for(name, preset, seed, out_dir)
    if is_complete(run) and not force:
        print(f"[{name}] complete run found at {run} (use force=True / --force to retrain)")
        return run
    if force and run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)

    data = prepare_data(trial, settings, seed, source)
    stats = D.fit_scaling(data["x_train"], trial.scaling)
    data["scaling"] = None if trial.scaling == "unit" else stats
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(trial.precision)
    try:
        with distribution_scope(trial.strategy):
            model, upstream = build_model(trial, preset, seed, out_dir, verbose)
            compile_model(model, trial)
        return _fit_and_record(trial, name, preset, seed, settings, run, data, model, upstream, callbacks, verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def distribution_scope(strategy):
    """A tf.distribute scope for `--strategy mirrored` (TensorFlow backend), else a no-op context."""
    import contextlib
    if strategy is None:
        return contextlib.nullcontext()
    if strategy != "mirrored":
        raise ValueError(f"unknown strategy '{strategy}'; valid: mirrored (or none).")
    if keras.backend.backend() != "tensorflow":
        raise ValueError("strategy 'mirrored' needs the TensorFlow backend (KERAS_BACKEND=tensorflow).")
    import tensorflow as tf
    return tf.distribute.MirroredStrategy().scope()


def trick_callbacks(trial, model, epochs):
    """Callbacks for the trial's schedules; ReduceLROnPlateau only when no LR schedule is set."""
    cbs = []
    monitor, mode = monitor_for(trial.task)
    if trial.lr_schedule == "onecycle":
        cbs.append(T.OneCycleLR(trial.learning_rate, epochs, trial.warmup))
    elif trial.lr_schedule is None:
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=0.5, patience=3, min_lr=1e-5))
    else:
        raise ValueError(f"unknown lr_schedule '{trial.lr_schedule}'; valid: onecycle (or none).")
    if trial.recon_weight and trial.task == "joint":
        cbs.append(T.ReconWeightSchedule(model.loss["reconstruction"], *trial.recon_weight, epochs))
    return cbs


def _fit_and_record(trial, name, preset, seed, settings, run, data, model, upstream, callbacks, verbose):
    config = {"trial": trial.to_dict(), "preset": preset, "settings": settings, "seed": seed,
              "upstream_run": upstream, "command": command_line(),
              "cwd": os.getcwd(), "data_source": data["source"], "versions": versions(),
              "train_images": len(data["y_train"]), "val_images": len(data["y_val"]), "test_images": len(data["y_test"]),
              "train_class_counts": np.bincount(data["y_train"], minlength=10).tolist(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    E.write_json_atomic(run / "config.json", config)

    monitor, mode = monitor_for(trial.task)
    (run / "checkpoints").mkdir(exist_ok=True)
    best_path = run / "checkpoints" / "best.weights.h5"
    cbs = [
        # kept between batch-size stages; removed below once the run is complete
        keras.callbacks.BackupAndRestore(str(run / "backup"), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor=monitor, mode=mode, save_best_only=True,
                                        save_weights_only=True),
        *trick_callbacks(trial, model, settings["epochs"]),
        keras.callbacks.CSVLogger(str(run / "history.csv"), append=True),
        keras.callbacks.TerminateOnNaN(),
        *callbacks,
    ]
    t0 = time.perf_counter()
    val = _batches(trial, data, settings, seed, False)
    for first, end, batch_size in T.batch_stages(trial.batch_sizes or (trial.batch_size,), settings["epochs"]):
        model._initial_epoch = None  # let BackupAndRestore (or this stage's start) decide where to begin
        model.fit(_batches(trial, data, settings, seed, train=True, batch_size=batch_size), validation_data=val,
                  initial_epoch=first, epochs=end, callbacks=cbs, verbose=verbose)
    train_seconds = time.perf_counter() - t0
    shutil.rmtree(run / "backup", ignore_errors=True)
    if best_path.is_file():
        model.load_weights(best_path)
    model_tmp = run / ".model.tmp.keras"
    model.save(model_tmp)
    os.replace(model_tmp, run / "model.keras")
    shutil.rmtree(run / "checkpoints", ignore_errors=True)

    history = _read_history(run / "history.csv")
    metrics = evaluate_model(model, trial, data, run, settings, seed)
    epochs_run = len(next(iter(history.values()), []))
    metrics.update({"trial": name, "preset": preset, "seed": seed, "epochs": epochs_run,
                    "train_seconds_this_session": round(train_seconds, 1),
                    "train_images_per_second": round(len(data["y_train"]) * settings["epochs"] / max(train_seconds, 1e-9), 1)
                    if epochs_run == settings["epochs"] else None,
                    "study": trial.study, "command": config["command"]})
    if history:
        P.save(P.training_curves(history), run / "figures" / "curves.png")
    E.write_json_atomic(run / "metrics.json", metrics)  # last: its presence marks the run complete
    return run


def evaluate_model(model, trial, data, run, settings, seed) -> dict:
    """Metrics on the test set and the run's figures; returns the metrics dict."""
    x_unit = data["x_test"].astype(np.float32) / 255.0
    x_in = x_unit if data.get("scaling") is None else (x_unit - data["scaling"][0]) / data["scaling"][1]
    t0 = time.perf_counter()
    outputs = model.predict(x_in, batch_size=256, verbose=0)
    infer_s = time.perf_counter() - t0
    names = data["class_names"]
    metrics = E.evaluate_outputs(trial.task, x_unit, data["y_test"], outputs, names)
    if trial.tta_flip and trial.task != "autoencoder":
        plain = metrics["test_accuracy"]
        outputs = T.predict_tta(model, x_in)
        metrics = E.evaluate_outputs(trial.task, x_unit, data["y_test"], outputs, names)
        metrics["test_accuracy_without_tta"] = plain
    metrics["test_images"] = len(data["y_test"])
    metrics["inference_images_per_second"] = round(len(x_in) / max(infer_s, 1e-9), 1)
    figs = run / "figures"
    recon, _ = E.split_outputs(outputs, trial.task)
    if recon is not None:
        P.save(P.reconstruction_grid(x_unit[::max(1, len(x_unit) // 10)][:10], recon[::max(1, len(x_unit) // 10)][:10]),
               figs / "reconstructions.png")
    if "confusion_matrix" in metrics:
        P.save(P.confusion_matrix(metrics["confusion_matrix"], names), figs / "confusion_matrix.png")
    P.save(P.class_distribution(data["y_train"], names), figs / "class_distribution.png")
    n = min(settings["tsne_points"], len(x_in))
    if n >= 20 and _has_layer(model, "features"):
        idx = np.random.default_rng(seed).choice(len(x_in), n, replace=False)
        feats = M.encoder_of(model, "features").predict(x_in[idx], batch_size=256, verbose=0)
        P.save(P.tsne(feats, data["y_test"][idx], names, seed), figs / "tsne.png")
    return metrics


def _has_layer(model, name):
    try:
        model.get_layer(name)
        return True
    except ValueError:
        return False


def reevaluate(run_dir) -> dict:
    """Load a run's model (Keras safe mode) and recompute its test metrics and figures."""
    import json
    run_dir = Path(run_dir)
    if not (run_dir / "model.keras").is_file() or not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (needs config.json and model.keras); "
                                "train one with `python -m cifar_ae train NAME`.")
    config = json.loads((run_dir / "config.json").read_text())
    t = config["trial"]
    trial = get_trial(t["name"], **{k: v for k, v in t.items() if k != "name"})
    data = prepare_data(trial, config["settings"], config["seed"])
    stats = D.fit_scaling(data["x_train"], trial.scaling)
    data["scaling"] = None if trial.scaling == "unit" else stats
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True, compile=False)
    metrics = json.loads((run_dir / "metrics.json").read_text()) if is_complete(run_dir) else {}
    metrics.update(evaluate_model(model, trial, data, run_dir, config["settings"], config["seed"]))
    E.write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics
