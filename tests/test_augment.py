"""augment: ops, policies, the keras_preprocessing subclass, the fast path, errors.

Synthetic images, except the real-image test (runs when CIFAR10_DIR is set)."""
import os
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image

import augment
from augment import ops
from augment.fast import cutout, pad_and_crop, random_flip

# Ops that are the identity at magnitude 0 (all but the three that have no magnitude).
NOT_IDENTITY_AT_ZERO = {"AutoContrast", "Equalize", "Invert"}


@pytest.fixture(scope="module")
def images():
    """16 smooth-ish synthetic RGB images (gradients + noise), uint8 32x32x3."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([xx * 6, yy * 6, (xx + yy) * 3], -1)[None]
    noise = rng.integers(0, 60, (16, 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cifar_images():
    root = os.environ.get("CIFAR10_DIR")
    if not root:
        pytest.skip("set CIFAR10_DIR to run on real CIFAR-10 images")
    from cifar_ae.data import load_cifar10
    return load_cifar10(root).x_train[:32]


# --------------------------------------------------------------------------- ops

@pytest.mark.parametrize("name", list(augment.OPS))
def test_op_keeps_shape_dtype_and_is_seeded(images, name):
    for level in (0, 3.5, 10):
        a = augment.apply_op(images[0], name, level, np.random.default_rng(7))
        b = augment.apply_op(images[0], name, level, np.random.default_rng(7))
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    pil = augment.apply_op(Image.fromarray(images[0]), name, 5, np.random.default_rng(7))
    assert isinstance(pil, Image.Image) and pil.size == (32, 32)


@pytest.mark.parametrize("name", sorted(set(augment.OPS) - NOT_IDENTITY_AT_ZERO))
def test_magnitude_zero_is_identity(images, name):
    np.testing.assert_array_equal(augment.apply_op(images[1], name, 0, np.random.default_rng(0)), images[1])


@pytest.mark.parametrize("name", sorted(set(augment.OPS) - {"Identity"}))
def test_full_magnitude_changes_image(images, name):
    assert not np.array_equal(augment.apply_op(images[2], name, 10, np.random.default_rng(0)), images[2])


def test_wide_space_goes_further(images):
    std = augment.apply_op(images[3], "Rotate", 10, np.random.default_rng(1))
    wide = augment.apply_op(images[3], "Rotate", 10, np.random.default_rng(1), space="wide")
    assert not np.array_equal(std, wide)


def test_equalize_spreads_a_low_contrast_histogram():
    rng = np.random.default_rng(0)
    dull = rng.integers(100, 140, (32, 32, 3)).astype(np.uint8)  # values squeezed into 40 grey levels
    out = augment.apply_op(dull, "Equalize", 0, rng)
    assert np.ptp(out) > 3 * np.ptp(dull)
    assert out.std() > 3 * dull.std()
    coarse = lambda img: np.histogram(img, bins=8, range=(0, 256))[0]  # noqa: E731
    assert coarse(out).std() < coarse(dull).std() / 2  # flatter: mass spread over the whole range


def test_level_to_argument_conventions():
    rng = np.random.default_rng(0)
    assert abs(ops.op_argument("Rotate", 10, rng)) == pytest.approx(30)
    assert abs(ops.op_argument("ShearX", 5, rng)) == pytest.approx(0.15)
    assert abs(ops.op_argument("TranslateY", 10, rng)) * 32 == pytest.approx(150 / 331 * 32)
    assert abs(ops.op_argument("Contrast", 10, rng) - 1) == pytest.approx(0.9)
    assert ops.op_argument("Posterize", 10, rng) == 4 and ops.op_argument("Posterize", 10, rng, "wide") == 2
    assert ops.op_argument("Solarize", 0, rng) == 256 and ops.op_argument("Solarize", 10, rng) == 0
    assert ops.op_argument("Cutout", 10, rng)[0] == pytest.approx(0.2)
    signs = {np.sign(ops.op_argument("Rotate", 5, rng)) for _ in range(50)}
    assert signs == {-1.0, 1.0}


# --------------------------------------------------------------------------- policies

def augment_batch(batch, policy, seed):
    rng = np.random.default_rng(seed)
    return np.stack([augment.apply_policy(img, policy, rng) for img in batch])


@pytest.mark.parametrize("name", list(augment.POLICIES))
def test_policy_is_seeded(images, name):
    a, b = augment_batch(images, name, 3), augment_batch(images, name, 3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape and a.dtype == np.uint8
    assert not np.array_equal(a, augment_batch(images, name, 4))


def test_autoaugment_cifar10_table():
    subs = augment.POLICIES["autoaugment-cifar10"]["subpolicies"]
    assert len(subs) == 25 and all(len(sub) == 2 for sub in subs)
    for sub in subs:
        for name, prob, level in sub:
            assert name in augment.OPS and 0 <= prob <= 1 and 0 <= level <= 9


def test_policy_shapes():
    assert len(augment.randaugment(n=2)["subpolicies"]) == 14 ** 2
    assert augment.POLICIES["trivialaugment"]["space"] == "wide"
    study = augment.POLICIES["study"]["subpolicies"]
    assert [name for name, _, _ in study[0]] == ["Contrast", "Equalize", "Sharpness"]


def test_custom_policy_dict(images):
    policy = {"subpolicies": [[("Rotate", 1.0, 10)]]}
    out = augment.apply_policy(images[0], policy, np.random.default_rng(0))
    assert not np.array_equal(out, images[0])


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("bad, message", [
    (np.zeros((32, 32, 3), np.float32), "uint8"),
    (np.zeros((32, 32, 4), np.uint8), "HxWx3"),
    (np.zeros((32, 32), np.uint8), "HxWx3"),
    (Image.new("L", (32, 32)), "RGB"),
    ([[0, 0, 0]], "numpy array or a PIL image"),
])
def test_bad_images_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        augment.apply_op(bad, "Rotate", 3, np.random.default_rng(0))


def test_bad_arguments_raise(images):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="out of range"):
        augment.apply_op(images[0], "Rotate", 11, rng)
    with pytest.raises(ValueError, match="out of range"):
        augment.apply_op(images[0], "Rotate", -1, rng)
    with pytest.raises(ValueError, match="valid ops: Identity, AutoContrast"):
        augment.apply_op(images[0], "Rotat", 3, rng)
    with pytest.raises(ValueError, match="valid policies: autoaugment-cifar10, randaugment"):
        augment.apply_policy(images[0], "autoaugment", rng)
    with pytest.raises(ValueError, match="unknown op 'Blur'"):
        augment.get_policy({"subpolicies": [[("Blur", 0.5, 3)]]})
    with pytest.raises(ValueError, match="numpy Generator"):
        augment.apply_op(images[0], "Rotate", 3, 0)
    with pytest.raises(ValueError, match="uint8 batch"):
        augment.BatchAugmenter("study")(images.astype(np.float32), rng)
    with pytest.raises(ValueError, match="unknown augmentation keys"):
        augment.make_augmenter({"policy": "study", "flips": True})


# --------------------------------------------------------------------------- keras_preprocessing subclass

STANDARD_ARGS = dict(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True)


def test_subclass_without_new_arguments_matches_parent(images):
    from keras_preprocessing.image import ImageDataGenerator as Parent
    x, y = images, np.arange(len(images))
    ours, theirs = augment.ImageDataGenerator(**STANDARD_ARGS), Parent(**STANDARD_ARGS)
    ours_it, theirs_it = ours.flow(x, y, batch_size=8, seed=11), theirs.flow(x, y, batch_size=8, seed=11)
    for _ in range(3):  # crosses an epoch boundary (16 images, batches of 8)
        (xa, ya), (xb, yb) = next(ours_it), next(theirs_it)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ours.random_transform(x[0].astype(np.float32), seed=5),
                                  theirs.random_transform(x[0].astype(np.float32), seed=5))


def test_subclass_with_new_arguments_changes_images(images):
    plain = augment.ImageDataGenerator(**STANDARD_ARGS)
    gen = augment.ImageDataGenerator(**STANDARD_ARGS, contrast_range=(0.3, 0.6), sharpness_range=(0.5, 1.5),
                                     equalize_prob=0.5)
    a = next(plain.flow(images, batch_size=16, shuffle=False, seed=2))
    b = next(gen.flow(images, batch_size=16, shuffle=False, seed=2))
    c = next(gen.flow(images, batch_size=16, shuffle=False, seed=2))
    assert b.shape == a.shape and b.dtype == np.float32
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(b, c)  # seeded
    policy_gen = augment.ImageDataGenerator(policy="autoaugment-cifar10")
    d = next(policy_gen.flow(images, batch_size=16, shuffle=False, seed=2))
    assert not np.array_equal(d, images.astype(np.float32))


def test_subclass_pil_ops_only_round_trip_is_exact(images):
    """Contrast factor exactly 1 -> the uint8 round trip must give back the same float pixels."""
    gen = augment.ImageDataGenerator(contrast_range=(1.0, 1.0))
    out = next(gen.flow(images, batch_size=16, shuffle=False, seed=0))
    np.testing.assert_array_equal(out, images.astype(np.float32))


def test_subclass_rejects_scaled_or_bad_input(images):
    gen = augment.ImageDataGenerator(contrast_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="raw pixel values in 0..255"):
        next(gen.flow(images.astype(np.float32) - 128, batch_size=4))
    with pytest.warns(UserWarning, match=r"values in \[0, 1\]"):
        next(gen.flow(images / 255.0, batch_size=4))
    with pytest.raises(ValueError, match="contrast_range"):
        augment.ImageDataGenerator(contrast_range=(1.5, 0.5))
    with pytest.raises(ValueError, match="valid policies"):
        augment.ImageDataGenerator(policy="auto")


def test_subclass_flow_from_directory(tmp_path, images):
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(images[i + (3 if label == "dog" else 0)]).save(tmp_path / label / f"{i}.png")
    gen = augment.ImageDataGenerator(horizontal_flip=True, contrast_range=(0.5, 1.5), equalize_prob=1.0)
    it = gen.flow_from_directory(str(tmp_path), target_size=(32, 32), batch_size=6, shuffle=False, seed=0)
    x, y = next(it)
    assert x.shape == (6, 32, 32, 3) and y.shape == (6, 2)
    plain = augment.ImageDataGenerator().flow_from_directory(str(tmp_path), target_size=(32, 32), batch_size=6,
                                                             shuffle=False)
    assert not np.array_equal(x, next(plain)[0])


def test_scipy_namespace_warning_is_silenced_narrowly(images):
    gen = augment.ImageDataGenerator(rotation_range=10)  # installs the filter
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        augment.generator.silence_scipy_namespace_warning()  # catch_warnings copied the filters; re-add on top
        gen.random_transform(images[0].astype(np.float32), seed=1)
        warnings.warn("unrelated", DeprecationWarning)
    messages = [str(w.message) for w in caught]
    assert not any("scipy.ndimage" in m for m in messages)
    assert "unrelated" in messages


def tiny_model(loss="sparse_categorical_crossentropy"):
    import keras
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, strides=4),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", loss)
    return model


def test_subclass_works_with_model_fit(images):
    gen = augment.ImageDataGenerator(rescale=1 / 255, horizontal_flip=True, contrast_range=(0.7, 1.3))
    history = tiny_model().fit(gen.flow(images, np.arange(16) % 10, batch_size=8, seed=0), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# --------------------------------------------------------------------------- fast path

def test_batch_augmenter_seeded_and_picklable(images):
    aug = augment.BatchAugmenter("autoaugment-cifar10", translate=4, cutout=8)
    clone = pickle.loads(pickle.dumps(aug))
    a, b = aug(images, np.random.default_rng(1)), clone(images, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape and a.dtype == np.uint8
    assert not np.array_equal(a, aug(images, np.random.default_rng(2)))


def test_vectorised_base_ops(images):
    rng = np.random.default_rng(0)
    flipped = random_flip(images, rng)
    for src, out in zip(images, flipped):
        assert np.array_equal(out, src) or np.array_equal(out, src[:, ::-1])
    shifted = pad_and_crop(images, 4, rng, "zero")
    assert shifted.shape == images.shape
    assert pad_and_crop(images, 0, rng).tobytes() == images.tobytes()
    cut = cutout(images, 8, rng)
    changed = (cut != images).any(-1).sum((1, 2))
    assert changed.max() <= 64 and (cut[(cut != images).any(-1)] == 128).all()


@pytest.mark.parametrize("space", ops.SPACES)
@pytest.mark.parametrize("name", [n for n in ops.OPS if ops.OPS[n].batch is not None])
def test_numpy_kernel_matches_pillow_exactly(images, name, space):
    """The fast path's kernel gives Pillow's pixels, for every level in 0..10 and random signs."""
    rng = np.random.default_rng(3)
    x = np.concatenate([images, images[:, ::-1]])[:22]  # 22 images: every level 0..10 twice
    args = [ops.op_argument(name, level % 11, rng, space) for level in range(len(x))]
    pillow = np.stack([np.asarray(ops.OPS[name].fn(Image.fromarray(img), arg)) for img, arg in zip(x, args)])
    out = ops.run_op_batch(x, name, args)
    assert out.dtype == np.uint8 and out.shape == x.shape
    np.testing.assert_array_equal(out, pillow)


def test_kernels_on_edge_cases():
    """Flat, two-valued and saturated images: the branches where Pillow leaves a channel unchanged."""
    flat = np.full((1, 32, 32, 3), 77, np.uint8)
    two = np.where(np.arange(32)[None, :, None, None] < 16, 10, 200).astype(np.uint8).repeat(32, 2).repeat(3, 3)
    two = two.transpose(0, 2, 1, 3).copy()
    extremes = np.zeros((1, 32, 32, 3), np.uint8)
    extremes[0, ::2] = 255
    for x in (flat, two, extremes):
        for name in ("Equalize", "AutoContrast", "Contrast", "Sharpness", "Solarize"):
            arg = {"Contrast": 1.7, "Sharpness": 1.7, "Solarize": 128.0}.get(name)
            expected = np.asarray(ops.OPS[name].fn(Image.fromarray(x[0]), arg))
            np.testing.assert_array_equal(ops.run_op_batch(x, name, [arg])[0], expected, err_msg=name)


def test_batched_affine_matches_pillow_at_special_angles_and_shapes(images):
    """Pillow short-cuts 0/90/180/270 degrees and reduces angles mod 360; non-square, non-contiguous input."""
    x = images[:, 4:28, ::-1]  # 24x32 views
    for degrees in (0, 90, 180, 270, -90, 360, 45, -12.5, 400):
        expected = np.stack([np.asarray(ops.rotate(Image.fromarray(np.ascontiguousarray(img)), degrees)) for img in x])
        np.testing.assert_array_equal(ops.run_op_batch(x, "Rotate", [degrees] * len(x)), expected, err_msg=degrees)
    np.testing.assert_array_equal(ops.run_op_batch(x[:1], "TranslateY", [0.5]),
                                  np.asarray(ops.translate_y(Image.fromarray(np.ascontiguousarray(x[0])), 0.5))[None])


def test_vectorised_policy_matches_pillow_path_when_it_draws_nothing(images):
    """Steps that always fire at fixed levels and draw no sign: every image gets exactly one of its two
    sub-policies' Pillow results, on both paths, and with one sub-policy the paths agree pixel for pixel."""
    subpolicies = [[("Equalize", 1.0, 0), ("Posterize", 1.0, 6), ("AutoContrast", 1.0, 0)],
                   [("Solarize", 1.0, 4), ("Invert", 1.0, 0)]]
    expected = [[np.asarray(augment.apply_policy(img, {"subpolicies": [sub]}, np.random.default_rng(0)))
                 for sub in subpolicies] for img in images]
    for vectorised in (True, False):
        aug = augment.BatchAugmenter({"subpolicies": subpolicies}, flip=False, translate=0, vectorised=vectorised)
        for out, options in zip(aug(images, np.random.default_rng(5)), expected):
            assert any(np.array_equal(out, option) for option in options)
        one = augment.BatchAugmenter({"subpolicies": subpolicies[:1]}, flip=False, translate=0, vectorised=vectorised)
        np.testing.assert_array_equal(one(images, np.random.default_rng(0)), np.stack([e[0] for e in expected]))


