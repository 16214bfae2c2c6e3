"""The study's next steps: encoder blocks (ResNet, Inception, NASNet) and the experiment loops around them."""
import json
import sys
from pathlib import Path

import keras
import pytest

from cifar_ae import compute as C, models as M
from cifar_ae.training import run_trial

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


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


def test_blocks_loop_builds_its_table_from_run_folders(tmp_path, cifar_dir):
    import blocks
    blocks.main(["--preset", "smoke", "--epochs", "1", "--blocks", "vgg", "residual", "--extra-seed", "-1",
                 "--runs", str(tmp_path / "runs"), "--keep", str(tmp_path / "kept")])
    text = (tmp_path / "runs" / "blocks.md").read_text()
    assert "| vgg |" in text and "| residual |" in text
    blocks.main(["--preset", "smoke", "--epochs", "1", "--blocks", "vgg", "residual", "--extra-seed", "-1",
                 "--runs", str(tmp_path / "runs"), "--keep", str(tmp_path / "kept"), "--table-only",
                 "--output", str(tmp_path / "again")])
    assert (tmp_path / "again.md").read_text().split("\n")[4:] == text.split("\n")[4:]


def test_cutout_goes_on_the_best_augmentation_by_validation_not_test():
    import augmentation
    from cifar_ae.trials import check_name
    found = {"none": {"test_accuracy": 0.5, "val_accuracy": 0.55},
             "autoaugment": {"test_accuracy": 0.6, "val_accuracy": 0.70},
             "study-pil": {"test_accuracy": 0.7, "val_accuracy": 0.65}}  # the test set would pick study-pil
    rows = augmentation.rows_for(found)
    assert list(rows)[-1] == "autoaugment-cutout"
    assert rows["autoaugment-cutout"]["augmentation"] == {"policy": "autoaugment-cifar10", "flip": True, "translate": 4,
                                                          "cutout": 16}
    assert len(augmentation.rows_for()) == 6
    for name in rows:  # each row becomes a run folder's variant name ('none+cutout' once stopped the loop)
        assert check_name(name, "variant") == name


def test_augmentation_rows_are_ordered_by_the_seed_every_row_has():
    import augmentation
    def row(by_seed):
        accs = list(by_seed.values())
        return {"test_accuracy_by_seed": by_seed, "seeds": list(by_seed), "test_accuracy": sum(accs) / len(accs),
                "test_accuracy_sd": 0.1 if len(accs) > 1 else None, "recall": {}, "recon_mse": 0.01, "train_pflops": 0.02}
    found = {"lucky-one-seed": row({0: 0.60}), "two-seeds": row({0: 0.68, 1: 0.52})}  # means: 0.60 vs 0.60
    body = augmentation.table(found).splitlines()
    assert body[2].startswith("| two-seeds | 68.00% | 52.00% | 60.00% ± 10.00 |")
    assert body[3].startswith("| lucky-one-seed | 60.00% |  |  |")


@pytest.mark.parametrize("bad", ["v4=1", "v3=0", "v3"])
def test_a_bad_model_budget_is_refused_before_anything_runs(bad, tmp_path, capsys):
    import augmentation
    with pytest.raises(SystemExit):
        augmentation.main(["--model-epochs", bad, "--runs", str(tmp_path / "runs")])
    assert f"got '{bad}'" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_long_loop_commits_only_the_run_it_just_kept(tmp_path):
    """keeper(): each finished run's small files are copied and committed at once; other work is left unstaged."""
    import subprocess
    from cifar_ae import experiments as X
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    run = tmp_path / "runs" / "row" / "trial" / "quick-s0-row"
    run.mkdir(parents=True)
    for name in (*X.SMALL_FILES, "model.keras"):
        (run / name).write_text(name)
    repo.mkdir()
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "unrelated.txt").write_text("work in progress")
    kept_root = repo / "results" / "runs" / "loop"
    done = X.keeper(tmp_path / "runs", kept_root, False, "loop")
    done(run)
    assert sorted(p.name for p in (kept_root / "row" / "trial" / "quick-s0-row").iterdir()) == sorted(X.SMALL_FILES)
    # no repo given: the one holding the paths, not the one cifar_ae was imported from (an editable install
    # pointed at another clone once made a long loop fail here)
    assert X.commit([kept_root / "row"], "results: loop, quick-s0-row")
    log = subprocess.run(git + ["show", "--name-only", "--format=%s"], capture_output=True, text=True, check=True).stdout
    assert log.split("\n")[0] == "results: loop, quick-s0-row"
    assert sorted(filter(None, log.splitlines()[1:])) == sorted(f"results/runs/loop/row/trial/quick-s0-row/{n}" for n in X.SMALL_FILES)
    status = subprocess.run(git + ["status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    assert status == "?? unrelated.txt\n"
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    assert X.commit([kept_root / "row"], "again", repo=repo)  # a resumed loop: already committed, nothing to wait for
    assert subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout == head
