"""Runs that stay trustworthy when their files, disks and inputs go wrong (issue 43).

One test per defect found by trying the CLI as a hostile but fair user would, then a fuzz test over run folders.
Every CLI call goes through `cifar_ae.cli.main` (in this process, so an exception that escapes it fails the test) or
a real subprocess where a kill is involved. "Before the data loads" is checked by pointing CIFAR10_DIR at nothing:
an error found after loading would be "CIFAR-10 not found" instead of the one named.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from cifar_ae import cli
from cifar_ae.completeness import read_json, run_status, write_manifest

TRIAL = "v2-joint-noaug"
SENTINEL = 0.987654  # an accuracy no smoke run reaches: seen in any output, a damaged result was trusted


@pytest.fixture(scope="module")
def sound(cifar_dir, tmp_path_factory):
    """One complete smoke run, trained once; tests damage copies of it."""
    from cifar_ae.training import run_trial
    root = tmp_path_factory.mktemp("sound")
    run = run_trial(TRIAL, "smoke", 0, out_dir=root, verbose=0)
    assert run_status(run).state == "complete"
    return run


@pytest.fixture
def copy(sound, tmp_path):
    """A fresh runs root holding a copy of the sound run; returns the copy's run folder."""
    root = tmp_path / "runs"
    dest = root / sound.parent.name / sound.name
    shutil.copytree(sound, dest)
    return dest


def cli_run(capsys, *argv):
    """(exit code, stdout, stderr) of `python -m cifar_ae ARGV`, in this process."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv, names=()):
    """The CLI refuses with exactly one `error:` line, no traceback, naming each of `names`; returns that line."""
    rc, out, err = cli_run(capsys, *argv)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, (rc, out[-1500:], err[-1500:])
    assert "CIFAR-10 not found" not in errors[0], errors[0]  # every check here runs before the data loads
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


@pytest.fixture
def no_data(monkeypatch):
    """CIFAR-10 nowhere: a check that runs before the data loads still gives its own error, not "not found"."""
    monkeypatch.setenv("CIFAR10_DIR", "/nonexistent/cifar10")
    monkeypatch.setenv("CIFAR_AE_DOWNLOAD", "0")
    monkeypatch.setattr("cifar_ae.data.KERAS_CACHE", Path("/nonexistent/keras-cache"))


@contextlib.contextmanager
def tmpfs(path, size="1m", readonly=False):
    """A real small (or read-only) filesystem at `path`; skips the test where one cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def reseal(run, **files):
    """Write `files` into a run and record their sha256 as the run's own: a damage made consistently, so the
    check under test is the one that must catch it, not the digest."""
    state = read_json(run / "state.json", "")
    for name, data in files.items():
        (run / name).write_bytes(data)
        from cifar_ae.completeness import sha256_file
        state["sha256"][name] = sha256_file(run / name)
        if name == "model.keras":
            state["model_sha256"] = state["sha256"][name]
    (run / "state.json").write_text(json.dumps(state))


# --------------------------------------------------------------------------- 1 (high): evaluate on a half-finished run

CHILD = textwrap.dedent("""
    import os, sys, time
    import cifar_ae.scoring as scoring
    from cifar_ae.training import run_trial
    out, marker = sys.argv[1], sys.argv[2]
    def paused(*args, **kwargs):  # the parent SIGKILLs the process here, while it scores the run
        open(marker, "w").write(str(os.getpid()))
        time.sleep(600)
    scoring.evaluate_model = paused
    run_trial("v2-joint-noaug", "smoke", 0, out_dir=out, verbose=0)
""")


def test_1_evaluate_takes_the_lock_and_scores_a_killed_run_with_every_field(cifar_dir, tmp_path, capsys):
    out, marker = tmp_path / "runs", tmp_path / "scoring"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(marker)], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        t0 = time.time()
        while not marker.exists():
            assert child.poll() is None, child.stderr.read()[-2000:]
            assert time.time() - t0 < 300, "the child never reached scoring"
            time.sleep(0.2)
        run = out / TRIAL / "smoke-s0"
        # while the child scores the run it holds the lock: evaluate refuses, and writes nothing
        one_line_error(capsys, "evaluate", run, names=[run, "another process"])
        assert not (run / "metrics.json").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert run_status(run).state == "incomplete" and "not yet scored" in run_status(run).reason
    rc, out_text, err = cli_run(capsys, "evaluate", run)
    assert rc == 0, err
    metrics = read_json(run / "metrics.json", "")
    for key in ("trial", "preset", "seed", "epochs", "best_epoch", "train_seconds", "params", "test_accuracy"):
        assert metrics.get(key) is not None, key
    assert (metrics["trial"], metrics["preset"], metrics["seed"], metrics["epochs"]) == (TRIAL, "smoke", 0, 1)
    assert not (run / "checkpoints").exists() and run_status(run).state == "complete"
    rc, out_text, err = cli_run(capsys, "train", TRIAL, "--preset", "smoke", "--out", out)
    assert rc == 0 and "complete run found" in out_text and "None" not in out_text, out_text