def test_vectorised_policy_fires_ops_at_their_probabilities(cifar_images):
    """Same rule as the Pillow path: 'study' changes ~1-(1/2)^3 of images with p=0.5 per op (some draws are no-ops)."""
    x = np.concatenate([cifar_images] * 16)  # 512 images
    out = augment.BatchAugmenter("study", flip=False, translate=0)(x, np.random.default_rng(0))
    ref = augment.BatchAugmenter("study", flip=False, translate=0, vectorised=False)(x, np.random.default_rng(0))
    changed, ref_changed = (out != x).any(axis=(1, 2, 3)).mean(), (ref != x).any(axis=(1, 2, 3)).mean()
    assert abs(changed - ref_changed) < 0.08 and 0.6 < changed < 0.95, (changed, ref_changed)


def test_op_without_kernel_falls_back_to_pillow(images, monkeypatch):
    monkeypatch.setitem(ops.OPS, "Mirror", ops.Op(lambda img, _: img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                                                   ops._no_arg))
    out = augment.BatchAugmenter({"subpolicies": [[("Mirror", 1.0, 0)]]}, flip=False, translate=0)(
        images, np.random.default_rng(0))
    np.testing.assert_array_equal(out, images[:, :, ::-1])


def test_make_augmenter_from_config():
    assert augment.make_augmenter(None) is None
    aug = augment.make_augmenter({"policy": "autoaugment-cifar10", "flip": True, "translate": 4, "cutout": 8})
    assert (aug.policy, aug.flip, aug.translate, aug.cutout) == ("autoaugment-cifar10", True, 4, 8)
    assert augment.make_augmenter("study").policy == "study"
    assert augment.make_augmenter({"policy": None}).rules is None


