"""The study's next steps: encoder blocks (ResNet, Inception, NASNet) and the experiment loops around them."""
import json
import sys
from pathlib import Path

import keras
import pytest

from cifar_ae import compute as C, models as M
from cifar_ae.training import run_trial



def test_blocks_have_comparable_parameter_counts():
    vgg = M.encoder_of(M.joint_model(block="vgg")).count_params()
    for block in ("residual", "inception", "nasnet"):
        model = M.joint_model(block=block)
        assert abs(M.encoder_of(model).count_params() / vgg - 1) < 0.15, block
        assert model.output["reconstruction"].shape[1:] == (32, 32, 3) and model.output["label"].shape[1:] == (10,)
    kinds = {type(layer).__name__ for layer in M.joint_model(block="nasnet").layers}
    assert "SeparableConv2D" in kinds and "AveragePooling2D" in kinds
    with pytest.raises(ValueError, match="unknown block 'dense'; valid blocks: vgg, residual, inception, nasnet"):
        M.joint_model(block="dense")
    with pytest.raises(ValueError, match="tie_weights needs block='vgg'"):
        M.joint_model(block="residual", tie_weights=True)


@pytest.mark.parametrize("block", ["residual", "inception", "nasnet"])
def test_each_block_trains_on_smoke_and_reloads(block, tmp_path, cifar_dir):
    run = run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path, verbose=0, model_args={"block": block})
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["test_accuracy"] <= 1 and 0 < m["recon_mse"] < 0.25 and m["params"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["train_flops_per_image"] == C.train_flops_per_image(M.joint_model(block=block))
    keras.saving.load_model(run / "model.keras", safe_mode=True)


def test_the_search_can_choose_the_block():
    import keras_tuner as kt
    from cifar_ae import tuning as T
    hp = kt.HyperParameters()
    T.joint_space(hp)
    choice = next(p for p in hp.space if p.name == "block")
    assert list(choice.values) == ["vgg", "residual", "inception", "nasnet"]
    hp.values["block"] = "inception"
    assert T.joint_model_args(T.joint_space(hp))["block"] == "inception"


def test_the_dev_script_keeps_and_commits_only_finished_runs_small_files(tmp_path):
    """tools/keep_runs.py (the package never calls git): a finished run's small files are copied under the same
    <experiment>/<row>/<preset>-s<seed> path and committed alone; other work stays unstaged; a second call is a no-op."""
    import subprocess
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    import shutil
    (repo / "tools").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parent.parent / "tools" / "keep_runs.py", repo / "tools")
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "tools"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "init"], check=True)
    import json
    from cifar_ae import runs, scoring
    run = repo / "runs" / "exp" / "row" / "quick-s0"
    run.mkdir(parents=True)
    key = {"trial": {"task": "autoencoder"}}
    (run / "config.json").write_text(json.dumps({"trial": {"task": "autoencoder"}, "key": key,
                                                 "key_digest": runs.digest(key)}))
    (run / "metrics.json").write_text(json.dumps({"trial": "t", "preset": "quick", "seed": 0, "epochs": 1,
                                                  "recon_mse": 0.01}))
    (run / "history.csv").write_text("epoch,loss\n0,0.1\n")
    (run / "model.keras").write_text("model")
    scoring.seal(run)  # a finished run: state.json says scored, with its files' sha256 (cifar_ae.completeness)
    unfinished = repo / "runs" / "exp" / "row" / "quick-s1"
    shutil.copytree(run, unfinished)
    (unfinished / "state.json").write_text(json.dumps({"epochs_done": 1, "trained": True}))  # not yet scored
    (repo / "unrelated.txt").write_text("work in progress")
    env = {**__import__("os").environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    script = [sys.executable, str(repo / "tools" / "keep_runs.py"), "runs/exp", "--runs", "runs", "--commit"]
    subprocess.run(script, cwd=repo, env=env, check=True, capture_output=True)
    log = subprocess.run(git + ["show", "--name-only", "--format=%s"], capture_output=True, text=True, check=True).stdout
    assert log.split("\n")[0] == "results: exp/row/quick-s0"
    assert sorted(filter(None, log.splitlines()[1:])) == ["results/runs/SHA256SUMS"] + [
        f"results/runs/exp/row/quick-s0/{n}" for n in ("config.json", "history.csv", "metrics.json")]
    status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=normal"], capture_output=True,
                            text=True, check=True).stdout
    assert "unrelated.txt" in status and "results/" not in status
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    subprocess.run(script, cwd=repo, env=env, check=True, capture_output=True)
    assert subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout == head
