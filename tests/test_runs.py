"""Runs you can trust: a run folder is keyed by what produced it, resumes exactly after SIGKILL, admits one
writer, and bad input is refused before anything is written (cifar_ae.runs, cifar_ae.resume)."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cifar_ae import cli, data as D
from cifar_ae.runs import RunConflict
from cifar_ae.training import run_trial
from cifar_ae.trials import TRIALS, Trial, TrialError, get_trial

TIMING = ("train_seconds", "epoch_seconds", "train_user_seconds", "train_sys_seconds")
VOLATILE = ("train_seconds", "train_images_per_second", "inference_images_per_second", "command")


def history(run):
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def comparable(m):
    return {k: v for k, v in m.items() if k not in VOLATILE}


# --------------------------------------------------------------------------- identity

def test_an_override_gets_its_own_folder_and_the_plain_run_is_reused(tmp_path, cifar_dir, capsys):
    # the smallest trial (a 4 s smoke run): run identity does not depend on the model
    plain = run_trial("v0-mlp-ae", "smoke", 0, out_dir=tmp_path, verbose=0)
    assert plain == tmp_path / "v0-mlp-ae" / "smoke-s0"
    before = (plain / "metrics.json").read_bytes(), (plain / "metrics.json").stat().st_mtime_ns
    fast = run_trial("v0-mlp-ae", "smoke", 0, out_dir=tmp_path, verbose=0, learning_rate=0.5)
    longer = run_trial("v0-mlp-ae", "smoke", 0, out_dir=tmp_path, verbose=0, epochs=2)
    assert len({plain, fast, longer}) == 3 and all(p.parent == plain.parent for p in (fast, longer))
    assert json.loads((fast / "config.json").read_text())["trial"]["learning_rate"] == 0.5
    assert [float(r["learning_rate"]) for r in history(fast)] == [0.5]
    assert len(history(longer)) == 2
    named = run_trial(get_trial("v0-mlp-ae", learning_rate=0.5), "smoke", 0, out_dir=tmp_path, verbose=0,
                      variant="lr-high")
    assert named.name == "smoke-s0-lr-high"
    capsys.readouterr()
    assert run_trial("v0-mlp-ae", "smoke", 0, out_dir=tmp_path, verbose=0) == plain
    assert "complete run found" in capsys.readouterr().out
    assert ((plain / "metrics.json").read_bytes(), (plain / "metrics.json").stat().st_mtime_ns) == before
    keys = {json.loads((p / "config.json").read_text())["key_digest"] for p in (plain, fast, longer)}
    assert len(keys) == 3
    config = json.loads((plain / "config.json").read_text())
    assert {"key", "key_digest", "code_version", "op_determinism", "precision", "machine"} <= set(config)
    assert config["op_determinism"] is True and config["key"]["settings"]["epochs"] == 1
    # the same variant name for a different trial is refused, not reused; force retrains only that one run
    with pytest.raises(RunConflict, match="holds another run"):
        run_trial("v0-mlp-ae", "smoke", 0, out_dir=tmp_path, verbose=0, variant="lr-high", learning_rate=0.1)
    run_trial("v0-mlp-ae", "smoke", 0, out_dir=tmp_path, verbose=0, variant="lr-high", learning_rate=0.1,
              force=True)
    assert ((plain / "metrics.json").read_bytes(), (plain / "metrics.json").stat().st_mtime_ns) == before
    assert fast.is_dir() and longer.is_dir()


def test_a_run_of_a_builder_whose_defaults_changed_is_refused_not_reused(tmp_path, cifar_dir):
    run = run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path, verbose=0)
    config = json.loads((run / "config.json").read_text())
    default = config["builder_defaults"]["bn_momentum"]  # as models.joint_model declares it today
    config["builder_defaults"]["bn_momentum"] = 0.5  # as if that default was 0.5 when the run was trained
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunConflict, match=rf"other builder defaults \(bn_momentum 0.5 -> {default}\)"):
        run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path, verbose=0)
    del config["builder_defaults"]  # a run from before defaults were recorded is still reused
    (run / "config.json").write_text(json.dumps(config))
    assert run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path, verbose=0) == run


def test_get_trial_merges_model_args_and_replace_replaces_them():
    base = get_trial("v2-joint-aug-sgd")
    merged = get_trial("v2-joint-aug-sgd", model_args={"tie_weights": True})
    assert merged.model_args == {**base.model_args, "tie_weights": True}
    assert base.replace(model_args={"tie_weights": True}).model_args == {"tie_weights": True}
    assert TRIALS["v2-joint-aug-sgd"].model_args == {"dense_units": (512, 256)}  # the registry is untouched


def test_two_identical_runs_give_identical_metrics(tmp_path, cifar_dir):
    a = run_trial("v2-joint-aug-adam", "smoke", 0, out_dir=tmp_path / "a", verbose=0, epochs=2)
    b = run_trial("v2-joint-aug-adam", "smoke", 0, out_dir=tmp_path / "b", verbose=0, epochs=2)
    assert comparable(metrics(a)) == comparable(metrics(b))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(history(a)) == strip(history(b))


# --------------------------------------------------------------------------- validation at the boundary

@pytest.mark.parametrize("changes, message", [
    ({"optimizer": "adamx"}, r"optimizer must be one of 'adam', 'adamw', 'sgd', 'muon'; got 'adamx'"),
    ({"learning_rate": -1.0}, "learning_rate must be a number"),
    ({"augmentation": {"policy": "nope"}}, "augmentation: unknown policy 'nope'"),
    ({"class_weight": "balanced"}, "class_weight must be one of None, 'inverse', 'effective'"),
    ({"batch_size": 0}, "batch_size must be an int"),
    ({"precision": "bf16"}, "precision must be one of 'auto'"),
    ({"learnig_rate": 1e-3}, "unknown Trial field 'learnig_rate' for 'v2-joint-noaug'; did you mean learning_rate, muon_learning_rate[?] valid fields: description, "),
    ({"model_args": {"filterz": (8,)}}, "model_args 'filterz' is not an argument of joint_model; valid: filters"),
])
def test_bad_fields_are_refused_before_anything_is_written(tmp_path, changes, message):
    with pytest.raises(TrialError, match=message):
        run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path, verbose=0, **changes)
    assert list(tmp_path.iterdir()) == []


def test_trial_fields_are_checked_when_a_trial_is_built():
    with pytest.raises(TrialError, match="trial 'x': task must be one of 'autoencoder', 'classifier', 'joint'"):
        Trial("x", "", task="jiont", model="joint_model")
    with pytest.raises(TrialError, match="name must be a name of letters"):
        Trial("../../tmp/x", "", task="joint", model="joint_model")


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, r"epochs must be an int >= 1; got 0 \(set it with --epochs N"),
    ({"seed": -1}, r"seed must be an int .*got -1 \(set it with --seed N"),
    ({"seed": "0"}, r"--seed"),
    ({"variant": "a/b"}, "variant name 'a/b' must be letters"),
])
def test_bad_epochs_seed_and_variant_are_refused(tmp_path, kwargs, message):
    kwargs = {"seed": 0, **kwargs}
    seed = kwargs.pop("seed")
    with pytest.raises(TrialError, match=message):
        run_trial("v2-joint-noaug", "smoke", seed, out_dir=tmp_path, verbose=0, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["train", "v2-joint-noaug", "--preset", "smoke", "--epochs", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: epochs must be an int >= 1") and "\n" not in err
    assert cli.main(["train", "v2-joint-noaug", "--preset", "smoke", "--set", "optimizer=adamx", "--out", str(tmp_path)]) == 2
    assert "optimizer must be one of" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _tree_without(tmp_path, cifar_dir, split, missing):
    """A CIFAR-10 image tree of symlinks to the real class folders, with one class folder left out."""
    root = tmp_path / "cifar"
    for s in ("train", "test"):
        (root / s).mkdir(parents=True)
        for c in D.CLASS_NAMES:
            if not (s == split and c == missing):
                os.symlink(Path(cifar_dir).resolve() / s / c, root / s / c)
    return root


def test_a_missing_class_folder_is_refused(tmp_path, cifar_dir):
    root = _tree_without(tmp_path, cifar_dir, "train", "truck")
    with pytest.raises(D.DataError, match=r"train/truck: missing class folder 'truck' \(found 9 of 10 classes\)"):
        run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path / "runs", verbose=0, source=root)
    assert not (tmp_path / "runs").exists()
    os.symlink(Path(cifar_dir).resolve() / "train" / "truck", root / "train" / "truck")
    (root / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(D.DataError, match="test: missing split folder"):
        D.load_cifar10(root, use_cache=False)


def test_the_cache_is_checked_against_its_digest(tmp_path, cifar_dir, monkeypatch):
    monkeypatch.setenv("CIFAR_AE_CACHE", str(tmp_path / "cache"))
    first = D.load_cifar10(cifar_dir)
    (npz,) = (tmp_path / "cache").glob("*.npz")
    meta = json.loads(npz.with_suffix(".json").read_text())
    assert meta["sha256"] == first.digest and meta["shapes"]["x_train"] == [50000, 32, 32, 3]
    with np.load(npz) as z:  # a cache whose arrays were altered but whose name still matches
        arrays = {k: z[k] for k in z.files}
    arrays["y_train"] = arrays["y_train"].copy()
    arrays["y_train"][0] = 9
    np.savez(npz, **arrays)
    D._LOADED.clear()  # a new process: nothing checked yet
    again = D.load_cifar10(cifar_dir)  # rebuilt from the source, not trusted
    assert again.digest == first.digest and again.y_train[0] == first.y_train[0]


def test_the_cache_key_follows_symlinked_class_folders(tmp_path, cifar_dir):
    root = _tree_without(tmp_path, cifar_dir, "train", "nothing")
    (tmp_path / "other").mkdir()
    key = D._fingerprint(root, "folders")
    link = root / "train" / "cat"
    target = Path(os.readlink(link))
    os.unlink(link)
    os.symlink(tmp_path / "other", link)  # the class folder now points somewhere else
    assert D._fingerprint(root, "folders") != key
    os.unlink(link)
    os.symlink(target, link)
    assert D._fingerprint(root, "folders") == key


# --------------------------------------------------------------------------- faithful resume (real SIGKILL)

CHILD = textwrap.dedent("""
    import os, sys, time, json
    import keras
    from cifar_ae.training import run_trial
    import cifar_ae.scoring as scoring

    out, mode, marker = sys.argv[1], sys.argv[2], sys.argv[3]

    class PauseInEpoch(keras.callbacks.Callback):
        # a pause inside epoch 2 of 3, after its first batch: the parent SIGKILLs the process here
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == (0 if mode == "pause-in-epoch-1" else 1):
                open(marker, "w").write(str(os.getpid()))
                time.sleep(600)
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    callbacks = []
    if mode in ("kill-in-epoch", "pause-in-epoch-1"):
        callbacks = [PauseInEpoch()]
    elif mode == "kill-in-evaluation":
        real = scoring.evaluate_model
        def paused(*args, **kwargs):
            open(marker, "w").write(str(os.getpid()))
            time.sleep(600)
        scoring.evaluate_model = paused
    trained = []
    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            trained.append(epoch)
    run = run_trial("v2-joint-noaug", "smoke", 0, out_dir=out, epochs=3, verbose=0, callbacks=[*callbacks, Record()])
    print(json.dumps({"run": str(run), "trained_epochs": trained}))