def test_1b_evaluate_refuses_a_run_still_training(copy, capsys):
    state = read_json(copy / "state.json", "")
    state.update(trained=False, evaluated=False, epochs_done=0)
    (copy / "state.json").write_text(json.dumps(state))
    (copy / "metrics.json").unlink()
    one_line_error(capsys, "evaluate", copy, names=[copy, "has not finished training"])
    assert not (copy / "metrics.json").exists()


# --------------------------------------------------------------------------- 2-4 (medium)

def test_2_preset_values_are_checked_before_anything_runs(no_data, tmp_path, capsys):
    one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", tmp_path / "runs", "--set",
                   'presets={"smoke": {"tsne_points": "x"}}', names=["tsne_points", "'x'"])
    assert not (tmp_path / "runs").exists()


def test_2b_tuned_trial_records_with_bad_preset_values_are_skipped_with_a_warning(tmp_path):
    from cifar_ae.trials import TRIALS, load_tuned_trials
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"trials": [{"name": "tuned-bad-preset", "description": "", "task": "joint",
                                            "model": "joint_model", "presets": {"smoke": {"tsne_points": "x"}}}]}))
    with pytest.warns(UserWarning, match="tsne_points"):
        assert load_tuned_trials(path) == []
    assert "tuned-bad-preset" not in TRIALS


def test_3_a_run_without_its_model_is_not_complete(copy, capsys):
    (copy / "model.keras").unlink()
    status = run_status(copy)
    assert status.state == "damaged" and "model.keras" in status.reason
    one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", copy.parent.parent, names=["model.keras"])
    rc, out, err = cli_run(capsys, "report", "--runs", copy.parent.parent)
    assert rc == 0 and "from 0 run folders" in out and "model.keras" in err


@pytest.mark.parametrize("metrics", [[], "text", {"study": None}])
def test_4_metrics_of_the_wrong_shape_are_named_and_skipped(copy, sound, capsys, metrics):
    other = copy.parent / "smoke-s1"
    shutil.copytree(sound, other)  # a sound run beside the damaged one: the report goes on with it
    if isinstance(metrics, dict):
        metrics = {**read_json(copy / "metrics.json", ""), **metrics}
    reseal(copy, **{"metrics.json": json.dumps(metrics).encode()})
    rc, out, err = cli_run(capsys, "report", "--runs", copy.parent.parent)
    assert rc == 0 and "from 1 run folders" in out and "metrics.json" in err and "Traceback" not in err
    rc, out, err = cli_run(capsys, "compare", other, copy)
    assert rc == 0 and "metrics.json" in err
    one_line_error(capsys, "evaluate", copy, names=["metrics.json"])
    one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", copy.parent.parent, names=["metrics.json"])


# --------------------------------------------------------------------------- 5: bad values, one line, before the data

def test_5a_model_args_values_are_checked_against_the_builder(no_data, tmp_path, capsys):
    one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", tmp_path, "--set",
                   'model_args={"filters": "x"}', names=["filters", "'x'"])


def test_5b_preset_test_images_must_be_a_count(no_data, tmp_path, capsys):
    one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", tmp_path, "--set",
                   'presets={"smoke": {"test_images": "abc"}}', names=["test_images"])


def test_5c_a_change_never_renames_the_trial(no_data, tmp_path, capsys):
    line = one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", tmp_path, "--set", "name=x",
                          names=["--variant"])
    line = one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", tmp_path, "--set", "nmae=x",
                          names=["valid fields"])
    assert "name," not in line.split("valid fields:")[1]


def test_5d_a_too_long_variant_fails_before_the_data(no_data, tmp_path, capsys):
    line = one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", tmp_path, "--variant", "v" * 300,
                          names=["variant"])
    assert len(line) < 400 and not (tmp_path / TRIAL).exists()


# --------------------------------------------------------------------------- 6: the environment

def test_6a_a_full_disk_is_found_before_the_data(no_data, tmp_path, capsys):
    with tmpfs(tmp_path / "small", "1m") as small:
        one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", small / "runs", names=["MiB free"])


