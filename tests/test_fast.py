"""v4, airbench's recipe on the joint model: each trick is a field, and each does what it says."""
import json

import keras
import numpy as np
import pytest

from augment import make_augmenter
from augment.fast import alternating_flip
from cifar_ae import models as M, tricks as T
from cifar_ae.training import run_trial
from cifar_ae.experiments import EXPERIMENTS_DIR, load_experiment
from cifar_ae.trials import TRIALS, TrialError

V4 = load_experiment(EXPERIMENTS_DIR / "v4.toml")
FAST = V4.rows["fast"].trial  # airbench94's recipe on the joint net (experiments/v4.toml)


def test_alternating_flip_shows_every_image_both_ways_over_two_epochs():
    x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    idx = np.arange(1000, 1064)
    e0, e1, e2 = (alternating_flip(x, idx, e) for e in (0, 1, 2))
    flipped0 = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(e0, x)])
    flipped1 = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(e1, x)])
    assert 10 < flipped0.sum() < 54 and np.array_equal(flipped0, ~flipped1) and np.array_equal(e0, e2)
    aug = make_augmenter({"policy": None, "flip": "alternate", "translate": 2})
    assert aug.wants_indices
    with pytest.raises(ValueError, match="needs each image's index"):
        aug(x, np.random.default_rng(0))
    with pytest.raises(ValueError, match="flip must be True, False or 'alternate'"):
        make_augmenter({"flip": "sometimes"})


def test_whitening_kernel_whitens_the_training_patches(cifar):
    x = cifar.x_train[::10][:2000]
    k = M.whitening_kernel(x)
    assert k.shape == (2, 2, 3, 24) and np.allclose(k[..., :12], -k[..., 12:])
    from numpy.lib.stride_tricks import sliding_window_view
    patches = np.moveaxis(sliding_window_view(x / 255.0, (2, 2), axis=(1, 2)), 3, -1).reshape(-1, 12)
    out = patches @ k[..., :12].reshape(12, 12)
    cov = out.T @ out / len(out)
    diag = np.diag(cov)  # lambda / (lambda + eps): unit variance, but the weakest directions damped by eps
    assert np.allclose(diag[:6], 1.0, atol=0.02) and np.all((diag > 0.2) & (diag <= 1.0 + 1e-6))
    assert np.abs(cov - np.diag(diag)).max() < 1e-3  # decorrelated


def test_crop_tta_averages_shifted_views():
    x = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    assert np.array_equal(T.shift(x, 1, 1)[:, 1:, 1:], x[:, :-1, :-1])
    model = M.fast_joint(widths=(8, 16, 16), whiten_channels=0, patch_channels=4, decoder_width=8)
    plain = T.predict_tta(model, x, flip=False)
    both = T.predict_tta(model, x, flip=True, crops=True)
    assert both["label"].shape == (4, 10) and np.allclose(both["label"].sum(1), 1, atol=1e-5)
    assert not np.allclose(plain["label"], both["label"]) and np.array_equal(plain["reconstruction"], both["reconstruction"])


def test_the_light_decoder_drops_only_the_residual_block_and_its_flops():
    from cifar_ae.compute import train_flops_per_image
    full = M.fast_joint(widths=(8, 16, 16), patch_channels=4, decoder_width=8)
    light = M.fast_joint(widths=(8, 16, 16), patch_channels=4, decoder_width=8, decoder_blocks=0)
    names = {layer.name for layer in light.layers}
    assert any(n.startswith("dec1_res") for n in {layer.name for layer in full.layers})
    assert not any(n.startswith("dec1_res") for n in names) and {"dec_in_conv", "dec_unpatchify"} <= names
    assert light.output_shape == full.output_shape
    saved = train_flops_per_image(full) - train_flops_per_image(light)
    assert saved == 3 * 2 * 2 * (8 * 8 * 3 * 3 * 8 * 8)  # two 3x3 8->8 convs @8, forward + backward
    with pytest.raises(ValueError, match=r"decoder_blocks must be a whole number >= 0 .*got -1"):
        M.fast_joint(widths=(8, 16, 16), decoder_blocks=-1)


def test_logit_adjustment_divides_out_the_training_prior():
    y_train = np.array([0] * 30 + [1] * 10)  # prior 0.75 / 0.25
    probs = np.array([[0.6, 0.4], [0.8, 0.2]])
    adjusted = T.adjust_for_prior(probs, y_train, 1.0)
    assert np.allclose(adjusted, [[1 / 3, 2 / 3], [4 / 7, 3 / 7]], atol=1e-6)  # 0.6/0.75 : 0.4/0.25, renormalised
    assert np.allclose(T.adjust_for_prior(probs, y_train, 0.0), probs)
    with pytest.raises(ValueError, match=r"every one of the 3 classes .* got counts \[30, 10, 0\]"):
        T.adjust_for_prior(np.full((1, 3), 1 / 3), y_train, 1.0)
    with pytest.raises(TrialError, match="logit_adjustment needs a label output trained on all 10 classes"):
        FAST.replace(logit_adjustment=1.0, train_classes=("cat",))
    with pytest.raises(TrialError, match=r"logit_adjustment must be a number in \[0, 10\]; got -1"):
        FAST.replace(logit_adjustment=-1)


