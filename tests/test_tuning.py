"""keras-tuner search: builders and metric, resume, results, saved trial rerun by name, chief + two workers."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import TuneProcesses, free_port

import numpy as np
import pytest

from cifar_ae import cli, trials
from cifar_ae.trials import TRIALS, get_trial

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- no training

def test_the_search_builds_through_the_study_builder_with_kernel_size():
    import keras
    from cifar_ae import models as M
    ref = M.joint_model(filters=(32, 64), convs_per_block=2, head_filters=(128, 128))
    same = M.joint_model(filters=[32, 64], convs_per_block=2, kernel_size=3, head_filters=[128, 128])
    assert same.count_params() == ref.count_params()
    assert [lay.name for lay in same.layers] == [lay.name for lay in ref.layers]
    big = M.joint_model(filters=(16, 32, 64), convs_per_block=1, kernel_size=5, head_filters=(64,))
    out = big(np.zeros((2, 32, 32, 3), np.float32))
    assert out["reconstruction"].shape == (2, 32, 32, 3) and out["label"].shape == (2, 10)
    assert big.get_layer("features").output.shape[1:] == (4, 4, 64)
    assert big.get_layer("enc1_1_conv").kernel.shape[:2] == (5, 5)
    keras.backend.clear_session()


def test_space_maps_to_builder_arguments():
    import keras_tuner as kt
    from cifar_ae import tuning as T
    hp = kt.HyperParameters()
    v = T.joint_space(hp)
    assert {"encoder_blocks", "convs_per_block", "filters", "kernel_size", "dropout", "reconstruction_weight",
            "optimizer", "learning_rate_adam", "batch_size", "class_weight"} <= {p.name for p in hp.space}
    assert v["learning_rate"] == 1e-3 and v["optimizer"] == "adam"
    hp.values.update(encoder_blocks=3, filters=32, head_blocks=1, optimizer="sgd", learning_rate_sgd=0.05)
    v = T.joint_space(hp)
    args = T.joint_model_args(v)
    assert args["filters"] == [32, 64, 128] and args["head_filters"] == [128] and args["bn_momentum"] == 0.9
    from cifar_ae import models as M
    bns = [lay for lay in M.joint_model(**args).layers if "_bn" in lay.name]
    assert bns and all(lay.momentum == 0.9 for lay in bns)  # short trials: BN statistics must keep up
    assert v["learning_rate"] == 0.05  # the active optimizer's own range


def test_balanced_accuracy_matches_sklearn():
    from sklearn.metrics import balanced_accuracy_score
    from cifar_ae.tuning import BalancedAccuracy
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 300)
    y[:120] = 0  # imbalanced
    probs = rng.random((300, 10)).astype(np.float32)
    m = BalancedAccuracy()
    m.update_state(y[:150], probs[:150], sample_weight=np.full(150, 7.0))  # weights do not change it
    m.update_state(y[150:], probs[150:])
    assert float(m.result()) == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)), abs=1e-6)


def test_distributed_flags_set_keras_tuner_variables(monkeypatch):
    from cifar_ae.tuning import configure_distributed
    for k in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert configure_distributed() == "single"
    assert configure_distributed(worker="3", oracle_port=8123) == "worker"
    assert (os.environ["KERASTUNER_TUNER_ID"], os.environ["KERASTUNER_ORACLE_IP"],
            os.environ["KERASTUNER_ORACLE_PORT"]) == ("worker3", "127.0.0.1", "8123")
    with pytest.raises(ValueError, match="no authentication; bind 127.0.0.1 and reach it through an SSH tunnel"):
        configure_distributed(chief=True, oracle_ip="0.0.0.0")
    assert configure_distributed(chief=True, oracle_ip="0.0.0.0", allow_remote=True) == "chief"
    assert configure_distributed(chief=True, oracle_ip="127.0.0.1") == "chief"
    with pytest.raises(ValueError, match="must not contain 'chief'"):
        configure_distributed(worker="subchief")
    with pytest.raises(ValueError, match="exclusive"):
        configure_distributed(chief=True, worker="1")
    monkeypatch.delenv("KERASTUNER_ORACLE_PORT")
    with pytest.raises(ValueError, match="--oracle-port"):
        configure_distributed()


def test_tune_cli_rejects_bad_arguments(capsys):
    assert cli.main(["tune", "--max-trials", "2", "--preset", "fast"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown preset 'fast'; valid presets: smoke, quick, full."
    with pytest.raises(SystemExit):
        cli.main(["tune", "--tuner", "genetic", "--max-trials", "2"])
    assert cli.main(["tune", "--max-trials", "1", "--save-trial", "../../tmp/x"]) == 2
    assert "--save-trial name '../../tmp/x' must be letters" in capsys.readouterr().err


def test_tuned_trials_join_trials_but_never_replace_study_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(trials, "TRIALS", dict(TRIALS))
    monkeypatch.setattr(trials, "TUNED_NAMES", set())
    path = tmp_path / "tuned_trials.json"
    path.write_text(json.dumps({"trials": [
        {"name": "tuned-x", "description": "d", "task": "joint", "model": "tuned_joint_model",
         "model_args": {"filters": [16], "kernel_size": 5}, "learning_rate": 0.002, "future_field": 1},
        {"name": "v2-joint-noaug", "description": "impostor", "task": "joint", "model": "joint_model"}]}))
    assert trials.load_tuned_trials(path) == ["tuned-x"]
    assert trials.TRIALS["v2-joint-noaug"].description != "impostor"
    t = trials.get_trial("tuned-x")
    assert t.learning_rate == 0.002 and t.model == "joint_model"  # an old record's builder name is mapped
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="tuned trials not loaded"):
        assert trials.load_tuned_trials(path) == []


# --------------------------------------------------------------------------- searches (smoke preset)



def _trial_records(project):
    return {p.parent.name: (json.loads(p.read_text()), json.loads((p.parent / "cifar_ae_trial.json").read_text()))
            for p in sorted(project.glob("trial_*/trial.json"))}


@pytest.mark.slow
def test_search_resumes_writes_results_and_saves_a_trial_that_reruns_by_name(tmp_path, cifar_dir, monkeypatch):
    from cifar_ae import tuning as T
    for k in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(trials, "TRIALS", dict(TRIALS))
    monkeypatch.setattr(trials, "TUNED_NAMES", set())
    runs, results = tmp_path / "runs", tmp_path / "results"
    kw = dict(tuner="random", preset="smoke", model="joint", seed=0, runs_dir=runs, results_dir=results,
              save_trial="tuned-test", verbose=0, command="test")
    class Reexec(Exception):
        pass

    def fake_execv(path, argv):  # what --recycle-every does after K trials; here it ends the "process"
        raise Reexec(argv)

    monkeypatch.setattr(os, "execv", fake_execv)
    with pytest.raises(Reexec, match="'--max-trials', '2'"):
        T.run_search(max_trials=2, recycle_every=1, recycle_argv=["python", "-m", "cifar_ae", "tune", "--max-trials", "2"],
                     **kw)
    project = runs / "tuning" / "joint-random-smoke-s0"
    before = _trial_records(project)
    assert list(before) == ["trial_0"] and before["trial_0"][0]["status"] == "COMPLETED"
    assert os.environ.pop("CIFAR_AE_TUNE_COMMAND") == "test"  # the next process records the typed command

    second = T.run_search(max_trials=2, **kw)  # the same search, restarted: continues, trial 0 is not rerun
    after = _trial_records(project)
    assert list(after) == ["trial_0", "trial_1"]
    assert after["trial_0"] == before["trial_0"]
    assert len(second["trials"]) == 2 and second["trials"][0]["score"] == before["trial_0"][0]["score"]
    assert after["trial_1"][1]["pid"] == os.getpid()

    summary = json.loads((results / "tuning.json").read_text())
    assert summary["tuner"] == "random" and summary["command"] == "test"
    for r in summary["trials"]:
        assert r["status"] == "COMPLETED" and 0 <= r["score"] <= 1 and r["seconds"] > 0 and r["tuner_id"] == "tuner0"
        assert {"encoder_blocks", "kernel_size", "batch_size", "optimizer"} <= set(r["hyperparameters"])
    best = summary["best"]
    assert best["val_balanced_accuracy"] == max(r["score"] for r in summary["trials"])
    assert best["test"]["test_images"] == 256 and 0 <= best["test"]["test_accuracy"] <= 1
    assert summary["data"]["val_images"] == 64 and summary["data"]["train_images"] == 256
    md = (results / "tuning.md").read_text()
    assert md.count("| COMPLETED |") == 2 and "**best**" in md
    assert (results / "tuning_scores.png").stat().st_size > 5000

    # the best configuration is a trial now, rerun by name through the ordinary `train` command
    saved = json.loads((results / "tuned_trials.json").read_text())["trials"]
    assert [r["name"] for r in saved] == ["tuned-test"]
    assert get_trial("tuned-test").model_args == summary["saved_trial"]["record"]["model_args"]
    assert cli.main(["train", "tuned-test", "--preset", "smoke", "--out", str(runs)]) == 0
    metrics = json.loads((runs / "tuned-test" / "smoke-s0" / "metrics.json").read_text())
    assert metrics["trial"] == "tuned-test" and 0 <= metrics["test_accuracy"] <= 1




@pytest.mark.slow
@pytest.mark.parametrize("tuner", ["grid"])  # random's chief/worker path: test_tuning_security's honest worker
def test_chief_and_two_workers_share_one_search(tmp_path, cifar_dir, tuner):
    """keras-tuner's chief/worker mode on localhost: both workers run trials, all land in the chief's oracle. Grid,
    whose oracle hands out points in order: two workers must get two different ones."""
    port, max_trials = free_port(), 2  # one trial each: workers start together, a trial takes ~15 s
    runs, results = tmp_path / "runs", tmp_path / "results"
    base = [sys.executable, "-m", "cifar_ae", "tune", "--tuner", tuner, "--max-trials", str(max_trials),
            "--preset", "smoke", "--out", str(runs), "--results", str(results), "--save-trial", "tuned-dist",
            "--oracle-ip", "127.0.0.1", "--oracle-port", str(port)]
    with TuneProcesses(tmp_path, base, REPO) as tp:
        tp.start("chief", ["--chief", "--overwrite"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the chief listens once its oracle exists
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert tp.procs["chief"].poll() is None, tp.tail("chief")
            time.sleep(0.5)
        else:
            pytest.fail("chief never listened\n" + tp.tail("chief"))
        tp.start("w0", ["--worker", "0"])
        tp.start("w1", ["--worker", "1"])
        deadline = time.monotonic() + 300  # generous: the suite may share the CPU with another worker
        for name in ("w0", "w1", "chief"):
            try:
                rc = tp.procs[name].wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} still running at the deadline\n" + tp.tail())
            assert rc == 0, tp.tail(name)

    records = _trial_records(runs / "tuning" / f"joint-{tuner}-smoke-s0")
    assert len(records) == max_trials, tp.tail()
    assert all(t["status"] == "COMPLETED" for t, _ in records.values())
    ran_by = [side["tuner_id"] for _, side in records.values()]
    assert set(ran_by) == {"worker0", "worker1"}, ran_by
    summary = json.loads((results / "tuning.json").read_text())
    assert summary["mode"] == "chief" and len(summary["trials"]) == max_trials
    assert {r["tuner_id"] for r in summary["trials"]} == {"worker0", "worker1"}
    assert summary["best"]["test"]["model_from"] == "retrained and re-scored by the chief"
    assert summary["best"]["scored_by"] == "chief" and len(summary["rescored"]) == max_trials
    assert "this worker ran" in (tmp_path / "w0.log").read_text()
    points = [r["hyperparameters"] for r in summary["trials"]]
    assert points[0] != points[1]


@pytest.mark.slow
def test_grid_search_enumerates_the_listed_space_and_resumes(tmp_path, cifar_dir, monkeypatch):
    from cifar_ae import tuning as T
    for k in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(trials, "TRIALS", dict(TRIALS))
    monkeypatch.setattr(trials, "TUNED_NAMES", set())
    kw = dict(tuner="grid", preset="smoke", model="joint", seed=0, runs_dir=tmp_path / "runs", verbose=0,
              command="test")
    T.run_search(max_trials=1, **kw)
    first = _trial_records(tmp_path / "runs" / "tuning" / "joint-grid-smoke-s0")
    summary = T.run_search(max_trials=2, **kw)  # continues: trial 0 is kept, the next grid point runs
    after = _trial_records(tmp_path / "runs" / "tuning" / "joint-grid-smoke-s0")
    assert list(after) == ["trial_0", "trial_1"] and after["trial_0"] == first["trial_0"]
    points = [r["hyperparameters"] for r in summary["trials"]]
    assert points[0] != points[1]
    for p in points:
        assert p["encoder_blocks"] in (2, 3) and p["batch_size"] in (64, 128)
        assert p.get("learning_rate_adam", 1e-3) in (3e-4, 1e-3, 3e-3)
    project = tmp_path / "runs" / "tuning" / "joint-grid-smoke-s0"
    assert (project / "tuning.json").is_file() and (project / "tuned_trials.json").is_file()  # not results/
    assert "grid" in subprocess.run([sys.executable, "-m", "cifar_ae", "tune", "--help"], capture_output=True,
                                    text=True).stdout