def test_6b_a_read_only_filesystem_is_found_before_the_data(no_data, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", ro / "runs", names=["cannot be written"])


def test_6c_a_runs_root_that_is_a_file(no_data, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", tmp_path / "afile" / "runs",
                   names=["afile", "is a file"])


def _tiny_tree(root):
    from test_data import tiny_folder_tree
    return tiny_folder_tree(root)


def test_6d_a_cache_that_cannot_be_written_warns_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from cifar_ae import data
    tree = _tiny_tree(tmp_path / "tree")
    with tmpfs(tmp_path / "cache", "48k") as cache:  # smaller than the decoded arrays: ENOSPC inside np.savez
        monkeypatch.setenv("CIFAR_AE_CACHE", str(cache))
        with pytest.warns(UserWarning, match="running without it"):
            loaded = data.load_cifar10(tree)
        assert len(loaded.y_train) == 20 and not list(cache.iterdir())
    (tmp_path / "cachefile").write_text("")  # a cache path that is a file: the same warning, data still loads
    monkeypatch.setenv("CIFAR_AE_CACHE", str(tmp_path / "cachefile"))
    with pytest.warns(UserWarning, match="running without it"):
        assert len(data.load_cifar10(tree, use_cache=True).y_test) == 20


def test_6e_a_failed_download_is_one_line(no_data, tmp_path, monkeypatch, capsys):
    import keras

    def offline(*args, **kwargs):  # what keras' get_file raises without a network (no download in tests)
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: None -- "
                        "[Errno -2] Name or service not known")
    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setenv("CIFAR_AE_DOWNLOAD", "1")
    rc, out, err = cli_run(capsys, "train", TRIAL, "--preset", "smoke", "--out", tmp_path / "runs")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "download" in errors[0] and "CIFAR10_DIR" in errors[0], err[-1500:]


def test_6f_a_write_that_fills_the_disk_leaves_neither_half_a_file_nor_its_temp(tmp_path):
    from cifar_ae.atomic import write_atomic
    from cifar_ae.resume import write_bytes_atomic
    with tmpfs(tmp_path / "small", "64k") as small:
        (small / "metrics.json").write_text("{}")
        with pytest.raises(OSError):
            write_bytes_atomic(small / "metrics.json", b"x" * 200_000)
        with pytest.raises(OSError):
            write_atomic(small / "model.keras", lambda tmp: tmp.write_bytes(b"x" * 200_000), suffix=".keras")
        assert sorted(p.name for p in small.iterdir()) == ["metrics.json"]
        assert (small / "metrics.json").read_text() == "{}"  # the old file, whole


# --------------------------------------------------------------------------- 7-9

def test_7_a_symlink_loop_in_the_cifar_tree_is_one_line(tmp_path, monkeypatch, capsys):
    tree = _tiny_tree(tmp_path / "tree")
    os.symlink(tree / "train" / "cat", tree / "train" / "cat" / "loop")
    monkeypatch.setenv("CIFAR10_DIR", str(tree))
    monkeypatch.setenv("CIFAR_AE_CACHE", str(tmp_path / "cache"))
    one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", tmp_path / "runs",
                   names=["symbolic link loops"])


def test_8a_a_keras_file_naming_an_unknown_class_is_one_line(copy, capsys):
    hostile = copy.parent / "hostile.keras"
    with zipfile.ZipFile(copy / "model.keras") as src, zipfile.ZipFile(hostile, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                data = data.replace(b'"Functional"', b'"NoSuchModel"').replace(b'"keras.src.models.functional"',
                                                                                 b'"no.such.module"')
            dst.writestr(item, data)
    reseal(copy, **{"model.keras": hostile.read_bytes()})
    state = read_json(copy / "state.json", "")
    state["evaluated"] = False  # trained, not yet scored: evaluate must load the model
    (copy / "state.json").write_text(json.dumps(state))
    one_line_error(capsys, "evaluate", copy, names=["model.keras", "cannot be loaded"])


def test_8b_a_deeply_nested_tuned_trials_file_is_a_warning(tmp_path):
    from cifar_ae.trials import load_tuned_trials
    path = tmp_path / "tuned.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.warns(UserWarning, match="nested"):
        assert load_tuned_trials(path) == []


def test_8c_tune_with_zero_epochs_fails_at_once(no_data, tmp_path, capsys):
    t0 = time.perf_counter()
    one_line_error(capsys, "tune", "--tuner", "random", "--max-trials", "1", "--preset", "smoke", "--epochs", "0",
                   "--out", tmp_path, names=["epochs"])
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("name", ["config.json", "metrics.json", "state.json", "history.csv"])
def test_9a_parse_errors_name_the_file(copy, capsys, name):
    (copy / name).write_bytes(b'{"not": json' if name != "history.csv" else b"epoch,loss\n0,\xff\xfe\n")
    line = one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", copy.parent.parent,
                          names=[copy / name])
    assert "--force" in line or "delete" in line or "restore" in line


