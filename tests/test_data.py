import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_ae import data as D


def readme_digests(cifar_dir):
    """sha256 digests from the dataset's own README table: {split: (images, labels)}."""
    text = Path(cifar_dir, "README.md").read_text()
    return {m[0]: (m[1], m[2]) for m in re.findall(r"\|\s*(train|test)\s*\|\s*([0-9a-f]{64})\s*\|\s*([0-9a-f]{64})", text)}


def test_real_cifar10_matches_published_digests(cifar, cifar_dir):
    assert cifar.x_train.shape == (50000, 32, 32, 3) and cifar.x_test.shape == (10000, 32, 32, 3)
    assert cifar.x_train.dtype == np.uint8 and cifar.y_train.dtype == np.int64
    digests = readme_digests(cifar_dir)
    assert set(digests) == {"train", "test"}
    assert D.array_digest(cifar.x_train) == digests["train"][0]
    assert D.array_digest(cifar.y_train.astype(np.uint8)) == digests["train"][1]
    assert D.array_digest(cifar.x_test) == digests["test"][0]
    assert D.array_digest(cifar.y_test.astype(np.uint8)) == digests["test"][1]
    (x, y), (xt, yt), names = cifar  # unpacks like keras.datasets.cifar10.load_data
    assert names == D.CLASS_NAMES and x is cifar.x_train


def test_imbalanced_subset_is_the_study_subset(cifar):
    x, y, kept = D.make_imbalanced(cifar.x_train, cifar.y_train, cifar.train_files)
    assert len(y) == 42500
    assert np.bincount(y).tolist() == [5000, 5000, 2500, 5000, 2500, 5000, 5000, 5000, 5000, 2500]
    x2, y2, kept2 = D.make_imbalanced(cifar.x_train, cifar.y_train, cifar.train_files)
    assert np.array_equal(kept, kept2)
    # the versioned file list and the seeded rule that generated it agree
    _, _, kept_seeded = D.make_imbalanced(cifar.x_train, cifar.y_train)
    assert np.array_equal(kept, kept_seeded)
    removed = set(D.SUBSET_FILE.read_text().split())
    assert len(removed) == 7500 and not removed & set(cifar.train_files[kept])


def write_official_batches(root, x, y, files, n_batches=5, seed=0):
    """Write x/y in the official pickle layout (python-2 style bytes keys), in a shuffled order."""
    root.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(y))
    for i, chunk in enumerate(np.array_split(order, n_batches)):
        batch = {b"batch_label": b"written by test", b"labels": [int(v) for v in y[chunk]],
                 b"data": x[chunk].transpose(0, 3, 1, 2).reshape(len(chunk), -1),
                 b"filenames": [f.split("/", 1)[1].encode() for f in files[chunk]]}
        name = f"data_batch_{i + 1}" if n_batches > 1 else "test_batch"
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_both_formats_give_identical_arrays_and_subset(cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_AE_CACHE", str(tmp_path / "cache"))
    write_official_batches(tmp_path / "batches", cifar.x_train, cifar.y_train, cifar.train_files)
    write_official_batches(tmp_path / "batches", cifar.x_test, cifar.y_test, cifar.test_files, n_batches=1)
    b = D.load_cifar10(tmp_path / "batches")
    for name in ("x_train", "y_train", "x_test", "y_test", "train_files", "test_files"):
        assert np.array_equal(getattr(b, name), getattr(cifar, name)), name
    _, _, kept_a = D.make_imbalanced(cifar.x_train, cifar.y_train, cifar.train_files)
    xb, _, kept_b = D.make_imbalanced(b.x_train, b.y_train, b.train_files)
    assert np.array_equal(kept_a, kept_b) and len(xb) == 42500


def test_cache_makes_second_load_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_AE_CACHE", str(tmp_path / "cache"))
    root = tiny_folder_tree(tmp_path / "tree")
    first = D.load_cifar10(root)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    second = D.load_cifar10(root)
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.test_files, second.test_files)


def tiny_folder_tree(root, per_class=2, size=(32, 32), mode="RGB"):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in D.CLASS_NAMES:
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).convert(mode).save(d / f"img_{i}.png")
    return root


def test_hostile_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = tmp_path / "batches"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(D.DataError, match="refused to unpickle .*system"):
        D.load_cifar10(root, use_cache=False)
    assert not marker.exists()


