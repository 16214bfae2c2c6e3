"""Backends (cifar_ae.backend): every study version and v4 trains on JAX; data parallel on two host devices and in
two processes matches one device; SSIM in keras.ops is tf.image.ssim's; TensorBoard logs each epoch once, also
after a SIGKILL and resume."""
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

from conftest import free_port

REPO = Path(__file__).resolve().parent.parent
# one per study version (v0, v1: their classifiers, which train their autoencoders first), v2, and v4
JAX_TRIALS = ("v0-dense", "v1-feature-classifier", "v2-joint-noaug", "v4-joint-lead")
RUN_FILES = ("config.json", "history.csv", "metrics.json", "model.keras", "state.json")
# Data parallel splits each batch's gradient sum in two (partial sums, then an all-reduce): float32 rounding of
# ~1e-7. Adam divides each step by sqrt(v), so near-zero gradient components turn that into steps of up to the
# learning rate. Measured once by hand (v2-joint-noaug, smoke, 2 epochs, Adam, on 2 host devices vs 1): 1.4e-3
# relative on epoch 1's training loss, 1.4e-4 on epoch 2's validation loss; two processes gave the two devices'
# numbers bit for bit. 2e-2 bounds that with margin; a batch split wrongly (a process training on another
# process's rows) trains on other images. (Each process feeding the whole batch would not show here: a batch
# twice has the same mean loss.)
DATA_PARALLEL_RTOL = 2e-2

JAX_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    out, trials = Path(sys.argv[1]), sys.argv[2].split(",")
    from cifar_ae import hardware
    precision = hardware.choose_precision("auto")  # asks JAX for GPUs: no TensorFlow needed for that
    tensorflow_loaded = "tensorflow" in sys.modules
    from cifar_ae.training import run_trial
    runs = {name: str(run_trial(name, "smoke", 0, out_dir=out / "single", verbose=0)) for name in trials}
    again = str(run_trial("v0-mlp-ae", "smoke", 0, out_dir=out / "again", verbose=0))
    parallel = str(run_trial("v0-mlp-ae", "smoke", 0, out_dir=out / "parallel", verbose=0, strategy="data_parallel"))
    import jax
    print(json.dumps({"runs": runs, "again": again, "parallel": parallel, "devices": jax.device_count(),
                      "precision": precision, "tensorflow_loaded_by_precision": tensorflow_loaded}))
""")

PROCESS_CHILD = textwrap.dedent("""
    import json, sys
    from cifar_ae.training import run_trial
    run = run_trial("v0-mlp-ae", "smoke", 0, out_dir=sys.argv[1], verbose=0, strategy="data_parallel")
    import jax
    print(json.dumps({"run": str(run), "processes": jax.process_count(), "devices": jax.device_count()}))
