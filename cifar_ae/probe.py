"""The frozen-feature linear probe, representation learning's standard test of what features are worth.

A probe file (experiments/probes/*.toml) lists rows: raw pixels, PCA of the pixels, a randomly initialised encoder,
or the code of a trained encoder (a registered trial or an experiment row, trained first if its run is missing),
cut at the layer its classifier reads. For each row and seed, on the study's imbalanced subset:

- features of the training images, the 2,000-image hold-out and the full test set, flattened and standardised
  (scikit-learn's StandardScaler, fitted on the training features);
- a multinomial LogisticRegression for each C in the file's grid, chosen by hold-out accuracy; no augmentation;
- the test set scored once, with the chosen C: accuracy, balanced accuracy, per-class recall.

Each probe is a folder, <runs>/probe/<row>/<preset>-s<seed> (config.json, then metrics.json written last), and
`python -m cifar_ae probe FILE` trains what is missing and writes the table (results/probe.md and .json).
"""
from __future__ import annotations

import json
import statistics
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .data import CLASS_NAMES, STUDY_REDUCED_CLASSES
from .evaluate import write_json_atomic, write_text_atomic
from .runs import variant_name
from .trials import PRESETS, Trial, TrialError, check_seed

PROBES_DIR = Path(__file__).resolve().parent.parent / "experiments" / "probes"
KINDS = ("pixels", "pca", "random", "encoder")
FILE_KEYS = {"description": str, "preset": str, "seeds": list, "C": list, "max_iter": int, "rows": dict}
ROW_KEYS = {"why": str, "features": str, "components": int, "encoder": str, "layer": str, "preset": str,
            "seeds": list, "epochs": int, "runs": str, "variant": str}


# the images every probe row sees: the study's imbalanced subset with a stratified 2,000-image hold-out
DATA_TRIAL = Trial("probe-data", "the probe's images", task="classifier", model="dense_classifier")


class ProbeError(TrialError):
    """A probe file or row is invalid; the message names the file, the row and the fix."""


@dataclass(frozen=True)
class ProbeRow:
    name: str
    why: str
    features: str                 # one of KINDS
    components: int | None = None  # pca: how many (capped by the data's rank)
    encoder: str | None = None     # random / encoder: a registered trial or "<experiment>:<row>"
    layer: str = "features"        # the layer the encoder's classifier reads
    preset: str | None = None      # the encoder's run, where it is not the file's preset (e.g. v4's selection runs)
    seeds: tuple | None = None     # the encoder's seeds, where it has fewer than the file's
    epochs: int | None = None      # a registered encoder's run capped at these epochs (as tools/study_runs.py --cap)
    runs: str | None = None        # a registered encoder's runs under <runs root>/<runs> (study: tools/study_runs.py's)
    variant: str | None = None     # ... in <preset>-s<seed>-<variant> (as tools/study_runs.py --variant)


@dataclass(frozen=True)
class Probe:
    name: str
    path: Path
    description: str
    preset: str
    seeds: tuple
    C: tuple
    rows: dict
    max_iter: int = 1000


def _check_keys(where, data, allowed):
    for key, value in data.items():
        if key not in allowed:
            raise ProbeError(f"{where}: unknown key {key!r}; valid keys: {', '.join(allowed)}.")
        if not isinstance(value, allowed[key]) or isinstance(value, bool):
            raise ProbeError(f"{where}: {key} must be a {allowed[key].__name__}; got {value!r}.")


