"""CIFAR-10-C style corruptions (Hendrycks & Dietterich 2019) and Ruff et al.'s contrast normalisation.

`corrupt(x, name, severity)` maps uint8 images to uint8 images of the same shape, at severities 1-5 with the
parameters of make_cifar_c.py; Gaussian noise is seeded.
"""
from __future__ import annotations

import numpy as np

from .. import data as D

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg", "pixelate")
SEVERITIES = (1, 2, 3, 4, 5)

# Hendrycks & Dietterich 2019, make_cifar_c.py: the CIFAR-10-C parameter of each severity 1..5.
CORRUPTION_PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),   # noise std on [0, 1] images
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),         # blur std in pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),            # contrast factor about the image mean
    "jpeg": (80, 65, 58, 50, 40),                       # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),          # downscale factor before box upsampling
}


def corrupt(x, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """CIFAR-10-C style corruption of uint8 images (N, 32, 32, 3) at severity 1..5 -> uint8, same shape."""
    x = D.check_images(x, "corrupt")
    if name not in CORRUPTION_PARAMS:
        raise ValueError(f"unknown corruption '{name}'; valid: {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}.")
    c = CORRUPTION_PARAMS[name][severity - 1]
    if name == "gaussian_noise":
        noise = np.random.default_rng(seed).normal(scale=c, size=x.shape)
        return _to_uint8(x / 255.0 + noise)
    if name == "contrast":
        unit = x / 255.0
        means = unit.mean(axis=(1, 2, 3), keepdims=True)
        return _to_uint8((unit - means) * c + means)
    return np.stack([_corrupt_pil(img, name, c) for img in x])


def _to_uint8(unit):
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def _corrupt_pil(img, name, c):
    """The Pillow corruptions, one image at a time."""
    import io
    from PIL import Image, ImageFilter
    im = Image.fromarray(img)
    if name == "gaussian_blur":
        im = im.filter(ImageFilter.GaussianBlur(radius=c))  # Pillow's radius is the kernel's std
    elif name == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(c))
        buf.seek(0)
        im = Image.open(buf).convert("RGB")
    elif name == "pixelate":
        side = int(32 * c)
        im = im.resize((side, side), Image.BOX).resize((32, 32), Image.BOX)
    return np.asarray(im, dtype=np.uint8)


def global_contrast_normalize(x) -> np.ndarray:
    """Per image: subtract its mean, divide by its mean absolute deviation (L1 global contrast normalisation)."""
    x = D.check_images(x, "global_contrast_normalize").astype(np.float32)
    x -= x.mean(axis=(1, 2, 3), keepdims=True)
    return x / np.maximum(np.abs(x).mean(axis=(1, 2, 3), keepdims=True), 1e-3)


class ContrastNormalizer:
    """Ruff et al.'s one-class CIFAR-10 preprocessing, uint8 -> uint8: global contrast normalisation, then a
    rescale to [0, 255] with the 0.1 / 99.9 percentiles of the (normal) training images.

    Without it an image's brightness and contrast dominate every score: a smooth, low-contrast image of any
    class reconstructs well and has weak features, so it looks normal to a model of a busy class (automobile).
    """

    def fit(self, x_train, percentiles=(0.1, 99.9)):
        self.low, self.high = (float(v) for v in np.percentile(global_contrast_normalize(x_train), percentiles))
        return self

    def transform(self, x) -> np.ndarray:
        return _to_uint8((global_contrast_normalize(x) - self.low) / (self.high - self.low))
