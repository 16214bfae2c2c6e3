"""Every trial runs on `smoke` and writes a complete, sane run folder; runs resume after a kill."""
import csv
import json
import math

import keras
import numpy as np
import pytest

from cifar_ae import cli
from cifar_ae.trials import PRESETS, TRIALS, get_trial
from cifar_ae.training import reevaluate, run_trial

STUDY_TRIALS = ["v0-mlp-ae", "v0-dense", "v0-conv1d", "v1-cnn-ae", "v1-feature-classifier",
                "v2-joint-noaug", "v2-joint-aug-adam", "v2-joint-aug-sgd"]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def test_list_shows_every_study_trial(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in STUDY_TRIALS:
        assert name in out


def test_unknown_names_list_the_valid_ones(capsys):
    with pytest.raises(ValueError, match="unknown trial 'v9'; valid trials: v0-mlp-ae, .*v2-joint-aug-sgd"):
        get_trial("v9")
    with pytest.raises(ValueError, match="unknown preset 'fast'; valid presets: smoke, quick, full, study"):
        TRIALS["v0-mlp-ae"].settings("fast")
    assert cli.main(["train", "v0-mlp-ae", "--preset", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown preset 'fast'; valid presets: smoke, quick, full, study."


def check_run_folder(run, trial):
    names = {p.name for p in run.rglob("*") if p.is_file()}
    assert {"config.json", "history.csv", "metrics.json", "model.keras", "curves.png", "class_distribution.png"} <= names
    assert not (run / "backup").exists() and not (run / "checkpoints").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 0 and config["preset"] == "smoke" and config["trial"]["name"] == trial.name
    assert config["versions"]["keras"] == keras.__version__ and config["command"]
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs"] == 1 and m["test_images"] == PRESETS["smoke"]["test_images"]
    if trial.task != "autoencoder":
        assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["balanced_accuracy"] <= 1.0
        cm = np.array(m["confusion_matrix"])
        assert cm.shape == (10, 10) and cm.sum() == m["test_images"]
        assert "confusion_matrix.png" in names
    if trial.task != "classifier":
        assert 0.0 < m["recon_mse"] < 0.25 and math.isfinite(m["recon_psnr"])
        assert "reconstructions.png" in names
    for v in [m.get("test_accuracy"), m.get("recon_mse")]:
        assert v is None or math.isfinite(v)


@pytest.mark.parametrize("name", STUDY_TRIALS)
def test_trial_runs_on_smoke(name, runs_root, cifar_dir):
    run = run_trial(name, "smoke", seed=0, out_dir=runs_root, verbose=0)
    check_run_folder(run, TRIALS[name])
    loaded = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert loaded.count_params() > 0


def test_weight_tying_option_trains_and_reloads(tmp_path, cifar_dir):
    run = run_trial("v2-joint-noaug", "smoke", out_dir=tmp_path, verbose=0,
                    model_args={"tie_weights": True})
    m = keras.saving.load_model(run / "model.keras", safe_mode=True)
    kinds = {type(layer).__name__ for layer in m.layers}
    assert "TiedConv2D" in kinds and "Conv2DTranspose" not in kinds


def test_evaluate_recomputes_the_same_metrics(runs_root, cifar_dir):
    run = run_trial("v1-cnn-ae", "smoke", seed=0, out_dir=runs_root, verbose=0)  # reuses the run above
    before = json.loads((run / "metrics.json").read_text())
    after = reevaluate(run)
    assert after["recon_mse"] == pytest.approx(before["recon_mse"], rel=1e-5)


class Interrupt(keras.callbacks.Callback):
    """Kills training after `after` finished epochs, like a Ctrl-C or a lost machine."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise KeyboardInterrupt("forced interruption")


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_killed_run_resumes_from_last_finished_epoch(tmp_path, cifar_dir):
    with pytest.raises(KeyboardInterrupt):
        run_trial("v1-cnn-ae", "smoke", out_dir=tmp_path, epochs=3, verbose=0, callbacks=[Interrupt(after=2)])
    (run,) = (tmp_path / "v1-cnn-ae").iterdir()
    assert not (run / "metrics.json").exists()  # an unfinished run has no metrics
    record = RecordEpochs()
    run_trial("v1-cnn-ae", "smoke", out_dir=tmp_path, epochs=3, verbose=0, callbacks=[record])
    # the interrupt fired in epoch 2's on_epoch_end, before that epoch was committed: it is trained again
    assert record.epochs == [1, 2]
    with open(run / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3


def test_report_tables_every_run(runs_root, cifar_dir, tmp_path):
    run_trial("v0-mlp-ae", "smoke", seed=0, out_dir=runs_root, verbose=0)  # at least one run, reused if present
    out = tmp_path / "table.md"
    assert cli.main(["report", "--runs", str(runs_root), "--output", str(out)]) == 0
    table = out.read_text()
    trials = {p.parent.parent.name for p in runs_root.glob("*/*/metrics.json")}
    assert "v0-mlp-ae" in trials
    for name in trials:
        assert f"| {name} | smoke | 0 |" in table


def test_tsne_figure_colours_every_class():
    from cifar_ae import plots
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)
    feats = rng.normal(size=(60, 8)) + labels[:, None]
    fig = plots.tsne(feats, labels, [f"c{i}" for i in range(10)])
    assert len(fig.axes[0].collections) == 10


def _study_run(root, trial, folder, epochs_setting, epochs, stopped_early, upstream=None, seed=0, accuracy=0.5):
    run = root / trial / folder
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"settings": {"epochs": epochs_setting}, "upstream_run": upstream}))
    (run / "metrics.json").write_text(json.dumps({"trial": trial, "preset": "study", "seed": seed, "epochs": epochs,
                                                  "best_epoch": epochs, "stopped_early": stopped_early,
                                                  "test_accuracy": accuracy, "recon_mse": 0.002}))
    with open(run / "history.csv", "w", newline="") as f:
        csv.writer(f).writerows([["epoch", "accuracy"], *[[i, 0.5 + i / 1000] for i in range(epochs)]])
    return run


def test_the_study_table_never_averages_a_capped_run_with_an_uncapped_one(tmp_path):
    from cifar_ae.report import study_markdown, study_rows, verdict
    _study_run(tmp_path, "v2-joint-aug-adam", "study-s0-max40", 40, 40, False, seed=0, accuracy=0.88)
    _study_run(tmp_path, "v2-joint-aug-adam", "study-s1-max40", 40, 40, False, seed=1, accuracy=0.86)
    _study_run(tmp_path, "v2-joint-aug-adam", "study-s0", 100, 60, True, seed=0, accuracy=0.90)
    rows = study_rows(tmp_path)
    assert [(r["seeds"], r["cap"]) for r in rows] == [([0], None), ([0, 1], 40)]  # the study's length first
    assert rows[0]["mean"] == 0.90 and rows[1]["mean"] == pytest.approx(0.87)
    assert rows[1]["train_accuracy"] == pytest.approx(0.539)  # history's row for epoch 40, found by its epoch column
    lines = [line for line in study_markdown(rows).splitlines() if line.startswith("| v2-joint-aug-adam |")]
    assert "60 of 100 (early stop)" in lines[0] and "capped at 40 epochs: 40 of 40, 40 of 40" in lines[1]
    assert verdict(0.88, 0.86, "test_accuracy") == "reproduced"  # exactly 2 points, despite floating point
    assert verdict(0.8801, 0.86, "test_accuracy") == "better" and verdict(0.000875, 0.0007, "recon_mse") == "reproduced"


def test_the_study_table_says_which_caps_bound(tmp_path):
    from cifar_ae.report import study_markdown, study_rows
    _study_run(tmp_path, "v0-mlp-ae", "study-s0-max30", 30, 30, False)
    _study_run(tmp_path, "v0-dense", "study-s0-ae-max30", 100, 12, True, upstream="runs/study/v0-mlp-ae/study-s0-max30")
    _study_run(tmp_path, "v0-conv1d", "study-s0-max30", 30, 20, True)  # stopped before its cap
    table = {line.split(" | ")[0][2:]: line for line in study_markdown(study_rows(tmp_path)).splitlines()
             if line.startswith("| v0-")}
    assert "capped at 30 epochs: 30 of 30" in table["v0-mlp-ae"] and "(capped)" in table["v0-mlp-ae"]
    assert "its autoencoder capped at 30 epochs" in table["v0-dense"] and "(capped)" in table["v0-dense"]
    assert "20 of 100 (early stop) (its cap of 30 not reached)" in table["v0-conv1d"]
    assert "(capped)" not in table["v0-conv1d"]
    # a hand-edited or hostile upstream_run names nothing: the table is still built, without an encoder cap
    (tmp_path / "v1-cnn-ae" / "study-s0").mkdir(parents=True)
    (tmp_path / "v1-cnn-ae" / "study-s0" / "config.json").write_text("{not json")
    for i, up in enumerate([5, "../../..", "runs/study/v1-cnn-ae/study-s0", {"settings": 1}]):
        _study_run(tmp_path, "v1-feature-classifier", f"study-s{i}", 100, 12, True, upstream=up)
    row = next(r for r in study_rows(tmp_path) if r["trial"] == "v1-feature-classifier")
    assert row["upstream_cap"] is None and len(row["seeds"]) == 4


def test_runs_of_a_net_registered_before_are_side_rows_and_its_new_row_says_not_run(tmp_path):
    """Issue 44 re-registered v1-cnn-ae: a kept run of the one-conv net, and a classifier on it, are side rows named
    by what they change (the classifier by its encoder's change), never the registered trial's result."""
    from cifar_ae.report import study_markdown, study_rows
    from cifar_ae.trials import TRIALS
    old_ae = _study_run(tmp_path, "v1-cnn-ae", "study-s0", 100, 100, False)
    _study_run(tmp_path, "v1-feature-classifier", "study-s0", 100, 40, True, upstream="runs/study/v1-cnn-ae/study-s0")
    for run, trial in ((old_ae, "v1-cnn-ae"), (tmp_path / "v1-feature-classifier" / "study-s0", "v1-feature-classifier")):
        config = json.loads((run / "config.json").read_text())
        record = TRIALS[trial].to_dict()
        if trial == "v1-cnn-ae":
            record["model_args"] = {}  # as registered before: the builder's default, one conv per block
        (run / "config.json").write_text(json.dumps({**config, "trial": record, "preset": "study"}))
    rows = study_rows(tmp_path)
    assert [r["changed"] for r in rows] == [{"model_args": {"convs_per_block": 1}},
                                            {"upstream v1-cnn-ae": {"model_args": {"convs_per_block": 1}}}]
    table = study_markdown(rows)
    main, side = table.split("Runs of the trials as they were registered before an edit")
    assert "| v1-cnn-ae | test MSE | not run yet as registered |" in main
    assert "| v1-feature-classifier | test acc | not run yet as registered |" in main
    assert "| v1-cnn-ae (convs_per_block=1) | test acc | 50.0% |" in side  # the fake run records an accuracy too
    assert "| v1-feature-classifier (on v1-cnn-ae with convs_per_block=1) | test acc | 50.0% |" in side
