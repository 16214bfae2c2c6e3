"""cifar_ae.anomaly: scores on tiny synthetic data, AUROC, corruptions, and the CLI on the smoke preset."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cifar_ae import anomaly as A
from cifar_ae.data import DataError


def smooth_images(n, seed=0):
    """Colour gradients: easy for a tiny autoencoder to learn."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 32, dtype=np.float32)
    a, b, c = (rng.uniform(0.2, 0.8, (n, 1, 1, 3)) for _ in range(3))
    img = a + (b - 0.5) * ramp[None, :, None, None] + (c - 0.5) * ramp[None, None, :, None]
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def noise_images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def textured_images(n, seed=2):
    """Smooth random shapes plus fine grain, like a photo: every corruption changes them.
    (Blocks aligned to the pixel grid would not do: pixelating them aliases, non-monotonically.)"""
    from PIL import Image
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
    up = np.stack([np.asarray(Image.fromarray(s).resize((32, 32), Image.BICUBIC)) for s in small]).astype(np.int16)
    return np.clip(up + rng.integers(-20, 21, up.shape), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- AUROC

def test_auroc_matches_scikit_learn_on_hand_example():
    normal, anomalous = [0.1, 0.4, 0.35], [0.8, 0.3]
    # pairs (anomalous, normal) ranked correctly: 0.8 beats all three, 0.3 beats 0.1 -> 4 of 6
    assert A.auroc(normal, anomalous) == pytest.approx(4 / 6)
    assert A.auroc(normal, anomalous) == pytest.approx(roc_auc_score([0, 0, 0, 1, 1], normal + anomalous))


def test_auroc_perfect_reversed_and_ties():
    assert A.auroc([0, 1, 2], [3, 4]) == 1.0
    assert A.auroc([3, 4], [0, 1, 2]) == 0.0
    assert A.auroc([1, 1], [1, 1]) == 0.5
    fpr, tpr = A.roc([0, 1, 2], [3, 4])
    assert fpr[-1] == tpr[-1] == 1.0 and fpr[0] == tpr[0] == 0.0


def test_auroc_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        A.auroc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        A.auroc([0.0, np.nan], [1.0])


# --------------------------------------------------------------------------- scores

def test_mahalanobis_far_point_scores_higher():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 6)) * [1, 1, 1, 5, 5, 5]
    g = A.fit_gaussian(train)
    near, far_along_wide, far = np.zeros(6), np.array([0, 0, 0, 10, 0, 0]), np.array([10, 0, 0, 0, 0, 0])
    d = A.mahalanobis(np.stack([near, far_along_wide, far]), g)
    # 10 units along a std-5 axis is 2 std; along a std-1 axis, 10 std
    assert d[0] < d[1] < d[2]
    assert d[2] == pytest.approx(100, rel=0.3)


def test_fit_gaussian_matches_scikit_learn_ledoit_wolf():
    from sklearn.covariance import LedoitWolf
    rng = np.random.default_rng(1)
    train = np.maximum(rng.normal(size=(400, 20)) @ rng.normal(size=(20, 20)), 0)  # ReLU-like, correlated
    test = rng.normal(size=(10, 20))
    np.testing.assert_allclose(A.mahalanobis(test, A.fit_gaussian(train)), LedoitWolf().fit(train).mahalanobis(test),
                               rtol=1e-6)


def test_fit_gaussian_rejects_too_few_points():
    with pytest.raises(ValueError, match="at least 2"):
        A.fit_gaussian(np.zeros((1, 4)))


def test_contrast_normalizer_ignores_brightness_and_contrast():
    x = textured_images(6)
    dull = (x.astype(np.float32) * 0.5 + 60).astype(np.uint8)  # half the contrast, brighter
    norm = A.ContrastNormalizer().fit(x)
    out = norm.transform(x)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert np.abs(norm.transform(dull).astype(int) - out).mean() < 3  # the same image, up to rounding


def test_max_softmax_confident_scores_low():
    s = A.max_softmax_score([[0.98, 0.01, 0.01], [0.34, 0.33, 0.33]])
    assert s[0] < s[1]