""")


def _child(out, mode, marker):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), mode, str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(marker, proc, timeout=300):
    t0 = time.time()
    while not Path(marker).exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("child never reached the pause")
        time.sleep(0.2)
    time.sleep(0.5)


def _finish(out, marker):
    proc = _child(out, "plain", marker)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cifar_dir):
    out = tmp_path_factory.mktemp("uninterrupted")
    return Path(_finish(out, out / "unused")["run"])


def test_a_run_killed_in_epoch_2_resumes_exactly_and_admits_one_writer(tmp_path, uninterrupted, cifar_dir):
    marker = tmp_path / "paused"
    proc = _child(tmp_path, "kill-in-epoch", marker)
    _wait_for(marker, proc)
    (run,) = (tmp_path / "v2-joint-noaug").iterdir()
    # a second process on the same run folder is refused, naming the holder's pid
    with pytest.raises(RunConflict, match=f"being trained by another process \\(pid {proc.pid}\\)"):
        run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path, epochs=3, verbose=0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists() and len(history(run)) == 1
    result = _finish(tmp_path, marker)  # the lock the dead process held is taken over
    assert result["trained_epochs"] == [1, 2]
    rows, ref = history(run), history(uninterrupted)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    for a, b in zip(rows, ref):
        for k in a:
            if k not in TIMING:
                assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-5, abs=1e-7), k
    got, want = metrics(run), metrics(uninterrupted)
    assert got["best_epoch"] == want["best_epoch"]
    assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=1e-9)
    assert got["recon_mse"] == pytest.approx(want["recon_mse"], rel=1e-5)
    assert got["confusion_matrix"] == want["confusion_matrix"]
    assert got["train_images_per_second"] > 0


def test_a_refused_process_leaves_the_holders_first_epoch_alone(tmp_path, cifar_dir, monkeypatch):
    # two processes start on a folder that does not exist yet; the one refused must not remove the folder the
    # other is training into (it saw no folder, so it thought the folder its own)
    import cifar_ae.runs as R
    marker, holder, real_enter = tmp_path / "paused", [], R.RunLock.__enter__

    def enter_once_the_other_holds_it(self):
        holder.append(_child(tmp_path, "pause-in-epoch-1", marker))
        _wait_for(marker, holder[0])
        return real_enter(self)

    monkeypatch.setattr(R.RunLock, "__enter__", enter_once_the_other_holds_it)
    try:
        with pytest.raises(RunConflict, match="being trained by another process"):
            run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path, epochs=3, verbose=0)
        (run,) = (tmp_path / "v2-joint-noaug").iterdir()
        assert (run / "config.json").is_file() and (run / "checkpoints").is_dir()
    finally:
        for proc in holder:
            proc.kill()
            proc.wait()


def test_a_kill_during_evaluation_does_not_retrain(tmp_path, uninterrupted, cifar_dir):
    marker = tmp_path / "paused"
    proc = _child(tmp_path, "kill-in-evaluation", marker)
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = (tmp_path / "v2-joint-noaug").iterdir()
    assert (run / "model.keras").is_file() and not (run / "metrics.json").exists()
    result = _finish(tmp_path, marker)
    assert result["trained_epochs"] == []  # nothing trained again
    assert [r["epoch"] for r in history(run)] == ["0", "1", "2"]
    assert metrics(run)["test_accuracy"] == pytest.approx(metrics(uninterrupted)["test_accuracy"], abs=1e-9)


def test_a_torn_checkpoint_is_named_in_a_one_line_error(tmp_path, cifar_dir):
    marker = tmp_path / "paused"
    proc = _child(tmp_path, "kill-in-epoch", marker)
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = (tmp_path / "v2-joint-noaug").iterdir()
    (ckpt,) = (run / "checkpoints").glob("epoch-*.npz")
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # torn
    from cifar_ae.resume import CheckpointError
    with pytest.raises(CheckpointError, match=f"{ckpt} is damaged .*delete .*checkpoints"):
        run_trial("v2-joint-noaug", "smoke", 0, out_dir=tmp_path, epochs=3, verbose=0)


def test_the_study_loop_caps_a_classifiers_autoencoder_by_its_own_name(tmp_path, cifar_dir, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("study_bench", Path(__file__).parents[1] / "tools" / "study_runs.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    with pytest.raises(SystemExit, match="bad --cap 'v0-mlp-aa': not a trial of the plan"):
        study.main(["--preset", "smoke", "--runs", str(tmp_path), "--only", "v0-dense", "--cap", "v0-mlp-aa=1"])
    assert not any(tmp_path.iterdir())  # refused before anything was written
    study.main(["--preset", "smoke", "--runs", str(tmp_path), "--only", "v0-dense", "--cap", "v0-mlp-ae=2"])  # smoke trains 1 epoch: 2 is another encoder
    encoder = tmp_path / "v0-mlp-ae" / "smoke-s0-max2"
    classifier = tmp_path / "v0-dense" / "smoke-s0-ae-max2"
    assert (encoder / "metrics.json").is_file() and (classifier / "metrics.json").is_file()
    config = json.loads((classifier / "config.json").read_text())
    assert Path(config["upstream_run"]) == encoder and config["key"]["upstream"]["key_digest"] == \
        json.loads((encoder / "config.json").read_text())["key_digest"]
    # the same classifier on an uncapped encoder is another run, in another folder, on another encoder run
    from cifar_ae.training import plan_run
    plain = plan_run("v0-dense", "smoke", 0, tmp_path)
    assert plain.folder == tmp_path / "v0-dense" / "smoke-s0"
    assert plain.upstream.folder == tmp_path / "v0-mlp-ae" / "smoke-s0" and plain.key_digest != config["key_digest"]
    rows = {r["trial"]: r for r in json.loads((tmp_path / "study.json").read_text())["rows"]}
    assert set(rows) == {"v0-mlp-ae", "v0-dense"}


def test_a_changed_net_trains_beside_its_kept_runs_and_never_over_them(tmp_path, cifar_dir):
    """Issue 44 re-registered v0-mlp-ae and v1-cnn-ae: their earlier study runs stay in <trial>/study-s<seed>, the new
    nets' go beside them (--variant), and keeping a run over another run's record is refused."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("study_bench", Path(__file__).parents[1] / "tools" / "study_runs.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    runs, kept = tmp_path / "runs", tmp_path / "kept"
    earlier = kept / "v0-dense" / "smoke-s0-as-built"
    earlier.mkdir(parents=True)
    (earlier / "config.json").write_text(json.dumps({"key_digest": "0123456789"}))
    with pytest.raises(SystemExit, match="keeps another run .*--variant NAME"):
        study.main(["--preset", "smoke", "--runs", str(runs), "--keep", str(kept), "--only", "v0-dense:0",
                    "--variant", "as-built"])
    assert json.loads((earlier / "config.json").read_text()) == {"key_digest": "0123456789"}  # untouched
    assert not runs.exists()  # refused before training
    (earlier / "config.json").unlink()
    study.main(["--preset", "smoke", "--runs", str(runs), "--keep", str(kept), "--only", "v0-dense:0",
                "--variant", "as-built"])
    encoder = runs / "v0-mlp-ae" / "smoke-s0-as-built"
    config = json.loads((earlier / "config.json").read_text())
    assert Path(config["upstream_run"]) == encoder and (kept / "v0-mlp-ae" / "smoke-s0-as-built" / "metrics.json").is_file()
    assert json.loads((encoder / "config.json").read_text())["trial"]["model_args"] == {"hidden_units": [1536]}