def test_batch_augmenter_in_array_batches_with_model_fit(images):
    from cifar_ae.batches import ArrayBatches
    x = np.concatenate([images] * 16)  # 256 images
    y = np.arange(len(x)) % 10
    data = ArrayBatches(x, y, batch_size=64, transform=augment.make_augmenter("study"), seed=0,
                        workers=2, use_multiprocessing=True)
    xb, yb = data[0]
    assert xb.shape == (64, 32, 32, 3) and xb.dtype == np.float32
    history = tiny_model().fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# --------------------------------------------------------------------------- real images and figures

def test_real_images_through_every_policy(cifar_images):
    for name in augment.POLICIES:
        out = augment.BatchAugmenter(name, cutout=8)(cifar_images, np.random.default_rng(0))
        assert out.shape == cifar_images.shape and out.dtype == np.uint8
        changed = (out != cifar_images).any(axis=(1, 2, 3))
        assert changed.mean() > 0.5, name  # flip/crop/cutout alone change nearly every image


def test_figures_render(images):
    fig = augment.plot_ops(images[:2], magnitudes=(0, 10), ops=["Rotate", "Equalize"])
    assert len(fig.axes) == 3 * 4  # original row + 2 ops, 2 images x 2 magnitudes
    fig = augment.plot_policy_samples(images[:2], "study", n=3)
    assert len(fig.axes) == 2 * 4  # 2 images x (original + 3 samples)