def test_9b_an_edited_key_is_not_trusted(copy, capsys):
    config = read_json(copy / "config.json", "")
    config["key"]["trial"]["learning_rate"] = 0.5  # the digest beside it still reads as the old key's
    (copy / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", copy.parent.parent,
                   names=["config.json", "does not recompute"])


def test_9c_an_edited_metrics_file_is_named_as_edited(copy, capsys):
    metrics = read_json(copy / "metrics.json", "")
    metrics["test_accuracy"] = SENTINEL
    (copy / "metrics.json").write_text(json.dumps(metrics))
    one_line_error(capsys, "train", TRIAL, "--preset", "smoke", "--out", copy.parent.parent,
                   names=["metrics.json", "edited"])
    rc, out, err = cli_run(capsys, "report", "--runs", copy.parent.parent)
    assert rc == 0 and "0.9877" not in out and "edited" in err


def test_9d_committed_records_match_their_manifest(tmp_path):
    """results/runs/SHA256SUMS is current, and a record edited after it was kept is named as edited."""
    root = Path(__file__).resolve().parent.parent / "results" / "runs"
    manifest = (root / "SHA256SUMS").read_text()
    copy_root = tmp_path / "runs"
    shutil.copytree(root, copy_root)
    assert write_manifest(copy_root).read_text() == manifest, "results/runs/SHA256SUMS is stale: rerun keep_runs"
    run = next(p.parent for p in sorted(copy_root.glob("*/*/*/metrics.json")))
    assert run_status(run).state == "record"
    metrics = read_json(run / "metrics.json", "")
    (run / "metrics.json").write_text(json.dumps({**metrics, "epochs": metrics["epochs"] + 1}))
    status = run_status(run)
    assert status.state == "damaged" and "SHA256SUMS" in status.reason


# --------------------------------------------------------------------------- fuzz

def _damages(run, rng):
    """One random damage to one of a run's files: a cut, a flipped byte, a wrong JSON type, a deletion, an edit."""
    name = rng.choice(["config.json", "metrics.json", "history.csv", "state.json", "model.keras"])
    path = run / name
    data = path.read_bytes()
    kind = rng.choice(["cut", "flip", "wrong-type", "delete", "edit"])
    if kind == "cut":
        path.write_bytes(data[:rng.randrange(len(data))])
    elif kind == "flip":
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:])
    elif kind == "wrong-type":
        path.write_text(rng.choice(["[]", "null", "42", '"text"', '{"study": null}']))
    elif kind == "delete":
        path.unlink()
    elif name.endswith(".json"):  # edit: one value changed to the sentinel, the file still valid JSON
        doc = json.loads(data)
        key = rng.choice(sorted(k for k, v in doc.items() if isinstance(v, (int, float, bool, str))) or ["x"])
        doc[key if name != "metrics.json" else "test_accuracy"] = SENTINEL
        path.write_text(json.dumps(doc))
    else:
        path.write_bytes(data.replace(b"0.", str(SENTINEL).encode(), 1))
    return f"{name}: {kind}"


def test_fuzz_damaged_run_folders_are_reused_resumed_or_named(sound, tmp_path, capsys):
    """N random damages: train, report and compare each reuse a sound run, resume, or give one line naming the
    file; never a traceback, never a damaged number in their output."""
    rng = random.Random(int(os.environ.get("CIFAR_AE_FUZZ_SEED", "43")))
    original = read_json(sound / "metrics.json", "")
    for i in range(int(os.environ.get("CIFAR_AE_FUZZ_N", "12"))):
        root = tmp_path / f"case{i}"
        run = root / sound.parent.name / sound.name
        shutil.copytree(sound, run)
        what = _damages(run, rng)
        for argv in (["report", "--runs", root], ["compare", run],
                     ["train", TRIAL, "--preset", "smoke", "--out", root]):
            rc, out, err = cli_run(capsys, *argv)
            assert "Traceback" not in err and "0.9877" not in out and "98.8%" not in out, (what, argv, err[-800:])
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            if rc:
                assert rc == 2 and len(errors) == 1 and str(run) in errors[0], (what, argv, err[-800:])
            elif argv[0] == "train":  # reused or resumed: the run is now complete, with the sound run's numbers
                status = run_status(run)
                assert status.state == "complete", (what, status)
                assert status.metrics["test_accuracy"] == original["test_accuracy"], what