def test_the_side_experiments_share_one_encoder_and_table_what_ran(tmp_path, cifar_dir):
    import importlib.util
    spec = importlib.util.spec_from_file_location("study_bench", Path(__file__).parents[1] / "tools" / "study_runs.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    with pytest.raises(SystemExit, match="bad --rows 'decoder-transposed': not a side experiment"):
        study.main(["--side", "--preset", "smoke", "--runs", str(tmp_path), "--rows", "decoder-transposed"])
    assert not any(tmp_path.iterdir())  # refused before anything was written
    study.main(["--side", "--preset", "smoke", "--runs", str(tmp_path), "--rows", "cls-adam-1e-2-b128"])
    encoder = tmp_path / "side" / "v1-cnn-ae" / "smoke-s0-decoder-transpose"
    classifier = tmp_path / "side" / "v1-feature-classifier" / "smoke-s0-cls-adam-1e-2-b128"
    config = json.loads((classifier / "config.json").read_text())
    assert Path(config["upstream_run"]) == encoder and config["trial"]["learning_rate"] == 1e-2
    table = (tmp_path / "study_side.md").read_text()
    assert "Rows run: 2 of " in table  # the classifier's encoder is the decoder-transpose row itself
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) == {"row", "decoder-transpose", "cls-adam-1e-2-b128"}
    assert '{"learning_rate": 0.01, "batch_size": 128}' in rows["cls-adam-1e-2-b128"]
    assert " 1: " in rows["decoder-transpose"]  # its validation-MSE curve