def load_probe(path) -> Probe:
    """A probe file, every row checked (kind, encoder reference, components) before anything runs."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProbeError(f"{path}: not a readable probe file ({e}); see experiments/probes/.") from None
    _check_keys(str(path), data, FILE_KEYS)
    if data.get("preset") not in PRESETS:
        raise ProbeError(f"{path}: preset must be one of {', '.join(PRESETS)}; got {data.get('preset')!r}.")
    c_grid = tuple(data.get("C", (0.01, 0.1, 1.0)))
    if not c_grid or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in c_grid):
        raise ProbeError(f"{path}: C must be a list of numbers > 0; got {c_grid!r}.")
    rows = {}
    for name, row in data.get("rows", {}).items():
        where = f"{path}, row {name!r}"
        if not isinstance(row, dict):
            raise ProbeError(f"{where}: a row is a table of {', '.join(ROW_KEYS)}.")
        _check_keys(where, row, ROW_KEYS)
        kind = row.get("features")
        if kind not in KINDS:
            raise ProbeError(f"{where}: features must be one of {', '.join(KINDS)}; got {kind!r}.")
        if kind == "pca" and not (isinstance(row.get("components"), int) and row["components"] >= 1):
            raise ProbeError(f"{where}: a pca row needs components = N >= 1.")
        if kind in ("random", "encoder"):
            if not row.get("encoder"):
                raise ProbeError(f"{where}: a {kind} row needs encoder = a trial name or \"<experiment>:<row>\".")
            encoder_trial(row["encoder"])  # an unknown trial or row fails here, naming the valid ones
        elif "preset" in row or "seeds" in row:
            raise ProbeError(f"{where}: preset and seeds name an encoder's runs and a {kind} row has no encoder; "
                             "remove them.")
        if "preset" in row and kind != "encoder":
            raise ProbeError(f"{where}: a random row builds its encoder untrained, so it has no run to take a preset "
                             "from; remove preset.")
        if "preset" in row and row["preset"] not in PRESETS:
            raise ProbeError(f"{where}: preset must be one of {', '.join(PRESETS)}; got {row['preset']!r}.")
        if "epochs" in row and (kind != "encoder" or ":" in row["encoder"] or row["epochs"] < 1):
            raise ProbeError(f"{where}: epochs caps a registered trial's encoder run (>= 1); an experiment row has its "
                             f"own epochs; got epochs={row['epochs']!r} for {row.get('encoder')!r}.")
        if ("runs" in row or "variant" in row) and (kind != "encoder" or ":" in row["encoder"]):
            raise ProbeError(f"{where}: runs and variant find a registered trial's encoder runs (as tools/study_runs.py "
                             f"makes them); an experiment row has its own folder; got {row.get('encoder')!r}.")
        if "runs" in row and (not row["runs"] or not all(part.isidentifier() for part in row["runs"].split("/"))):
            raise ProbeError(f"{where}: runs is a folder under the runs root, e.g. \"study\"; got {row['runs']!r}.")
        if "variant" in row:
            from .runs import folder_name
            try:
                folder_name("study", 0, "", True, row["variant"])
            except (TrialError, ValueError) as e:
                raise ProbeError(f"{where}: {e}") from None
        if "seeds" in row and not row["seeds"]:
            raise ProbeError(f"{where}: seeds is empty; list the encoder's seeds, or remove seeds for the file's.")
        row_seeds = tuple(check_seed(s) for s in row["seeds"]) if "seeds" in row else None
        rows[name] = ProbeRow(name, row.get("why", ""), kind, row.get("components"), row.get("encoder"),
                              row.get("layer", "features"), row.get("preset"), row_seeds, row.get("epochs"),
                              row.get("runs"), row.get("variant"))
    if not rows:
        raise ProbeError(f"{path}: no rows; add [rows.NAME] tables.")
    seeds = tuple(check_seed(s) for s in data.get("seeds", [0]))
    return Probe(path.stem, path, data.get("description", ""), data["preset"], seeds, c_grid, rows,
                 data.get("max_iter", 1000))


SMOKE_MAX_ITER = 20


def at_preset(probe, preset) -> Probe:
    """The probe with every run at one preset (`--preset smoke` in tests): the rows' own encoder presets too."""
    rows = {name: replace(row, preset=None, epochs=None) for name, row in probe.rows.items()}
    if preset == "smoke":  # smoke checks the plumbing on 256 images, where a fit at large C never converges anyway
        return replace(probe, preset=preset, rows=rows, max_iter=min(probe.max_iter, SMOKE_MAX_ITER))
    return replace(probe, preset=preset, rows=rows)


