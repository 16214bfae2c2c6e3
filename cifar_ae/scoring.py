"""A trained run scored on the test set: metrics.json with every field, then state.json sealed.

`record` is the one way a run's result is written, after training (cifar_ae.training) and by `evaluate`
(`reevaluate`): metrics.json atomically, then state.json with ``evaluated`` and the sha256 of metrics.json,
history.csv and model.keras (cifar_ae.completeness checks them on every reuse), then checkpoints/ goes.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import keras

from . import completeness, evaluate, models, plots, resume, runs, tricks
from .inference import predict
from .runinfo import command_line
from .trials import Trial


def record(model, trial, preset, seed, settings, run, data) -> dict:
    """Score a trained model, write metrics.json (every field), then seal the run in state.json."""
    fix = f"delete {run} to retrain this run."
    history = completeness.read_history(run / "history.csv", fix)
    state = resume.read_state(run) or {}
    metrics = evaluate_model(model, trial, data, run, settings, seed)
    metrics["params"] = int(model.count_params())
    metrics["trainable_params"] = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    epochs_run = len(next(iter(history.values()), []))
    train_seconds = float(sum(history.get("train_seconds", [])))
    config = runs.read_config(run) or {}
    flops = config.get("train_flops_per_image")
    metrics.update({"trial": trial.name, "preset": preset, "seed": seed, "epochs": epochs_run,
                    "train_pflops": None if flops is None else round(flops * len(data["y_train"]) * epochs_run / 1e15, 5),
                    "best_epoch": state.get("best_epoch"), "stopped_early": bool(state.get("stopped")),
                    "train_seconds": round(train_seconds, 1),
                    "train_images_per_second": round(len(data["y_train"]) * epochs_run / train_seconds, 1)
                    if train_seconds > 0 else None,
                    "pixel_bypass": config.get("pixel_bypass"), "study": trial.study, "command": command_line()})
    if history:
        plots.save(plots.training_curves(history), run / "figures" / "curves.png")
    evaluate.write_json_atomic(run / "metrics.json", metrics)
    seal(run)
    return metrics


def seal(run):
    """The commit point of a scored run: state.json says evaluated, with the sha256 of the files it vouches for."""
    state = resume.read_state(run) or {}
    state.update(evaluated=True, sha256={name: completeness.sha256_file(run / name)
                                         for name in completeness.SEALED if (run / name).is_file()})
    resume.write_state(run, state)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


def summary_line(run, how) -> str:
    """One line that ends a run: trained or reused, its test accuracy and reconstruction MSE, and its folder."""
    m = completeness.read_json(Path(run) / "metrics.json", f"delete {run} to retrain that run.")
    parts = [f"test accuracy {100 * m['test_accuracy']:.2f}%" if "test_accuracy" in m else None,
             f"reconstruction MSE {m['recon_mse']:.5f}" if "recon_mse" in m else None]
    return (f"[{m.get('trial')}] {how}: " + ", ".join(p for p in parts if p) + f" after {m.get('epochs')} epoch(s) "
            f"of {m.get('preset')}, seed {m.get('seed')} -> {run}")


def evaluate_model(model, trial, data, run, settings, seed) -> dict:
    """Metrics on the test set and the run's figures; returns the metrics dict."""
    x_unit, x_in = _model_input(data["x_test"], data)
    t0 = time.perf_counter()
    outputs = predict(model, x_in, 256)
    infer_s = time.perf_counter() - t0
    names = data["class_names"]
    metrics = evaluate.evaluate_outputs(trial.task, x_unit, data["y_test"], outputs, names)
    if (trial.tta_flip or trial.tta_crops) and trial.task != "autoencoder":
        plain = metrics["test_accuracy"]
        outputs = tricks.predict_tta(model, x_in, flip=trial.tta_flip, crops=trial.tta_crops)
        metrics = evaluate.evaluate_outputs(trial.task, x_unit, data["y_test"], outputs, names)
        metrics["test_accuracy_without_tta"] = plain
    if trial.logit_adjustment and trial.task != "autoencoder":  # after TTA: the averaged probabilities are adjusted
        unadjusted = metrics
        probs = tricks.adjust_for_prior(evaluate.split_outputs(outputs, trial.task)[1], data["y_train"], trial.logit_adjustment)
        outputs = {**outputs, "label": probs} if isinstance(outputs, dict) else probs
        metrics = evaluate.evaluate_outputs(trial.task, x_unit, data["y_test"], outputs, names)
        if "test_accuracy_without_tta" in unadjusted:
            metrics["test_accuracy_without_tta"] = unadjusted["test_accuracy_without_tta"]
        metrics.update(test_accuracy_without_logit_adjustment=unadjusted["test_accuracy"],
                       **(_val_balanced(model, trial, data) if len(data["y_val"]) else {}))
    metrics["test_images"] = len(data["y_test"])
    metrics["inference_images_per_second"] = round(len(x_in) / max(infer_s, 1e-9), 1)
    figs = run / "figures"
    recon, _ = evaluate.split_outputs(outputs, trial.task)
    if recon is not None:
        plots.save(plots.reconstruction_grid(x_unit[::max(1, len(x_unit) // 10)][:10], recon[::max(1, len(x_unit) // 10)][:10]),
               figs / "reconstructions.png")
    if "confusion_matrix" in metrics:
        plots.save(plots.confusion_matrix(metrics["confusion_matrix"], names), figs / "confusion_matrix.png")
    plots.save(plots.class_distribution(data["y_train"], names), figs / "class_distribution.png")
    n = min(settings["tsne_points"], len(x_in))
    if n >= 20 and _has_layer(model, "features"):
        idx = np.random.default_rng(seed).choice(len(x_in), n, replace=False)
        print(f"[{trial.name}] t-SNE of {n} test images' features...", flush=True)
        feats = predict(models.encoder_of(model, "features"), x_in[idx], 256)
        plots.save(plots.tsne(feats, data["y_test"][idx], names, seed), figs / "tsne.png")
    return metrics


def _model_input(x_uint8, data):
    """(images in [0, 1], the model's input: those scaled as the run's training data was)."""
    x_unit = x_uint8.astype(np.float32) / 255.0
    return x_unit, (x_unit if data.get("scaling") is None else (x_unit - data["scaling"][0]) / data["scaling"][1])


def _val_balanced(model, trial, data) -> dict:
    """The validation evidence for the adjustment: balanced accuracy (mean recall, the balanced test set's
    accuracy) on the held-out split, with and without it, under the same test-time augmentation."""
    from sklearn.metrics import balanced_accuracy_score
    _, x_in = _model_input(data["x_val"], data)
    if trial.tta_flip or trial.tta_crops:
        out = tricks.predict_tta(model, x_in, flip=trial.tta_flip, crops=trial.tta_crops)
    else:
        out = predict(model, x_in, 256)
    probs = out["label"] if isinstance(out, dict) else out
    adjusted = tricks.adjust_for_prior(probs, data["y_train"], trial.logit_adjustment)
    return {"val_balanced_accuracy": round(float(balanced_accuracy_score(data["y_val"], adjusted.argmax(-1))), 4),
            "val_balanced_accuracy_without_logit_adjustment":
                round(float(balanced_accuracy_score(data["y_val"], probs.argmax(-1))), 4)}


def _has_layer(model, name):
    try:
        model.get_layer(name)
        return True
    except ValueError:
        return False


def trial_from_config(config, path="config.json") -> Trial:
    """The Trial a run folder's config.json records (fields a newer Trial lacks are dropped)."""
    from dataclasses import fields
    names = {f.name for f in fields(Trial)}
    record = config.get("trial")
    if not isinstance(record, dict):
        raise completeness.RunDamaged(f"{path} records no trial; delete its folder to retrain that run.")
    return Trial(**{k: v for k, v in record.items() if k in names})


def load_saved_model(run, state):
    """The model a trained run saved, if it is still the file whose sha256 state.json recorded (else a one-line
    RunDamaged naming it), loaded in Keras' safe mode."""
    path = Path(run) / "model.keras"
    if not path.is_file() or completeness.sha256_file(path) != state.get("model_sha256"):
        raise completeness.RunDamaged(f"{path} is missing or differs from the model its run saved (sha256 in "
                                      f"state.json); retrain it with --force.")
    return load_model(path)


def load_model(path):
    """A run's model.keras in Keras' safe mode; a file Keras cannot rebuild (an unknown class, a damaged zip) is
    a one-line RunDamaged naming it."""
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises TypeError, ValueError, KeyError, zipfile errors...: all mean "not loadable"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise completeness.RunDamaged(f"{path} cannot be loaded as a Keras model ({type(e).__name__}: {first}); "
                                      "retrain its run with --force.") from None
