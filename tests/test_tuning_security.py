"""The distributed search trusts no one on the network: an attacker on 127.0.0.1 plays against a real chief."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import TuneProcesses, free_port, tuning_env

import pytest

REPO = Path(__file__).resolve().parent.parent






def test_in_space_names_what_is_outside():
    import keras_tuner as kt
    from cifar_ae.tuning import in_space, joint_space
    hp = kt.HyperParameters()
    joint_space(hp)
    assert in_space(hp.space, {"kernel_size": 3, "learning_rate_adam": 1e-3}) is None
    assert "kernel_size=7 is not one of [3, 5]" in in_space(hp.space, {"kernel_size": 7})
    assert "learning_rate_adam=50.0 is outside" in in_space(hp.space, {"learning_rate_adam": 50.0})
    assert "dropout=0.25 is off its step" in in_space(hp.space, {"dropout": 0.25})
    assert "unknown hyperparameter 'evil'" in in_space(hp.space, {"evil": 1})


@pytest.mark.slow
def test_forged_reports_are_refused_and_the_best_is_rescored_by_the_chief(tmp_path, cifar_dir):
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.engine import hyperparameters as hp_module, trial as trial_module

    port = free_port()
    runs, results = tmp_path / "runs", tmp_path / "results"
    base = [sys.executable, "-m", "cifar_ae", "tune", "--tuner", "random", "--max-trials", "2", "--preset", "smoke",
            "--out", str(runs), "--results", str(results), "--save-trial", "tuned-sec", "--oracle-ip", "127.0.0.1",
            "--oracle-port", str(port)]
    service = protos.get_service()
    with TuneProcesses(tmp_path, base, REPO) as tp:
        # 'evil' is forgotten 40 s after its report (not 20: on a CPU shared with another test worker, an honest
        # smoke trial can go that long unreported, and would be expired)
        tp.start("chief", ["--chief", "--overwrite", "--trial-timeout", "40"])
        stub = protos.get_service_grpc().OracleStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        space = hp_module.HyperParameters.from_proto(
            stub.GetSpace(service.GetSpaceRequest(), wait_for_ready=True, timeout=90).hyperparameters)

        def end(trial):
            stub.EndTrial(service.EndTrialRequest(trial=trial.to_proto()), timeout=30)

        # 1. a trial the chief never handed out, with out-of-space values
        forged = space.copy()
        forged.values = {**forged.values, "learning_rate_adam": 50.0, "kernel_size": 7}
        with pytest.raises(grpc.RpcError):
            end(trial_module.Trial(hyperparameters=forged, trial_id="7", status="COMPLETED"))
        # 2. a trial it did hand out: its values changed, then an impossible score, then an added hyperparameter
        mine = trial_module.Trial.from_proto(stub.CreateTrial(service.CreateTrialRequest(tuner_id="evil"),
                                                              timeout=30).trial)
        changed = mine.hyperparameters.copy()
        changed.values = {**changed.values, "learning_rate_adam": 50.0, "kernel_size": 7}
        with pytest.raises(grpc.RpcError):
            end(trial_module.Trial(hyperparameters=changed, trial_id=mine.trial_id, status="COMPLETED"))
        with pytest.raises(grpc.RpcError):
            stub.UpdateTrial(service.UpdateTrialRequest(trial_id=mine.trial_id, metrics={
                "val_label_balanced_accuracy": 5.0}, step=0), timeout=30)
        wider = space.copy()
        wider.Float("learning_rate_evil", 1.0, 100.0)
        with pytest.raises(grpc.RpcError):
            stub.UpdateSpace(service.UpdateSpaceRequest(hyperparameters=wider.to_proto()), timeout=30)
        # 3. what cannot be told apart from a worker: the handed-out trial, unchanged, with a made-up score
        stub.UpdateTrial(service.UpdateTrialRequest(trial_id=mine.trial_id, metrics={
            "val_label_balanced_accuracy": 0.99}, step=0), timeout=30)
        end(mine.__class__(hyperparameters=mine.hyperparameters, trial_id=mine.trial_id, status="COMPLETED"))
        # an honest worker runs the other trial; the chief then re-scores both itself
        tp.start("w0", ["--worker", "0"])
        for name in ("w0", "chief"):
            assert tp.procs[name].wait(timeout=300) == 0, tp.tail(name)

    summary = json.loads((results / "tuning.json").read_text())
    assert len(summary["refused_reports"]) == 4, summary["refused_reports"]
    rescored = {r["trial_id"]: r for r in summary["rescored"]}
    assert rescored[mine.trial_id]["reported"] == pytest.approx(0.99)
    assert rescored[mine.trial_id]["chief"] < 0.99  # the chief's own score, not the reported one
    best = summary["best"]
    assert best["scored_by"] == "chief" and best["val_balanced_accuracy"] == rescored[best["trial_id"]]["chief"]
    assert all(r["score"] is None or r["hyperparameters"].get("learning_rate_adam") != 50.0 for r in summary["trials"])
    saved = json.loads((results / "tuned_trials.json").read_text())["trials"]
    assert [r["name"] for r in saved] == ["tuned-sec"] and saved[0]["learning_rate"] < 1.0
    assert f"{best['val_balanced_accuracy']:.3f}" in saved[0]["description"]


def test_a_smoke_search_and_benchmark_leave_committed_files_alone(tmp_path, cifar_dir):
    """`tune` and the ablation, run from a checkout on smoke, write only to their run folders (git status clean)."""
    clone = tmp_path / "checkout"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src, dst = REPO / rel, clone / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    git = ["git", "-C", str(clone)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "snapshot"], check=True)
    env = {**tuning_env(tmp_path), "PYTHONPATH": str(clone)}
    env.pop("CIFAR_AE_TUNED_TRIALS")
    for cmd in ([sys.executable, "-m", "cifar_ae", "tune", "--tuner", "random", "--max-trials", "1", "--preset", "smoke"],
                [sys.executable, "-m", "cifar_ae", "experiment", "experiments/v3_ablation.toml", "--preset", "smoke",
                 "--rows", "baseline"]):
        out = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    status = subprocess.run(git + ["status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    assert status == "", status
    assert (clone / "runs" / "tuning" / "joint-random-smoke-s0" / "tuning.json").is_file()


def test_names_never_become_paths_outside_the_runs_root(tmp_path, monkeypatch):
    from cifar_ae import trials
    from cifar_ae.runs import inside
    from cifar_ae.trials import TrialError
    monkeypatch.setattr(trials, "TRIALS", dict(trials.TRIALS))
    monkeypatch.setattr(trials, "TUNED_NAMES", set())
    path = tmp_path / "tuned_trials.json"
    path.write_text(json.dumps({"trials": [
        {"name": "../../../../tmp/x", "description": "", "task": "joint", "model": "joint_model"},
        {"name": "tuned-ok", "description": "", "task": "joint", "model": "joint_model"}]}))
    with pytest.warns(UserWarning, match=r"tuned trial #0 skipped \(trial '../../../../tmp/x': name must be"):
        assert trials.load_tuned_trials(path) == ["tuned-ok"]
    with pytest.raises(TrialError, match="would lie outside the runs root"):
        inside(tmp_path / "runs", tmp_path / "runs" / ".." / "elsewhere")
    from cifar_ae.training import run_trial
    with pytest.raises(TrialError, match="variant name '../x' must be letters"):
        run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path / "runs", variant="../x")
    assert not (tmp_path / "runs").exists()