def encoder_trial(reference):
    """The Trial an encoder reference names: a registered trial, or a row of an experiment file."""
    from .trials import get_trial
    if ":" in reference:
        from .experiments import row_trial
        return row_trial(reference)
    return get_trial(reference)


def encoder_run(reference, preset, seed, runs_root, epochs=None, variant=None) -> Path:
    """The encoder's complete run folder, trained first where it is missing (as `train` or `experiment` would);
    epochs caps a registered trial's run, in the folder study_runs.py gives a capped run (<preset>-s<seed>-max<N>),
    and variant ends its folder's name as study_runs.py --variant does."""
    if ":" in reference:
        from .experiments import EXPERIMENTS_DIR, load_experiment, run_experiment
        stem, _, row = reference.partition(":")
        experiment = load_experiment(EXPERIMENTS_DIR / f"{stem}.toml")
        return run_experiment(experiment, [row], [seed], preset, runs_root)[0]
    from .training import run_trial
    name = variant_name(f"max{epochs}" if epochs else "", variant)
    return run_trial(reference, preset, seed, out_dir=runs_root, verbose=0, epochs=epochs, variant=name)


# --------------------------------------------------------------------------- features

def _encoder_inputs(trial, data, x_uint8):
    """Images as the encoder's run saw them: [0, 1], then the trial's scaling fitted on its training images."""
    from .data import fit_scaling
    x = x_uint8.astype(np.float32) / 255.0
    if trial.scaling == "unit":
        return x
    mean, std = fit_scaling(data["x_train"], trial.scaling)
    return (x - mean) / std


def features(row, data, preset, seed, runs_root) -> tuple[dict, dict]:
    """({split: feature matrix}, what made them) for one row: train, val and test, flattened."""
    splits = ("x_train", "x_val", "x_test")
    if row.features in ("pixels", "pca"):
        flat = {k: data[k].reshape(len(data[k]), -1).astype(np.float32) / 255.0 for k in splits}
        if row.features == "pixels":
            return flat, {"dimensions": flat["x_train"].shape[1]}
        from sklearn.decomposition import PCA
        n = min(row.components, *flat["x_train"].shape)  # a PCA has at most rank(training images) components
        pca = PCA(n, random_state=seed).fit(flat["x_train"])
        return ({k: pca.transform(v).astype(np.float32) for k, v in flat.items()},
                {"dimensions": n, "components_asked": row.components,
                 "explained_variance": round(float(pca.explained_variance_ratio_.sum()), 4)})
    import keras
    from .inference import predict
    from .models import BUILDERS, encoder_of
    trial = encoder_trial(row.encoder)
    if row.features == "random":
        keras.utils.set_random_seed(seed)
        model, made = BUILDERS[trial.model](**trial.model_args), {"encoder": row.encoder, "weights": "random"}
    else:
        from .completeness import run_status
        from .scoring import load_model
        run = encoder_run(row.encoder, row.preset or preset, seed, Path(runs_root) / (row.runs or ""), row.epochs,
                          row.variant)
        status = run_status(run)
        model = load_model(run / "model.keras")
        made = {"encoder": row.encoder, "encoder_preset": row.preset or preset, "encoder_epochs": row.epochs,
                "encoder_variant": row.variant,
                "run": str(run), "key_digest": status.config.get("key_digest")}
    encoder = encoder_of(model, row.layer)
    out = {k: predict(encoder, _encoder_inputs(trial, data, data[k]), 256) for k in splits}
    out = {k: np.asarray(v, np.float32).reshape(len(v), -1) for k, v in out.items()}
    return out, {**made, "layer": row.layer, "dimensions": out["x_train"].shape[1]}


