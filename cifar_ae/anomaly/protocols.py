"""The three anomaly protocols. Every model trains through `run_trial`, as a Trial derived from the study's:

* ``one-class``: per class, `v1-cnn-ae` trained on that class's training images only (``train_classes``); the
  whole test set is scored, AUROC of the class (normal) against the other nine (anomalous).
* ``held-out``: `v2-joint-noaug` trained on nine classes of the imbalanced set; the tenth is anomalous.
* ``corruptions``: `v2-joint-noaug` trained on the imbalanced set; clean test images against the same images
  corrupted (`corruptions.corrupt`) at severities 1-5.

Each model's hold-out validation split (a tenth of its normal training images, never trained on) picks its best
epoch and is the calibration set of the combined score. No test image and no label of an anomalous class is used
to fit anything. Models are run folders under <protocol folder>/models/ (reused when complete, resumed when
killed); per-unit scores are cached in scores/, and auroc.json is written last.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import data as D
from ..atomic import write_atomic
from ..evaluate import write_json_atomic, write_text_atomic
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .report import (DEEP_SVDD, DEEP_SVDD_MEAN, auroc_bars, auroc_markdown, auroc_table, corruption_examples,
                     corruption_markdown, extremes_grid, roc_curves, score_histograms, severity_curves)
from .scores import SCORES, AnomalyScorer, auroc

PROTOCOLS = ("one-class", "held-out", "corruptions")
# Named overlays of cifar_ae.trials.PRESETS: what the protocols change for their models' runs (train/test images,
# epochs; t-SNE off), and their own sizes. smoke: seconds (tests, the notebook check); quick: minutes on a
# 2-core CPU; full: longer, for a GPU.
PRESETS = {
    "smoke": dict(classes=("airplane", "automobile"), heldout=("cat",), corruption_images=64,
                  autoencoder=dict(train_images=270, test_images=400, epochs=1),
                  joint=dict(train_images=540, test_images=400, epochs=1)),
    "quick": dict(classes=D.CLASS_NAMES, heldout=("cat",), corruption_images=2000,
                  autoencoder=dict(train_images=None, test_images=None, epochs=15),
                  joint=dict(train_images=None, test_images=None, epochs=3)),
    "full": dict(classes=D.CLASS_NAMES, heldout=D.CLASS_NAMES, corruption_images=None,
                 autoencoder=dict(train_images=None, test_images=None, epochs=100),
                 joint=dict(train_images=None, test_images=None, epochs=30)),
}
# Shared by all presets: mirror images in training and scoring, features pooled 2x2 for the Gaussians, and a
# tenth of each model's normal training images held out (validation = calibration).
COMMON = dict(batch_size=64, learning_rate=1e-3, tta=True, feature_pool=2, calibration_fraction=0.1)
FLIP = {"policy": None, "flip": True, "translate": 0}  # augment.BatchAugmenter: random mirror only


def settings_for(preset: str) -> dict:
    """A preset's fields merged with COMMON."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}.")
    return {**COMMON, **PRESETS[preset]}


def model_trial(kind, name, preset, st, train_set, train_classes, n_train, description):
    """The Trial of one protocol model: `v1-cnn-ae` (kind "autoencoder") or `v2-joint-noaug` ("joint"), with mirror
    augmentation, the protocol's batch size and learning rate, its classes, and its preset overlay."""
    from ..trials import get_trial
    base = get_trial("v1-cnn-ae" if kind == "autoencoder" else "v2-joint-noaug")
    overlay = dict(st[kind])
    cap = overlay["train_images"]
    n = n_train if cap is None else min(n_train, int(round(cap / (1 - st["calibration_fraction"]))))
    overlay.update(val_images=max(2, int(round(n * st["calibration_fraction"]))), tsne_points=0)
    return base.replace(name=name, description=description, batch_size=st["batch_size"],
                        learning_rate=st["learning_rate"], augmentation=FLIP, train_set=train_set,
                        train_classes=None if train_classes is None else tuple(train_classes),
                        presets={preset: overlay})


def train_and_load(trial, preset, seed, models_dir, source, verbose):
    """run_trial (reused if complete), then the run's data split and its best model (Keras safe mode)."""
    from ..training import prepare_data, run_trial
    run = run_trial(trial, preset, seed, out_dir=models_dir, source=source, verbose=verbose)
    data = prepare_data(trial, trial.settings(preset), seed, source)
    from ..scoring import load_model
    return load_model(run / "model.keras"), data, run


def protocol_dir(protocol, preset, seed, out_dir=None) -> Path:
    from ..training import runs_root
    return runs_root(out_dir) / "anomaly" / protocol / f"{preset}-s{seed}"