""")


def jax_env(devices=1):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID"):
        env.pop(name, None)
    return env


def metrics(run):
    return json.loads((Path(run) / "metrics.json").read_text())


def history(run):
    import csv
    with open(Path(run) / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory, cifar_dir):
    """One JAX child (two host devices) trains every trial in JAX_TRIALS, v0-mlp-ae again, and v0-mlp-ae data
    parallel: one interpreter start and one set of compilations for all of them."""
    out = tmp_path_factory.mktemp("jax")
    proc = subprocess.run([sys.executable, "-c", JAX_CHILD, str(out), ",".join(JAX_TRIALS)], env=jax_env(devices=2),
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_study_version_and_v4_trains_on_jax(jax_runs):
    from cifar_ae.tensorboard_log import logged_steps
    assert not jax_runs["tensorflow_loaded_by_precision"] and jax_runs["precision"][0] in ("float32", "mixed_bfloat16")
    for name in JAX_TRIALS:
        run = Path(jax_runs["runs"][name])
        assert run.name == "smoke-s0-jax" and run.parent.name == name
        assert all((run / f).is_file() for f in RUN_FILES), sorted(p.name for p in run.iterdir())
        config, m = json.loads((run / "config.json").read_text()), metrics(run)
        assert config["key"]["backend"] == "jax" and config["versions"]["backend"] == "jax" and config["versions"]["jax"]
        assert m["epochs"] == 1 and logged_steps(run / "tensorboard" / "train") == [0]
        if "test_accuracy" in m:  # 256 test images, 10 classes
            assert 0.0 <= m["test_accuracy"] <= 1.0 and sum(map(sum, m["confusion_matrix"])) == 256
        if "recon_mse" in m:  # images in [0, 1]: an untrained net's output is nowhere near 0.25
            assert 0.0 < m["recon_mse"] < 0.25
        assert all(np.isfinite(float(v)) for row in history(run) for v in row.values())
    upstream = Path(jax_runs["runs"]["v0-dense"]).parent.parent / "v0-mlp-ae" / "smoke-s0-jax"
    assert json.loads((Path(jax_runs["runs"]["v0-dense"]) / "config.json").read_text())["upstream_run"] == str(upstream)


def test_the_same_seed_on_jax_gives_the_same_numbers(jax_runs):
    first, again = Path(jax_runs["runs"]["v0-dense"]).parent.parent / "v0-mlp-ae" / "smoke-s0-jax", jax_runs["again"]
    assert history(first)[0]["loss"] == history(again)[0]["loss"]
    assert metrics(first)["recon_mse"] == metrics(again)["recon_mse"]


def _close_to_single(single, parallel):
    a, b = history(single)[-1], history(parallel)[-1]
    for k in ("loss", "val_loss"):
        assert float(b[k]) == pytest.approx(float(a[k]), rel=DATA_PARALLEL_RTOL), k
    assert metrics(parallel)["recon_mse"] == pytest.approx(metrics(single)["recon_mse"], rel=DATA_PARALLEL_RTOL)


def test_data_parallel_on_two_host_devices_matches_one_device(jax_runs):
    assert jax_runs["devices"] == 2
    single, parallel = Path(jax_runs["again"]), Path(jax_runs["parallel"])
    assert json.loads((parallel / "config.json").read_text())["trial"]["strategy"] == "data_parallel"
    _close_to_single(single, parallel)


def test_data_parallel_in_two_processes_on_loopback_matches_one_device(jax_runs, tmp_path):
    env = {**jax_env(devices=1), "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{free_port()}",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_CHILD, str(tmp_path)], cwd=REPO, text=True,
                              env={**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-4000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert [(r["processes"], r["devices"]) for r in results] == [(2, 2), (2, 2)]
    chief, worker = (Path(r["run"]) for r in results)
    assert chief.name.endswith("-jax") and worker.name == chief.name + "-process1"  # each process its own copy
    _close_to_single(Path(jax_runs["again"]), chief)
    # the same two-way split as two devices in one process: the same numbers
    assert float(history(chief)[-1]["loss"]) == pytest.approx(float(history(jax_runs["parallel"])[-1]["loss"]), rel=1e-6)
    assert metrics(worker)["recon_mse"] == metrics(chief)["recon_mse"]


def test_a_strategy_on_the_wrong_backend_is_refused_before_anything_is_written(tmp_path):
    from cifar_ae.training import run_trial
    from cifar_ae.trials import TrialError
    with pytest.raises(TrialError, match="strategy 'data_parallel' needs KERAS_BACKEND=jax; on tensorflow use "
                                         "strategy='mirrored'"):
        run_trial("v0-mlp-ae", "smoke", 0, out_dir=tmp_path, strategy="data_parallel")
    assert not any(tmp_path.iterdir())


def test_a_tensorflow_run_keeps_its_key_and_folder():
    from cifar_ae import backend
    key = {"trial": {"model": "x"}, "seed": 0}
    assert backend.name() == "tensorflow" and backend.key_with_backend(key) is key
    assert backend.own_folder(Path("runs/v0-dense/smoke-s0")) == Path("runs/v0-dense/smoke-s0")


def test_ssim_in_keras_ops_is_tf_image_ssim():
    import tensorflow as tf
    from cifar_ae.backend import ssim
    rng = np.random.default_rng(0)
    x = rng.random((6, 32, 32, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    want = tf.image.ssim(tf.constant(x), tf.constant(y), max_val=1.0).numpy()
    np.testing.assert_allclose(ssim(x, y), want, rtol=1e-4, atol=1e-5)
    assert ssim(x, x) == pytest.approx(np.ones(6), abs=1e-5)
    with pytest.raises(ValueError, match="ssim needs two"):
        ssim(x, y[:, :16])


# --------------------------------------------------------------------------- TensorBoard across a SIGKILL

KILL_CHILD = textwrap.dedent("""
    import os, sys, time, json
    import keras
    from cifar_ae.training import run_trial
    out, marker, pause = sys.argv[1], sys.argv[2], sys.argv[3] == "pause"

    class PauseBeforeCommit(keras.callbacks.Callback):
        # runs before the run's checkpoint commits epoch 2 of 3: the parent SIGKILLs the process here, where a
        # TensorBoard callback that wrote at every epoch end would already hold epoch 2
        def on_epoch_end(self, epoch, logs=None):
            if pause and epoch == 1:
                open(marker, "w").write(str(os.getpid()))
                time.sleep(600)

    run = run_trial("v0-mlp-ae", "smoke", 0, out_dir=out, epochs=3, verbose=0, callbacks=[PauseBeforeCommit()])
    print(json.dumps({"run": str(run)}))
""")


def test_tensorboard_logs_each_epoch_once_across_a_kill_and_resume(tmp_path, cifar_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from cifar_ae.tensorboard_log import logged_steps
    marker = tmp_path / "paused"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", KILL_CHILD, str(tmp_path), str(marker)]
    proc = subprocess.Popen(command + ["pause"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - t0 < 300, "the child never reached epoch 2's end"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (run,) = (tmp_path / "v0-mlp-ae").iterdir()
    assert logged_steps(run / "tensorboard" / "train") == [0]  # epoch 2 ended but was never committed
    done = subprocess.run(command + ["resume"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for part, tags in (("train", ("epoch_loss", "epoch_mse", "epoch_learning_rate")),
                       ("validation", ("epoch_loss", "epoch_mse"))):
        for tag in tags:  # raw events, every file: a duplicate would show here, before TensorBoard's purge hides it
            assert logged_steps(run / "tensorboard" / part, tag) == [0, 1, 2], (part, tag)
        board = EventAccumulator(str(run / "tensorboard" / part))
        board.Reload()
        assert [e.step for e in board.Tensors("epoch_loss")] == [0, 1, 2]
    losses = [float(r["loss"]) for r in history(run)]
    board = EventAccumulator(str(run / "tensorboard" / "train"))
    board.Reload()
    from tensorboard.util import tensor_util
    logged = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in board.Tensors("epoch_loss")]
    assert logged == pytest.approx(losses, rel=1e-6)
    assert sum(p.stat().st_size for p in (run / "tensorboard").rglob("*") if p.is_file()) < 50_000