def fit_probe(feats, data, c_grid, max_iter=1000, seed=0) -> dict:
    """Standardise, fit a logistic regression per C, keep the best on the hold-out, score the test set once."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(feats["x_train"])
    train, val, test = (scaler.transform(feats[k]) for k in ("x_train", "x_val", "x_test"))
    by_c, best = {}, None
    for c in c_grid:
        model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(train, data["y_train"])
        by_c[str(c)] = float(accuracy_score(data["y_val"], model.predict(val)))
        if best is None or by_c[str(c)] > by_c[str(best[0])]:
            best = (c, model)
    predicted = best[1].predict(test)  # the test set, once, with the C the hold-out chose
    recall = recall_score(data["y_test"], predicted, labels=list(range(len(CLASS_NAMES))), average=None, zero_division=0)
    return {"C": best[0], "val_accuracy_by_C": by_c, "val_accuracy": by_c[str(best[0])],
            "test_accuracy": float(accuracy_score(data["y_test"], predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(data["y_test"], predicted)),
            "recall": {name: float(r) for name, r in zip(CLASS_NAMES, recall)}}


# --------------------------------------------------------------------------- runs and the table

def probe_folder(runs_root, probe, row, seed) -> Path:
    return Path(runs_root) / "probe" / probe.name / row / f"{probe.preset}-s{seed}"


def run_probe(probe, rows=None, seeds=None, runs_root="runs", data_source=None) -> list:
    """Fit every missing probe (row x seed); returns the folders. A folder whose metrics.json exists is reused."""
    from .runs import check_writable, code_version
    from .runinfo import command_line
    from .training import prepare_data
    unknown = [r for r in rows or [] if r not in probe.rows]
    if unknown:
        raise ProbeError(f"{probe.path}: unknown row {unknown[0]!r}; valid rows: {', '.join(probe.rows)}.")
    check_writable(runs_root)
    folders = []
    for name in rows or list(probe.rows):
        row = probe.rows[name]
        for seed in seeds or row.seeds or probe.seeds:
            folder = probe_folder(runs_root, probe, name, seed)
            folders.append(folder)
            if (folder / "metrics.json").is_file():
                if _made_by(folder, row, probe):
                    continue
                (folder / "metrics.json").unlink()  # the row now names another encoder or run: fit it again
            # every row on the same images: the study's subset, its hold-out (chooses C) and the test set (scored once)
            data = prepare_data(DATA_TRIAL, DATA_TRIAL.settings(probe.preset), seed, data_source)
            t0 = time.perf_counter()
            feats, made = features(row, data, probe.preset, seed, runs_root)
            config = {"probe": probe.name, "row": name, "why": row.why, "preset": probe.preset, "seed": seed,
                      "C": list(probe.C), "max_iter": probe.max_iter, "features": {"kind": row.features, **made},
                      "train_images": len(data["y_train"]), "val_images": len(data["y_val"]),
                      "test_images": len(data["y_test"]), "command": command_line(), "code_version": code_version()}
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "config.json", config)
            result = fit_probe(feats, data, probe.C, probe.max_iter, seed)
            result.update(row=name, seed=seed, dimensions=made["dimensions"], seconds=round(time.perf_counter() - t0, 1))
            write_json_atomic(folder / "metrics.json", result)  # last: its presence marks the probe done
            print(f"[probe {name}] seed {seed}: test accuracy {100 * result['test_accuracy']:.2f}% "
                  f"(C={result['C']}, {made['dimensions']} features) -> {folder}", flush=True)
    return folders


def _made_by(folder, row, probe) -> bool:
    """Whether a fitted probe folder is this row's: the same kind of features, encoder and encoder run, under the
    probe's C grid and iterations."""
    try:
        config = json.loads((folder / "config.json").read_text())
        made = config["features"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if config.get("C") != list(probe.C) or config.get("max_iter") != probe.max_iter:
        return False
    return (made.get("kind") == row.features and made.get("encoder") == row.encoder
            and (row.features != "pca" or made.get("components_asked") == row.components)
            and (row.features != "encoder" or (made.get("encoder_preset") == (row.preset or probe.preset)
                                                and made.get("encoder_epochs") == row.epochs
                                                and made.get("encoder_variant") == row.variant)))


def _mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _pct(mean, sd):
    return "" if mean is None else f"{100 * mean:.2f}%" + ("" if sd is None else f" ± {100 * sd:.2f}")


def table(probe, runs_root, command=None) -> tuple[str, dict]:
    """The probe's table (Markdown) and record (JSON), from its folders only."""
    rows = []
    for name, row in probe.rows.items():
        found = []
        for folder in sorted((Path(runs_root) / "probe" / probe.name / name).glob(f"{probe.preset}-s*")):
            if (folder / "metrics.json").is_file() and _made_by(folder, row, probe):  # not a stale fit
                found.append((json.loads((folder / "config.json").read_text()),
                              json.loads((folder / "metrics.json").read_text()), folder))
        if not found:
            continue
        metrics = [m for _, m, _ in found]
        acc, acc_sd = _mean_sd([m["test_accuracy"] for m in metrics])
        val, val_sd = _mean_sd([m["val_accuracy"] for m in metrics])
        recall = {c: _mean_sd([m["recall"][c] for m in metrics])[0] for c in CLASS_NAMES}
        rows.append({"row": name, "why": row.why, "features": found[0][0]["features"]["kind"],
                     "encoder": row.encoder, "encoder_preset": found[0][0]["features"].get("encoder_preset"),
                     "encoder_epochs": found[0][0]["features"].get("encoder_epochs"),
                     "dimensions": metrics[0]["dimensions"],
                     "seeds": [m["seed"] for m in metrics], "C": [m["C"] for m in metrics],
                     "val_accuracy": val, "val_accuracy_sd": val_sd, "test_accuracy": acc, "test_accuracy_sd": acc_sd,
                     "recall": recall, "runs": [str(folder) for _, _, folder in found]})
    command = command or f"python -m cifar_ae probe experiments/probes/{probe.name}.toml --table-only"
    lines = ["| row | features | dimensions | seeds | C (by hold-out) | val acc | test acc | "
             + " / ".join(STUDY_REDUCED_CLASSES) + " recall | why |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        halved = " / ".join(f"{100 * r['recall'][c]:.0f}" for c in STUDY_REDUCED_CLASSES)
        encoder = "" if not r["encoder"] else f" {r['encoder']}" + (
            f" ({r['encoder_preset']} run)" if r["encoder_preset"] not in (None, probe.preset) else "") + (
            f" (capped at {r['encoder_epochs']} epochs)" if r["encoder_epochs"] else "")
        lines.append(f"| {r['row']} | {r['features']}{encoder} | "
                     f"{r['dimensions']} | {', '.join(map(str, r['seeds']))} | {', '.join(map(str, r['C']))} | "
                     f"{_pct(r['val_accuracy'], r['val_accuracy_sd'])} | {_pct(r['test_accuracy'], r['test_accuracy_sd'])}"
                     f" | {halved} | {r['why']} |")
    text = (f"# {probe.name}: {probe.description}\n\nGenerated by `{command}` from probe folders "
            f"({sum(len(r['seeds']) for r in rows)} probes; encoders from `{probe.preset}` runs unless a row names "
            "another). A logistic regression on "
            "standardised frozen features, C chosen on the 2,000-image hold-out, the 10,000-image test set scored "
            "once; mean ± sd over seeds.\n\n" + "\n".join(lines) + "\n")
    return text, {"probe": probe.name, "file": f"experiments/probes/{probe.name}.toml", "command": command,
                  "preset": probe.preset, "rows": rows}


def write_table(probe, runs_root, output_dir, command=None) -> Path:
    text, record = table(probe, runs_root, command)
    output = Path(output_dir) / f"{probe.name}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, text)
    write_json_atomic(output.with_suffix(".json"), record)
    return output
