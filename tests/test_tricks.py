"""The tricks beyond the study: schedules, smoothing, growing batches, TTA, MirroredStrategy."""
import csv
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from cifar_ae import tricks as T
from cifar_ae.experiments import row_trial as row
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


@pytest.mark.parametrize("name", ["v3-joint-resnet", "v3:lean", "v3-joint-resnet-patch", "v3:autoaugment"])
def test_new_trials_run_on_smoke(name, tmp_path, cifar_dir):
    run = run_trial(row(name) if ":" in name else name, "smoke", out_dir=tmp_path, verbose=0)
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
    run = run_trial(row("v3:feature-resnet-decoded"), "smoke", out_dir=tmp_path, verbose=0)
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


def test_lookahead_pulls_weights_and_batchnorm_statistics_toward_its_slow_copy():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.5, seed=1)])
    look = T.Lookahead(model, decay=0.8, total_steps=100)
    assert len(look.variables) == 6  # kernel, bias, gamma, beta, moving mean, moving variance; no seed state
    assert look.decay_at(0) == 0 and look.decay_at(50) == pytest.approx(0.1) and look.decay_at(100) == 0.8
    slow = [v.numpy().copy() for v in look.fast]
    for v in look.fast:
        v.assign(v + 1.0)  # the fast weights move by 1 ...
    look.pull(0.75)  # ... and the slow copy a quarter of the way toward them; the fast ones land on it
    for v, s, f in zip(look.fast, look.variables, slow):
        np.testing.assert_allclose(s.numpy(), f + 0.25, rtol=1e-6)
        np.testing.assert_allclose(v.numpy(), f + 0.25, rtol=1e-6)
    look.pull(0.0)  # d = 0 (early in a run): no averaging
    np.testing.assert_allclose(look.fast[0].numpy(), slow[0] + 0.25, rtol=1e-6)


def test_a_lookahead_run_interrupted_after_epoch_1_resumes_to_the_uninterrupted_numbers(tmp_path, cifar_dir):
    # the slow copy is part of the checkpoint: a resumed run rebuilt from scratch would pull toward its fresh weights
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("interrupted")

    kw = dict(epochs=3, verbose=0, lookahead=0.95, batch_size=32)  # 8 steps an epoch: pulls at 5, 10, .., 24
    whole = run_trial(row("v4:narrow"), "smoke", 0, out_dir=tmp_path / "whole", **kw)
    with pytest.raises(KeyboardInterrupt):
        run_trial(row("v4:narrow"), "smoke", 0, out_dir=tmp_path / "cut", callbacks=[Interrupt()],
                  **kw)
    cut = run_trial(row("v4:narrow"), "smoke", 0, out_dir=tmp_path / "cut", **kw)
    rows = [list(csv.DictReader(open(r / "history.csv"))) for r in (whole, cut)]
    for key in ("loss", "val_loss", "val_reconstruction_mse"):  # epochs 2 and 3 pull toward the restored copy
        assert [float(r[key]) for r in rows[1]] == pytest.approx([float(r[key]) for r in rows[0]], rel=1e-5), key
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (whole, cut))
    assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-9)
    assert a["recon_mse"] == pytest.approx(b["recon_mse"], rel=1e-5) and a["best_epoch"] == b["best_epoch"]


def test_weight_decay_skip_leaves_the_named_layers_undecayed(tmp_path):
    from cifar_ae import models as M
    from cifar_ae.training import compile_model
    from cifar_ae.trials import TrialError
    trial = row("v4:wide-lead-wd").replace(weight_decay_skip=("dec", "patch_code"))
    model = compile_model(M.fast_joint(widths=(8, 16, 16), decoder_width=8), trial)
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    model.optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in variables])  # zero gradient: decay only
    moved = {v.path.split("/")[0]: not np.allclose(v.numpy(), b) for v, b in zip(variables, before)}
    assert moved["enc1_conv1"] and moved["head_dense"]
    assert not any(moved[n] for n in moved if n.startswith(("dec", "patch_code"))), moved
    with pytest.raises(TrialError, match="weight_decay_skip prefixes \\['decoder'\\] match no layer of fast_joint"):
        run_trial(trial.replace(weight_decay_skip=("decoder",)), "smoke", 0, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(TrialError, match="needs a weight_decay"):
        trial.replace(weight_decay=None)


def test_conv_muon_steps_batchnormed_filters_by_muon_and_the_rest_exactly_as_sgd():
    from cifar_ae.optim import OPTIMIZERS, batchnormed_convs, conv_muon_class
    from cifar_ae.trials import Trial, TrialError
    ConvMuon = conv_muon_class()
    gradient = np.random.default_rng(0).normal(size=(36, 16)).astype("float32")
    singular = np.linalg.svd(keras.ops.convert_to_numpy(ConvMuon.orthogonalise(gradient, 3)), compute_uv=False)
    assert 0.5 < singular.min() and singular.max() < 1.5  # Muon's quintic, 3 steps: every direction near unit scale
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3))
    code = keras.layers.BatchNormalization(momentum=0.5)(keras.layers.Conv2D(16, 3, use_bias=False, name="conv")(image))
    rebuilt = keras.layers.Conv2DTranspose(3, 3, name="unconv")(keras.layers.Conv2D(4, 3, name="plain")(code))
    label = keras.layers.Dense(10, name="head")(keras.layers.GlobalAveragePooling2D()(code))
    model = keras.Model(image, {"label": label, "image": rebuilt})
    assert [layer.name for layer in batchnormed_convs(model)] == ["conv"]  # no BatchNorm after: not Muon's
    optimizer = OPTIMIZERS["muon"](0.05, muon_learning_rate=0.1).use_muon_for(model)
    assert ConvMuon.from_config(optimizer.get_config()).muon_lr_ratio == optimizer.muon_lr_ratio == 2.0
    sgd = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)
    others = [v for v in model.trainable_variables if v.path not in optimizer.muon_paths]
    twins = [keras.Variable(keras.ops.convert_to_numpy(v)) for v in others]
    rng = np.random.default_rng(1)
    for _ in range(3):  # every variable but the Muon kernel moves exactly as Nesterov SGD moves it
        grads = [rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]
        optimizer.apply(grads, model.trainable_variables)
        sgd.apply([g for g, v in zip(grads, model.trainable_variables) if v.path not in optimizer.muon_paths], twins)
    for v, twin in zip(others, twins):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), keras.ops.convert_to_numpy(twin), atol=1e-6)
    kernel = keras.ops.convert_to_numpy(model.get_layer("conv").kernel)
    assert abs(np.linalg.norm(kernel) - 4.0) < 0.5  # reset to sqrt(16 filters) before each Muon step
    x, y = rng.normal(size=(64, 8, 8, 3)).astype("float32"), np.arange(64) % 10
    classifier = keras.Model(image, label)
    classifier.compile(OPTIMIZERS["muon"](0.05, muon_learning_rate=0.1).use_muon_for(classifier),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = classifier.evaluate(x, y, verbose=0)
    classifier.fit(x, y, epochs=40, batch_size=64, verbose=0)
    assert classifier.evaluate(x, y, verbose=0) < 0.8 * before
    with pytest.raises(ValueError, match="no conv layer followed by BatchNorm"):
        OPTIMIZERS["muon"](0.05, muon_learning_rate=0.1).use_muon_for(keras.Sequential([keras.Input((4,)),
                                                                                     keras.layers.Dense(2)]))
    with pytest.raises(TrialError, match="optimizer 'muon' and muon_learning_rate go together"):
        Trial("t", "", task="classifier", model="dense_classifier", optimizer="muon")