def test_a_logit_adjusted_run_keeps_the_unadjusted_numbers_beside_its_own(tmp_path, cifar_dir):
    run = run_trial(FAST, "smoke", 0, out_dir=tmp_path, verbose=0, logit_adjustment=1.0)
    m = json.loads((run / "metrics.json").read_text())
    for k in ("test_accuracy", "test_accuracy_without_tta", "test_accuracy_without_logit_adjustment",
              "val_balanced_accuracy", "val_balanced_accuracy_without_logit_adjustment"):
        assert 0 <= m[k] <= 1, k
    assert "recon_mse" in m
    config = json.loads((run / "config.json").read_text())
    assert config["key"]["trial"]["logit_adjustment"] == 1.0  # its own run, not the unadjusted one's
    plain = run_trial(FAST, "smoke", 0, out_dir=tmp_path, verbose=0)
    assert plain != run and "logit_adjustment" not in json.loads((plain / "config.json").read_text())["key"]["trial"]


def test_validation_none_trains_on_the_held_out_images_too_and_refuses_what_needs_them(cifar_dir):
    from cifar_ae.training import prepare_data
    settings = {**FAST.settings("smoke"), "train_images": None}
    held = prepare_data(FAST, settings, 0)
    every = prepare_data(FAST.replace(validation="none"), settings, 0)
    assert len(every["y_val"]) == 0 and len(every["y_train"]) == len(held["y_train"]) + len(held["y_val"])
    with pytest.raises(TrialError, match="validation='none' needs an lr_schedule .*got lr_schedule=None"):
        TRIALS["v2-joint-noaug"].replace(validation="none")
    every_image = FAST.replace(validation="none")
    assert every_image.settings("study")["epochs"] == 100  # listing a preset is fine; running it is not
    with pytest.raises(TrialError, match="preset 'study' stops early on a validation metric"):
        run_trial(every_image, "study", 0)


