"""The fast path: a picklable batch augmenter for ``cifar_ae.batches.ArrayBatches(transform=...)``.

The policy runs op by op over the whole uint8 batch (``policies.run_policy_batch``): photometric ops through
their Pillow-exact numpy kernels (``augment.kernels``), geometric ops through Pillow's C resampler called
once per tile of a batch-sized image; then flip, pad-and-crop and cutout, vectorised.
ArrayBatches calls it inside its PyDataset worker threads (``workers=2``; numpy and Pillow release the GIL), so
augmentation runs beside training instead of in front of it.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .ops import FILL, check_rng
from .policies import get_policy, run_policy, run_policy_batch

PAD_MODES = {"reflect": "reflect", "zero": "constant"}  # our name -> np.pad mode
AUGMENTER_KEYS = ("policy", "flip", "translate", "pad_mode", "cutout", "vectorised")


def check_batch(images):
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"expected a uint8 batch of shape (B, H, W, 3), got {got}; "
                         "augment before scaling to float, e.g. in ArrayBatches(transform=...).")
    return images


def random_flip(images, rng):
    """Mirror each image left-right with probability 0.5."""
    flip = rng.random(len(images)) < 0.5
    out = images.copy()
    out[flip] = images[flip, :, ::-1]
    return out


def alternating_flip(images, indices, epoch, seed=0):
    """airbench's flip (Jordan 2024): each image's epoch-0 mirror is a seeded coin by its index, then it alternates
    every epoch, so over any two epochs every image is seen both ways (random flips repeat a side half the time)."""
    indices = np.asarray(indices, np.uint64)
    first = ((indices * np.uint64(2654435761) + np.uint64(seed)) >> np.uint64(15)) & np.uint64(1)
    flip = (first.astype(bool)) ^ bool(int(epoch) % 2)
    out = images.copy()
    out[flip] = images[flip, :, ::-1]
    return out


def pad_and_crop(images, pad, rng, pad_mode="reflect"):
    """Pad by ``pad`` px, then crop back at a random offset per image: a shift of up to +-pad px."""
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=PAD_MODES[pad_mode])
    top, left = rng.integers(0, 2 * pad + 1, size=(2, n))
    windows = sliding_window_view(padded, (h, w), axis=(1, 2))  # (n, 2p+1, 2p+1, C, h, w), a view
    # gathering whole windows is ~50x faster than fancy-indexing every pixel
    return np.ascontiguousarray(np.moveaxis(windows[np.arange(n), top, left], 1, -1))


def cutout(images, size, rng):
    """Grey out one ``size`` px square per image, centred anywhere, clipped at the border (DeVries & Taylor 2017)."""
    n, h, w = images.shape[:3]
    top = rng.integers(0, h, n)[:, None] - size // 2
    left = rng.integers(0, w, n)[:, None] - size // 2
    rows, cols = np.arange(h), np.arange(w)
    in_rows = (rows >= top) & (rows < top + size)  # (n, h)
    in_cols = (cols >= left) & (cols < left + size)  # (n, w)
    out = images.copy()
    out[in_rows[:, :, None] & in_cols[:, None, :]] = FILL
    return out


def apply_policy_batch(images, policy, rng):
    """The Pillow policy, image by image (``policy`` already validated): the reference for run_policy_batch."""
    out = images.copy()
    for i, img in enumerate(images):
        result = run_policy(img, policy, rng)
        if result is not img:  # untouched images (no op fired) skip the Pillow round trip
            out[i] = np.asarray(result)
    return out


class BatchAugmenter:
    """``(uint8 batch (B, H, W, 3), numpy Generator) -> uint8 batch``: policy, then pad-crop, flip, cutout.

    The order follows AutoAugment's CIFAR-10 training code. It holds no random state of its own: everything
    is drawn from the rng it is given, so ArrayBatches' (seed, epoch, batch) rng makes batches reproducible.
    policy: a name in ``augment.POLICIES``, a policy dict, or None for the base augmentation only.
    flip: True (random mirror), False, or "alternate" (`alternating_flip`: needs each image's index and the epoch,
    which ArrayBatches passes). translate: pad-and-crop shift in px (0 = off); pad_mode: 'reflect' or 'zero'.
    cutout: square side in px.
    vectorised: run the policy's ops as numpy kernels over the batch (default) or through Pillow per image.
    """

    def __init__(self, policy="autoaugment-cifar10", flip=True, translate=4, pad_mode="reflect", cutout=0,
                 vectorised=True):
        if pad_mode not in PAD_MODES:
            raise ValueError(f"unknown pad_mode {pad_mode!r}; valid: {', '.join(PAD_MODES)}.")
        for name, value in (("translate", translate), ("cutout", cutout)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a whole number of pixels >= 0, got {value!r}.")
        if flip not in (True, False, "alternate"):
            raise ValueError(f"flip must be True, False or 'alternate', got {flip!r}.")
        self.policy = policy
        self.rules = None if policy is None else get_policy(policy)
        self.flip = flip if flip == "alternate" else bool(flip)
        self.translate, self.pad_mode, self.cutout = int(translate), pad_mode, int(cutout)
        self.vectorised = bool(vectorised)  # False: the policy through Pillow image by image (slower, for comparison)

    @property
    def wants_indices(self):
        """ArrayBatches passes indices= and epoch= to an augmenter that wants them."""
        return self.flip == "alternate"

    def __call__(self, images, rng, indices=None, epoch=0):
        out = check_batch(images)
        check_rng(rng)
        if self.rules is not None:
            out = (run_policy_batch if self.vectorised else apply_policy_batch)(out, self.rules, rng)
        if self.translate:
            out = pad_and_crop(out, self.translate, rng, self.pad_mode)
        if self.flip == "alternate":
            if indices is None:
                raise ValueError("flip='alternate' needs each image's index and the epoch (ArrayBatches passes them).")
            out = alternating_flip(out, indices, epoch)
        elif self.flip:
            out = random_flip(out, rng)
        if self.cutout:
            out = cutout(out, self.cutout, rng)
        return out

    def __repr__(self):
        policy = self.policy if self.policy is None or isinstance(self.policy, str) else "<custom>"
        return (f"BatchAugmenter(policy={policy!r}, flip={self.flip}, translate={self.translate}, "
                f"pad_mode={self.pad_mode!r}, cutout={self.cutout}, vectorised={self.vectorised})")


def make_augmenter(config):
    """Trial config -> BatchAugmenter or None.

    None -> None (no augmentation); a policy name -> that policy with the default flip/translate;
    a dict with keys from AUGMENTER_KEYS, e.g. {"policy": "autoaugment-cifar10", "flip": True,
    "translate": 4, "cutout": 8}; a BatchAugmenter passes through.
    """
    if config is None or isinstance(config, BatchAugmenter):
        return config
    if isinstance(config, str):
        return BatchAugmenter(policy=config)
    if isinstance(config, dict):
        unknown = set(config) - set(AUGMENTER_KEYS)
        if unknown:
            raise ValueError(f"unknown augmentation keys {sorted(unknown)}; valid: {', '.join(AUGMENTER_KEYS)}.")
        return BatchAugmenter(**config)
    raise ValueError(f"augmentation config must be None, a policy name or a dict, got {type(config).__name__}.")