def run_protocol(protocol, preset="quick", seed=0, out_dir=None, source=None, command=None, verbose=0) -> Path:
    """Run one protocol into its run folder (config.json, auroc.json, auroc.md, figures/, models/) and return it.

    Per-unit scores are cached in scores/ so a killed run resumes; a run whose settings changed starts over.
    """
    from ..backend import versions
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; valid protocols: {', '.join(PROTOCOLS)}.")
    settings = settings_for(preset)
    run = protocol_dir(protocol, preset, seed, out_dir)
    _reset_if_changed(run, settings)
    d = D.load_cifar10(source)
    run.mkdir(parents=True, exist_ok=True)
    command = command or f"cifar_ae.anomaly.run_protocol({protocol!r}, preset={preset!r}, seed={seed})"
    config = {"protocol": protocol, "preset": preset, "seed": seed, "settings": settings, "scores": list(SCORES),
              "command": command, "cwd": os.getcwd(), "data_source": d.source, "versions": versions(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(run / "config.json", config)
    t0 = time.perf_counter()
    runner = {"one-class": _one_class, "held-out": _held_out, "corruptions": _corruptions}[protocol]
    result = runner(d, settings, seed, run, preset, source, verbose)
    result.update({"protocol": protocol, "preset": preset, "seed": seed, "command": command,
                   "seconds": round(time.perf_counter() - t0, 1),
                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_json_atomic(run / "auroc.json", result)  # written last: its presence marks a complete run
    return run


def _reset_if_changed(run, settings):
    """Empty a protocol folder made with other settings or scores: its cached scores would mislead."""
    cfg = run / "config.json"
    if not cfg.is_file():
        return
    old = json.loads(cfg.read_text())
    if old.get("settings") != json.loads(json.dumps(settings)) or old.get("scores", list(SCORES)) != list(SCORES):
        shutil.rmtree(run)


def _save_npz_atomic(path, **arrays):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def _cached_unit(path, compute):
    """Load a unit's scores from `path`, or compute ({"scores": {...}, "is_anomalous": ...}) and save."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {"scores": {k[6:]: z[k] for k in z.files if k.startswith("score_")},
                    "is_anomalous": z["is_anomalous"], "seconds": float(z["seconds"])}
    t0 = time.perf_counter()
    unit = compute()
    unit["seconds"] = time.perf_counter() - t0
    _save_npz_atomic(path, is_anomalous=unit["is_anomalous"], seconds=unit["seconds"],
                     **{f"score_{k}": v for k, v in unit["scores"].items()})
    return unit


def _log(msg):
    print(f"[anomaly] {msg}", flush=True)


def _unit_figures(figs, name, images, unit, title):
    from ..plots import save
    s, y = unit["scores"], unit["is_anomalous"]
    save(score_histograms(s, y, title), figs / f"{name}_histograms.png")
    save(roc_curves(s, y, title), figs / f"{name}_roc.png")
    best = max(s, key=lambda k: auroc(s[k][~y], s[k][y]))
    save(extremes_grid(images, s[best], y, title=f"{title}, {best}"), figs / f"{name}_extremes.png")


def _report_unit(protocol, u, unit):
    s, y = unit["scores"], unit["is_anomalous"]
    _log(f"{protocol} {u}: " + " ".join(f"{k} {100 * auroc(v[~y], v[y]):.1f}" for k, v in s.items())
         + f" ({unit['seconds']:.0f} s)")


def _units(st, key):
    return [D.CLASS_NAMES[D.class_index(c)] for c in st[key]]


def _one_class(d, st, seed, run, preset, source, verbose):
    """Train on one class, score the test set; AUROC of that class against the rest, for each class."""
    from ..plots import save
    units, results = _units(st, "classes"), {}
    for u in units:
        def compute(u=u):
            n_class = int(np.sum(d.y_train == D.class_index(u)))
            trial = model_trial("autoencoder", f"anomaly-ae-{u}", preset, st, "full", (u,), n_class,
                                f"v1-cnn-ae on {u} only (one-class anomaly detection)")
            model, data, _ = train_and_load(trial, preset, seed, run / "models", source, verbose)
            scorer = AnomalyScorer(model, feature_pool=st["feature_pool"], tta=st["tta"]).fit(data["x_train"],
                                                                                              data["x_val"])
            return {"scores": scorer.score(data["x_test"]), "is_anomalous": data["y_test"] != D.class_index(u)}

        results[u] = _cached_unit(run / "scores" / f"{u}.npz", compute)
        _report_unit("one-class", u, results[u])
    x_test = _test_images(d, st["autoencoder"]["test_images"], seed)
    for u in units:
        _unit_figures(run / "figures", u, x_test, results[u], f"normal = {u}")
    table = auroc_table(results, units)
    reference = {**{u: DEEP_SVDD[u] for u in units}, "mean": DEEP_SVDD_MEAN}
    save(auroc_bars(table, units, reference, "Deep SVDD"), run / "figures" / "auroc_per_class.png")
    md = auroc_markdown(table, units, reference, "Deep SVDD (Ruff et al. 2018)")
    return _finish(run, table, units, md, st, reference={"deep_svdd": reference}, protocol="one-class")


def _test_images(d, n, seed):
    """The test images the models' runs scored (the same stratified slice prepare_data takes)."""
    from ..training import _take
    return _take(d.x_test, d.y_test, n, seed)[0]


def _held_out(d, st, seed, run, preset, source, verbose):
    """Joint model on nine classes of the imbalanced set; the tenth class is the anomaly."""
    from ..plots import save
    _, y_all, _ = D.make_imbalanced(d.x_train, d.y_train, d.train_files)
    units, results = _units(st, "heldout"), {}
    for u in units:
        def compute(u=u):
            nine = [c for c in D.CLASS_NAMES if c != u]  # the held-out class never reaches training or calibration
            n = int(np.sum(y_all != D.class_index(u)))
            trial = model_trial("joint", f"anomaly-joint-without-{u}", preset, st, "imbalanced", nine, n,
                                f"v2-joint-noaug without {u} (held-out anomaly detection)")
            model, data, _ = train_and_load(trial, preset, seed, run / "models", source, verbose)
            scorer = AnomalyScorer(model, feature_pool=st["feature_pool"], tta=st["tta"]).fit(data["x_train"],
                                                                                              data["x_val"])
            return {"scores": scorer.score(data["x_test"]), "is_anomalous": data["y_test"] == D.class_index(u)}

        results[u] = _cached_unit(run / "scores" / f"{u}.npz", compute)
        _report_unit("held-out", u, results[u])
    x_test = _test_images(d, st["joint"]["test_images"], seed)
    for u in units:
        _unit_figures(run / "figures", u, x_test, results[u], f"anomaly = held-out {u}")
    table = auroc_table(results, units)
    save(auroc_bars(table, units), run / "figures" / "auroc_per_class.png")
    return _finish(run, table, units, auroc_markdown(table, units), st, protocol="held-out")


def _corruptions(d, st, seed, run, preset, source, verbose):
    """Joint model on the imbalanced set; clean test images against corrupted copies, per corruption and severity."""
    from ..plots import save
    units = [f"{c}/s{s}" for c in CORRUPTIONS for s in SEVERITIES]
    cache = run / "scores"
    x_clean = _test_images(d, st["corruption_images"], seed)
    scorer = clean_scores = None
    if not all((cache / f"{u.replace('/', '_')}.npz").is_file() for u in units):
        _, y_all, _ = D.make_imbalanced(d.x_train, d.y_train, d.train_files)
        st_run = {**st, "joint": {**st["joint"], "test_images": st["corruption_images"]}}
        trial = model_trial("joint", "anomaly-joint", preset, st_run, "imbalanced", None, len(y_all),
                            "v2-joint-noaug with mirror augmentation (corruptions anomaly detection)")
        model, data, _ = train_and_load(trial, preset, seed, run / "models", source, verbose)
        scorer = AnomalyScorer(model, feature_pool=st["feature_pool"], tta=st["tta"]).fit(data["x_train"], data["x_val"])
        clean_scores = scorer.score(x_clean)
    results = {}
    for u in units:
        name, sev = u.split("/s")

        def compute(name=name, sev=int(sev)):
            bad = scorer.score(corrupt(x_clean, name, sev, seed))
            return {"scores": {k: np.concatenate([clean_scores[k], bad[k]]) for k in bad},
                    "is_anomalous": np.r_[np.zeros(len(x_clean), bool), np.ones(len(x_clean), bool)]}

        results[u] = _cached_unit(cache / f"{u.replace('/', '_')}.npz", compute)
        _report_unit("corruptions", u, results[u])
    figs = run / "figures"
    for name in CORRUPTIONS:  # figures at the middle severity; the table has all five
        images = np.concatenate([x_clean, corrupt(x_clean, name, 3, seed)])
        _unit_figures(figs, f"{name}_s3", images, results[f"{name}/s3"], f"clean vs {name}, severity 3")
    save(corruption_examples(x_clean[0], seed), figs / "corruption_examples.png")
    table = auroc_table(results, units)
    save(severity_curves(table), figs / "auroc_by_severity.png")
    return _finish(run, table, units, corruption_markdown(table), st, protocol="corruptions")


def _finish(run, table, units, md, st, protocol, reference=None):
    """AUROC table as markdown (auroc.md) and the result dict that run_protocol writes as auroc.json."""
    cfg = json.loads((run / "config.json").read_text())
    best = max(table, key=lambda s: table[s]["mean"])
    header = (f"# Anomaly detection, {protocol} protocol (AUROC %, higher is better; 50 = chance)\n\n"
              f"Generated by `{cfg['command']}` (preset `{cfg['preset']}`, seed {cfg['seed']}). "
              f"Best mean: **{best}** {table[best]['mean']:.1f}.\n\n")
    write_text_atomic(run / "auroc.md", header + md)
    return {"units": list(units), "scores": list(table), "auroc": table, "best": {"score": best, "mean": table[best]["mean"]},
            "reference": reference or {}, "settings": st}


def load_result(run) -> dict:
    """auroc.json of a finished run folder."""
    path = Path(run) / "auroc.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no finished anomaly run here; run `python -m cifar_ae anomaly` first.")
    return json.loads(path.read_text())


def cli_command() -> str:
    """How this process was started, for config.json (see cifar_ae.runinfo)."""
    from ..runinfo import command_line
    return command_line()