def test_ssim_distance_zero_for_identical_and_higher_for_noise():
    x = smooth_images(4).astype(np.float32) / 255
    noisy = np.clip(x + np.random.default_rng(0).normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
    assert np.allclose(A.ssim_distance(x, x), 0, atol=1e-5)
    assert np.all(A.ssim_distance(x, noisy) > 0.1)


def test_tiny_autoencoder_scores_noise_as_anomalous():
    smooth = smooth_images(192)
    import keras
    from augment import make_augmenter
    from cifar_ae import models as M
    from cifar_ae.batches import ArrayBatches
    keras.utils.set_random_seed(0)
    model = M.conv_autoencoder(filters=(8, 16))
    model.compile(keras.optimizers.Adam(3e-3), loss="mse")
    flip = make_augmenter({"policy": None, "flip": True, "translate": 0})
    model.fit(ArrayBatches(smooth, None, batch_size=32, targets="reconstruction", transform=flip), epochs=12, verbose=0)
    scorer = A.AnomalyScorer(model, tta=True).fit(smooth[:160], smooth[160:])
    assert scorer.names == ["mse", "ssim", "mahalanobis", "mahalanobis_l2", "mahalanobis_stats_l2", "mse+mahalanobis"]
    normal, odd = scorer.score(smooth_images(16, seed=5)), scorer.score(noise_images(16))
    for name in scorer.names:
        assert normal[name].shape == (16,) and np.all(np.isfinite(normal[name]))
        assert A.auroc(normal[name], odd[name]) == 1.0, name


def test_joint_model_adds_max_softmax_and_checks_inputs():
    from cifar_ae import models as M
    scorer = A.AnomalyScorer(M.joint_model(filters=(8, 16), head_filters=(8, 8)), feature_pool=2, tta=False)
    scorer.fit(smooth_images(24))
    scores = scorer.score(noise_images(4))
    assert list(scores) == ["mse", "ssim", "mahalanobis", "mahalanobis_l2", "mahalanobis_stats_l2", "max_softmax"]
    with pytest.raises(DataError, match="uint8"):
        scorer.score(noise_images(4).astype(np.float32))
    with pytest.raises(ValueError, match="no layer 'nope'"):
        A.AnomalyScorer(M.joint_model(filters=(8, 16), head_filters=(8, 8)), feature_layer="nope")


def test_score_before_fit_is_an_error():
    from cifar_ae import models as M
    with pytest.raises(ValueError, match="before fit"):
        A.AnomalyScorer(M.conv_autoencoder(filters=(8, 16))).score(smooth_images(2))


# --------------------------------------------------------------------------- corruptions

@pytest.mark.parametrize("name", A.CORRUPTIONS)
def test_corruption_keeps_shape_dtype_and_grows_with_severity(name):
    x = textured_images(8)
    changes = []
    for s in A.SEVERITIES:
        out = A.corrupt(x, name, s, seed=0)
        assert out.shape == x.shape and out.dtype == np.uint8
        changes.append(np.abs(out.astype(np.int16) - x).mean())
    assert changes[0] > 0
    assert all(a < b for a, b in zip(changes, changes[1:])), changes


def test_corruption_is_seeded_and_validated():
    x = textured_images(2)
    assert np.array_equal(A.corrupt(x, "gaussian_noise", 3, seed=1), A.corrupt(x, "gaussian_noise", 3, seed=1))
    with pytest.raises(ValueError, match="unknown corruption"):
        A.corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        A.corrupt(x, "contrast", 6)
    with pytest.raises(DataError):
        A.corrupt(x.astype(np.float32), "contrast", 1)


# --------------------------------------------------------------------------- tables

def test_auroc_table_and_markdown():
    y = np.array([0, 0, 1, 1], bool)
    results = {"cat": {"scores": {"mse": np.array([0.1, 0.2, 0.3, 0.4]), "ssim": np.array([0.4, 0.3, 0.2, 0.1])},
                       "is_anomalous": y}}
    table = A.auroc_table(results, ["cat"])
    assert table == {"mse": {"cat": 100.0, "mean": 100.0}, "ssim": {"cat": 0.0, "mean": 0.0}}
    md = A.auroc_markdown(table, ["cat"], {"cat": 59.1, "mean": 64.8}, "Deep SVDD")
    assert "| mse | **100.0** | **100.0** |" in md and "| Deep SVDD | 59.1 | 64.8 |" in md


def test_corruption_table_has_every_severity():
    table = {"mse": {f"{c}/s{s}": 50.0 + s for c in A.CORRUPTIONS for s in A.SEVERITIES}}
    table["mse"]["mean"] = 53.0
    md = A.corruption_markdown(table)
    assert "| contrast | 51.0 | 52.0 | 53.0 | 54.0 | 55.0 | 53.0 |" in md
    assert len(A.severity_curves(table).axes) == 1


# --------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def anomaly_runs(tmp_path_factory):
    """One runs folder for the CLI test and the notebook's: the notebook reuses the one-class models (and cached
    scores) the CLI trained, 20 s less; either test alone trains them itself."""
    return tmp_path_factory.mktemp("anomaly-runs")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CIFAR10_DIR"), reason="needs real CIFAR-10 (set CIFAR10_DIR)")
def test_cli_one_class_smoke_writes_run_folder(anomaly_runs, capsys):
    from cifar_ae.cli import main
    assert main(["anomaly", "--protocol", "one-class", "--preset", "smoke", "--out", str(anomaly_runs)]) == 0
    run = anomaly_runs / "anomaly" / "one-class" / "smoke-s0"
    config, result = json.loads((run / "config.json").read_text()), json.loads((run / "auroc.json").read_text())
    assert config["preset"] == "smoke" and config["seed"] == 0 and "keras" in config["versions"]
    assert "anomaly --protocol one-class --preset smoke" in result["command"]
    units = ["airplane", "automobile"]
    assert result["units"] == units
    for score in ("mse", "ssim", "mahalanobis"):
        row = result["auroc"][score]
        assert set(row) == set(units) | {"mean"} and all(0 <= v <= 100 for v in row.values())
    assert "Deep SVDD" in (run / "auroc.md").read_text()
    for u in units:
        for kind in ("histograms", "roc", "extremes"):
            assert (run / "figures" / f"{u}_{kind}.png").stat().st_size > 0
    assert "best" in capsys.readouterr().out


def test_cli_rejects_unknown_preset(capsys):
    from cifar_ae.cli import main
    assert main(["anomaly", "--protocol", "one-class", "--preset", "huge"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_anomaly_notebook_runs_top_to_bottom_on_smoke(tmp_path, anomaly_runs, monkeypatch):
    """CI executes the anomaly notebook on the smoke preset; a cell that raises fails this test."""
    import os
    from pathlib import Path

    import papermill
    if not os.environ.get("CIFAR10_DIR"):
        pytest.skip("CIFAR10_DIR is not set to the CIFAR-10 folder")
    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "anomaly_detection.ipynb"
    papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               parameters={"PRESET": "smoke", "RUNS": str(anomaly_runs)}, progress_bar=False)
    import nbformat
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    shown = "".join(o.get("text", "") + "".join(str(v) for v in o.get("data", {}).values())
                    for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    for noise in ("E0000", "absl", "retracing"):  # TensorFlow's log lines, silenced or avoided (cifar_ae/quiet.py)
        assert noise not in shown, noise
