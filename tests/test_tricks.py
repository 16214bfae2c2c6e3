"""The tricks beyond the study: schedules, smoothing, growing batches, TTA, MirroredStrategy."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from cifar_ae import tricks as T
from cifar_ae.training import run_trial



def test_onecycle_warms_up_then_decays():
    sched = T.OneCycleLR(peak=0.1, epochs=10, warmup=0.2)
    lrs = [sched.lr_at(p) for p in np.linspace(0, 1, 101)]
    peak_at = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(0.004) and max(lrs) == pytest.approx(0.1) and 18 <= peak_at <= 22
    assert all(a <= b for a, b in zip(lrs[:peak_at], lrs[1:peak_at + 1]))
    assert all(a >= b for a, b in zip(lrs[peak_at:], lrs[peak_at + 1:])) and lrs[-1] < 1e-6


def test_smoothed_loss_matches_keras_one_hot_version():
    y = np.array([0, 3, 9])
    p = keras.ops.softmax(np.random.default_rng(0).normal(size=(3, 10)).astype("float32"))
    ours = T.SmoothedSparseCE(0.1)(y, p)
    ref = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(keras.ops.one_hot(y, 10), p)
    assert float(ours) == pytest.approx(float(ref), rel=1e-4)


def test_batch_stages_cover_every_epoch_once():
    assert T.batch_stages((128, 256, 512), 8) == [(0, 3, 128), (3, 5, 256), (5, 8, 512)]
    assert T.batch_stages((256,), 5) == [(0, 5, 256)]


@pytest.mark.parametrize("name", ["v3-joint-resnet", "v3-joint-resnet-lean", "v3-joint-resnet-patch",
                                  "v3-joint-resnet-autoaugment"])
def test_new_trials_run_on_smoke(name, tmp_path, cifar_dir):
    run = run_trial(name, "smoke", out_dir=tmp_path, verbose=0)
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["test_accuracy"] <= 1 and "test_accuracy_without_tta" in m and 0 < m["recon_mse"] < 0.25


def test_v3_autoencoder_and_frozen_feature_classifier_run_on_smoke(tmp_path, cifar_dir):
    run = run_trial("v3-feature-classifier", "smoke", out_dir=tmp_path, verbose=0)  # trains v3-cnn-ae first
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["test_accuracy"] <= 1 and "test_accuracy_without_tta" in m
    ae = json.loads((tmp_path / "v3-cnn-ae" / "smoke-s0" / "metrics.json").read_text())
    assert 0 < ae["recon_mse"] < 0.25
    import keras
    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    frozen = [layer for layer in model.layers if layer.name in ("patchify", "features")]
    assert len(frozen) == 2 and not any(layer.trainable for layer in frozen)
    # the rendering classifier reuses the same upstream run; its own encoder trains, the autoencoder's does not
    run = run_trial("v3-feature-resnet", "smoke", out_dir=tmp_path, verbose=0)
    assert 0 <= json.loads((run / "metrics.json").read_text())["test_accuracy"] <= 1
    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    layers = {layer.name: layer for layer in model.layers}
    assert not layers["patchify"].trainable and layers["render"].trainable and layers["cls_stem_conv"].trainable
    assert model.get_layer("render").output.shape[1:] == (32, 32, 16)
    # ... and the decoded one reads the code through the autoencoder's frozen decoder
    run = run_trial("v3-feature-resnet-decoded", "smoke", out_dir=tmp_path, verbose=0)
    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    layers = {layer.name: layer for layer in model.layers}
    assert not layers["features"].trainable and not layers["unpatchify"].trainable and layers["cls_stem_conv"].trainable


def test_schedules_are_applied_and_logged(tmp_path, cifar_dir):
    run = run_trial("v3-joint-resnet", "smoke", out_dir=tmp_path, epochs=3, verbose=0,
                    batch_sizes=(64, 128, 256), recon_weight=(5.0, 1.0), tta_flip=False)
    import csv
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["recon_weight"]) for r in rows] == [5.0, 3.0, 1.0]


def test_every_trick_switches_off(tmp_path, cifar_dir):
    plain = dict(lr_schedule=None, label_smoothing=0.0, recon_weight=None, batch_sizes=None, tta_flip=False,
                 augmentation=None, weight_decay=None, precision="float32")
    run = run_trial("v3-joint-resnet", "smoke", out_dir=tmp_path, verbose=0, **plain)
    config = json.loads((run / "config.json").read_text())
    assert all(config["trial"][k] == v for k, v in plain.items())
    assert "test_accuracy_without_tta" not in json.loads((run / "metrics.json").read_text())


def test_ablation_loop_writes_a_table_from_run_folders(tmp_path, cifar_dir):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import ablation
    out, kept = tmp_path / "ablation", tmp_path / "kept"
    ablation.main(["--preset", "smoke", "--rows", "baseline", "no-label-smoothing", "--runs", str(tmp_path / "runs"),
                   "--keep", str(kept), "--output", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["row"] for r in rows] == ["baseline", "no-tta", "no-label-smoothing"]
    config = json.loads((kept / "no-label-smoothing" / "v3-joint-resnet" / "smoke-s0-no-label-smoothing" / "config.json").read_text())
    assert config["trial"]["label_smoothing"] == 0.0
    table = out.with_suffix(".md").read_text()
    ablation.main(["--preset", "smoke", "--table-only", "--runs", str(kept), "--output", str(out)])
    assert out.with_suffix(".md").read_text().split("\n")[4:] == table.split("\n")[4:]  # same rows from the copies
    with pytest.raises(SystemExit, match="no complete ablation runs"):
        ablation.main(["--preset", "smoke", "--table-only", "--runs", str(tmp_path / "empty"), "--output", str(out)])


MIRRORED = textwrap.dedent("""
    import json, sys, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from cifar_ae.training import run_trial
    run = run_trial("v2-joint-noaug", "smoke", out_dir=sys.argv[1], verbose=0, strategy="mirrored")
    strategy = tf.distribute.MirroredStrategy()
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "metrics": str(run / "metrics.json")}))
""")


def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path, cifar_dir):
    out = subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    m = json.loads(open(result["metrics"]).read())
    assert 0 <= m["test_accuracy"] <= 1 and np.isfinite(m["recon_mse"])