def test_truncated_batch_names_the_file(cifar, tmp_path):
    root = tmp_path / "batches"
    write_official_batches(root, cifar.x_test[:50], cifar.y_test[:50], cifar.test_files[:50])
    write_official_batches(root, cifar.x_test[:10], cifar.y_test[:10], cifar.test_files[:10], n_batches=1)
    path = root / "data_batch_3"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(D.DataError, match="data_batch_3: not a readable CIFAR-10 batch"):
        D.load_cifar10(root, use_cache=False)


def test_missing_data_lists_every_place_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(D, "KERAS_CACHE", tmp_path / "no-keras-cache")
    monkeypatch.setenv("CIFAR_AE_DOWNLOAD", "0")
    with pytest.raises(D.DataError) as err:
        D.load_cifar10()
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "nowhere") in msg and "no-keras-cache" in msg
    assert "set CIFAR10_DIR" in msg and "CIFAR_AE_DOWNLOAD=0" in msg


def test_with_nothing_local_the_loader_downloads_once_through_keras_get_file(tmp_path, monkeypatch, capsys):
    """As keras.datasets.cifar10 does on first use: announced with its size, checksummed by get_file (faked here:
    the tests never download)."""
    import keras
    root = tiny_folder_tree(tmp_path / "fetched")
    calls = []
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.delenv("CIFAR_AE_DOWNLOAD", raising=False)
    monkeypatch.setattr(D, "KERAS_CACHE", tmp_path / "no-keras-cache")
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **kw: calls.append(kw) or str(root))
    data = D.load_cifar10(use_cache=False)
    assert len(calls) == 1 and calls[0]["file_hash"] == D.DOWNLOAD_SHA256 and calls[0]["origin"] == D.DOWNLOAD_URL
    assert f"downloading {D.DOWNLOAD_MB} MB" in capsys.readouterr().out and len(data.y_test) > 0


def test_wrong_class_folder_and_wrong_image_are_named(tmp_path):
    root = tiny_folder_tree(tmp_path / "a")
    (root / "train" / "aeroplane").mkdir()
    with pytest.raises(D.DataError, match="unknown class folder 'aeroplane'"):
        D.load_cifar10(root, use_cache=False)
    root = tiny_folder_tree(tmp_path / "b")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(root / "test" / "cat" / "small.png")
    with pytest.raises(D.DataError, match=r"small\.png: image is 28x28 RGB"):
        D.load_cifar10(root, use_cache=False)
    root = tiny_folder_tree(tmp_path / "c", mode="L")
    with pytest.raises(D.DataError, match="must be 32x32 RGB"):
        D.load_cifar10(root, use_cache=False)


def test_balanced_control_and_holdout_are_stratified():
    y = np.repeat(np.arange(10), 100)
    x = np.zeros((1000, 32, 32, 3), np.uint8)
    _, yb, kept = D.make_balanced(x, y, per_class=40)
    assert np.bincount(yb).tolist() == [40] * 10 and np.array_equal(kept, D.make_balanced(x, y, per_class=40)[2])
    (xt, yt), (xv, yv) = D.train_val_split(x, y, val_fraction=0.3)
    assert np.bincount(yv).tolist() == [30] * 10 and len(yt) == 700


def test_scaling_uses_training_statistics():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    stats = D.fit_scaling(x, "zscore")
    z = D.scale_images(x, stats)
    assert np.allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-4) and np.allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-3)
    assert np.allclose(D.scale_images(x, D.fit_scaling(x, "unit")), x / 255.0)
    with pytest.raises(D.DataError, match="unknown scaling 'minmax'; valid: unit, mean, zscore"):
        D.fit_scaling(x, "minmax")
    with pytest.raises(D.DataError, match="expected uint8 array of shape"):
        D.fit_scaling(x.astype(np.float32), "unit")


def test_class_weights_favour_rare_classes():
    y = np.array([0] * 100 + [1] * 50)
    inv = D.class_weights(y, "inverse")
    assert inv == pytest.approx({0: 150 / 200, 1: 150 / 100})
    eff = D.class_weights(y, "effective", beta=0.99)
    assert eff[1] > eff[0] and np.mean(list(eff.values())) == pytest.approx(1.0)
    with pytest.raises(D.DataError, match="valid: inverse, effective"):
        D.class_weights(y, "sqrt")


def test_the_pca_reference_is_exact_at_full_rank_and_worse_with_fewer_components():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("pca_reference", Path(__file__).parents[1] / "tools" / "pca_reference.py")
    pca = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pca)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 4, 4, 3), dtype=np.uint8)
    mse = pca.pca_test_mse(x, x[:16], [48, 8, 1])
    assert mse[48] < 1e-8 < mse[8] < mse[1]