def test_a_run_without_validation_keeps_its_last_epoch_even_when_killed_before_saving_it(tmp_path, cifar_dir):
    class KilledAfterTraining(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            raise RuntimeError("killed after training")

    changes = dict(validation="none", logit_adjustment=1.0, epochs=2)
    with pytest.raises(RuntimeError, match="killed after training"):
        run_trial(FAST, "smoke", 0, out_dir=tmp_path / "a", verbose=0, callbacks=[KilledAfterTraining()],
                  **changes)
    resumed = run_trial(FAST, "smoke", 0, out_dir=tmp_path / "a", verbose=0, **changes)
    whole = run_trial(FAST, "smoke", 0, out_dir=tmp_path / "b", verbose=0, **changes)
    config = json.loads((resumed / "config.json").read_text())
    assert config["val_images"] == 0 and config["trial"]["validation"] == "none"
    m, w = (json.loads((r / "metrics.json").read_text()) for r in (resumed, whole))
    assert m["best_epoch"] is None and m["epochs"] == 2 and "val_balanced_accuracy" not in m
    # the resumed run reloads epoch 2's weights (a fresh net would score otherwise)
    assert (m["test_accuracy"], m["recon_mse"]) == (w["test_accuracy"], w["recon_mse"])


def test_drop_last_leaves_out_each_epochs_partial_batch():
    from cifar_ae.batches import ArrayBatches
    x, y = np.zeros((10, 32, 32, 3), np.uint8), np.arange(10)
    every, dropped = ArrayBatches(x, y, batch_size=4), ArrayBatches(x, y, batch_size=4, drop_last=True)
    assert (len(every), len(dropped)) == (3, 2)
    assert [len(dropped[i][1]) for i in range(len(dropped))] == [4, 4]
    with pytest.raises(ValueError, match="drop_last needs at least one full batch: got 3 images at batch size 4"):
        ArrayBatches(x[:3], y[:3], batch_size=4, drop_last=True)


@pytest.mark.parametrize("row", ["fast", "fast-norecon", "fast-balanced", "droplast", "lead"])
def test_v4_rows_run_on_smoke(row, tmp_path, cifar_dir):
    trial = V4.rows[row].trial
    run = run_trial(trial, "smoke", 0, out_dir=tmp_path, verbose=0)
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["test_accuracy"] <= 1 and "test_accuracy_without_tta" in m and 0 < m["recon_mse"] < 0.3
    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    assert not model.get_layer("whiten").trainable  # whitened, then frozen
    config = json.loads((run / "config.json").read_text())
    assert config["trial"]["momentum"] == 0.85 and config["trial"]["augmentation"]["flip"] == "alternate"


def test_trick_fields_are_checked():
    with pytest.raises(TrialError, match="momentum applies to optimizer 'sgd' or 'muon'"):
        run_trial("v3-joint-resnet", "smoke", 0, momentum=0.9)
    with pytest.raises(TrialError, match="whitening=True needs a builder with a `whiten` layer"):
        run_trial("v2-joint-noaug", "smoke", 0, whitening=True)
    assert TRIALS["v4-joint-lead"].ema_momentum is None and TRIALS["v2-joint-noaug"].whitening is False


def test_airbench_convs_start_as_identities():
    w = np.asarray(M.PartialDirac(seed=0)((3, 3, 24, 64)))
    assert np.array_equal(w[..., :24], np.pad(np.eye(24)[None, None], [[1, 1], [1, 1], [0, 0], [0, 0]]))
    assert abs(w[..., 24:].std() - 1 / np.sqrt(3 * 9 * 24)) < 0.003  # PyTorch's default: uniform(+-1/sqrt(fan_in))
    x = np.random.default_rng(0).random((2, 8, 8, 24)).astype(np.float32)
    conv = keras.layers.Conv2D(64, 3, padding="same", use_bias=False, kernel_initializer=M.PartialDirac())
    assert np.allclose(np.asarray(conv(x))[..., :24], x, atol=1e-6)  # the first filters pass the input through
    model = M.fast_joint(widths=(8, 16, 16), patch_channels=4, decoder_width=8)
    assert np.asarray(model.get_layer("head_dense").kernel).std() < 0.5  # glorot
    assert model.get_layer("enc1_1_bn").momentum == 0.6  # airbench's 0.6, which PyTorch is given as 1 - 0.6
    wide = M.fast_joint(widths=(8, 16, 16), patch_channels=4, decoder_width=8, dirac=False, head_std=1.0)
    assert abs(np.asarray(wide.get_layer("head_dense").kernel).std() - 1.0) < 0.15


def test_the_trick_table_shows_the_builders_own_tricks_at_their_resolved_values():
    from cifar_ae.notebooks import tricks_table
    rows = {r[0]: r for r in tricks_table(FAST).rows}
    assert rows["model_args.dirac"][2:] == ["True", "False", "on"] and rows["model_args.bn_momentum"][2] == "0.6"
    assert rows["model_args.head_std"][4] == "off"  # a builder default, not written in the trial
    assert tricks_table(TRIALS["v3-joint-resnet-patch"]).rows[-1][2] == "0.9"  # resnet_joint's own default


def test_the_exact_port_has_airbench94s_shapes_and_flops():
    """airbench94's layers, written as data in tools/airbench_flops.py from its source, against the Keras port at
    padding-0 whitening without a decoder: the same multiply-adds, so the compute reconciliation compares like with
    like; the registered port's are larger by its padding and its decoder."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import airbench_flops
    from cifar_ae import compute
    exact = V4.rows["airbench94-exact"].trial
    model = M.BUILDERS[exact.model](**exact.model_args)
    assert exact.task == "classifier" and not isinstance(model.output, dict)
    assert model.get_layer("whiten").output.shape[1:3] == (31, 31)
    assert sum(compute.model_macs(model).values()) == airbench_flops.airbench94()["macs_per_image"]
    registered = M.BUILDERS["fast_joint"](**TRIALS["v4-airbench94"].model_args)
    assert sum(compute.model_macs(registered).values()) > 1.2 * airbench_flops.airbench94()["macs_per_image"]
    with pytest.raises(ValueError, match="whiten_padding"):
        M.fast_joint(whiten_padding="full")


def test_the_exact_port_trains_as_a_classifier_on_smoke(tmp_path, cifar_dir):
    # smoke has 256 training images: a smaller batch, so drop_last keeps some
    run = run_trial(V4.rows["airbench94-exact"].trial, "smoke", 0, out_dir=tmp_path, verbose=0, batch_size=128)
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["test_accuracy"] <= 1 and "test_accuracy_without_tta" in m and m.get("recon_mse") is None
    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    assert not model.get_layer("whiten").trainable and model.output_names == ["label"]


def test_the_committed_port_reconciliation_regenerates_with_its_verdict(cifar_dir):
    """results/airbench94_flops.md is the tool's output from the committed runs, byte for byte, and its verdict on the
    port at airbench94's compute follows from the run's accuracy and the bar (not typed in)."""
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo / "tools"))
    import airbench_flops
    text, record = airbench_flops.report()
    assert text == (repo / "results" / "airbench94_flops.md").read_text()
    exact = record["port"][1]
    verdict = record["exact_against_published"]
    if exact.get("test_accuracy") is None:
        assert verdict is None
    else:
        gap = airbench_flops.PUBLISHED["test_accuracy"] - exact["test_accuracy"]
        assert verdict["met"] == (gap <= airbench_flops.WITHIN)
        assert ("**met**" in text) == verdict["met"] and ("**not met**" in text) != verdict["met"]
