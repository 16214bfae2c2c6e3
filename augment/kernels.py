"""The registry's ops in numpy, on a whole uint8 batch at once: the fast path's kernels.

Each kernel is ``(images (k, H, W, 3) uint8, args: sequence of k arguments) -> new (k, H, W, 3) uint8``,
where ``args[i]`` is what the Pillow op in ``augment.ops`` would get for image ``i``. They reproduce Pillow's
arithmetic (its grey conversion, blend truncation, SMOOTH filter, equalize and autocontrast tables) pixel for
pixel, so a policy means the same thing on both paths; ``tests/test_augment.py`` compares every kernel with its
Pillow op. Measured on 128 CIFAR-10 images, equalize costs ~50 us/image here against ~240 in Pillow, and the
blends 10-20 against 30-75, because one numpy call covers the batch.

The geometric ops (rotate, shear, translate) keep Pillow's own C resampler: an exact numpy port of its
bilinear affine (four gathers and three lerps per channel) measured 82 us/image against Pillow's 42. What
costs in Pillow is the Python around each call (fromarray, rotate's wrapper, asarray: ~2/3 of the time at
32 px), so ``affine`` wraps the whole batch in one image and calls Pillow's core transform once per tile.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

FILL = 128  # mid-grey, as augment.ops.FILL


def _factors(args):
    """k blend factors -> float32 array shaped (k, 1, 1, 1) to broadcast over images."""
    return np.asarray(args, dtype=np.float32).reshape(-1, 1, 1, 1)


def _blend(degenerate, images, factor):
    """Pillow's Image.blend(degenerate, image, factor): interpolation truncates, extrapolation clips then truncates."""
    out = degenerate + factor * (images.astype(np.float32) - degenerate)
    return np.clip(out, 0, 255).astype(np.uint8)  # astype truncates toward zero, as Pillow's (UINT8) cast


def grey(images):
    """Pillow's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded)."""
    x = images.astype(np.int32)
    return ((x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def identity(images, args):
    return images.copy()


def invert(images, args):
    return 255 - images


def posterize(images, args):
    bits = np.asarray(args, dtype=np.uint8).reshape(-1, 1, 1, 1)
    mask = (0xFF << (8 - bits)).astype(np.uint8)  # keep the top `bits` bits
    return images & mask


def solarize(images, args):
    threshold = np.asarray(args, dtype=np.float64).reshape(-1, 1, 1, 1)
    return np.where(images >= np.ceil(threshold).astype(np.int16), 255 - images, images)  # int compare: fast


def brightness(images, args):
    return _blend(np.float32(0), images, _factors(args))


def color(images, args):
    return _blend(grey(images)[..., None].astype(np.float32), images, _factors(args))


def contrast(images, args):
    mean = np.floor(grey(images).mean(axis=(1, 2), dtype=np.float64) + 0.5)  # int(mean + 0.5), as Pillow
    return _blend(mean.reshape(-1, 1, 1, 1).astype(np.float32), images,
                  _factors(args))


def smooth(images):
    """Pillow's ImageFilter.SMOOTH: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13, rounded; border pixels unchanged."""
    x = images.astype(np.uint16)  # 13 * 255 fits: integer sums are exact and half the memory of float32
    h, w = x.shape[1:3]
    total = 4 * x[:, 1:-1, 1:-1]  # centre weight 5 = 1 (in the 3x3 sum below) + 4
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total += x[:, dy:dy + h - 2, dx:dx + w - 2]
    out = images.copy()
    out[:, 1:-1, 1:-1] = (total * 2 + 13) // 26  # round(total / 13): 13 is odd, so there are no ties
    return out


def sharpness(images, args):
    return _blend(smooth(images).astype(np.float32), images, _factors(args))


def _histograms(images):
    """(k, 3, 256) per-image, per-channel histograms in one bincount."""
    k = len(images)
    channel = np.arange(k * 3).reshape(k, 1, 1, 3) * 256
    return np.bincount((images + channel).ravel(), minlength=k * 3 * 256).reshape(k, 3, 256)


def _apply_luts(images, luts):
    """luts (k, 3, 256) uint8 -> each image's channels mapped through their own table."""
    k = len(images)
    flat = luts.reshape(-1)
    index = images.astype(np.intp) + (np.arange(k * 3).reshape(k, 1, 1, 3) * 256)
    return flat[index]


def equalize(images, args):
    """Pillow's ImageOps.equalize per channel: lut[i] = (step // 2 + pixels below i) // step."""
    h = _histograms(images)
    last = np.take_along_axis(h, 255 - np.argmax(h[..., ::-1] > 0, axis=-1)[..., None], axis=-1)[..., 0]
    step = (h.sum(-1) - last) // 255
    below = np.cumsum(h, axis=-1) - h  # pixels with a smaller value
    keep = (step == 0) | ((h > 0).sum(-1) <= 1)  # Pillow leaves such channels unchanged
    safe = np.where(keep, 1, step)[..., None]
    lut = (safe // 2 + below) // safe
    lut = np.where(keep[..., None], np.arange(256), np.minimum(lut, 255))
    return _apply_luts(images, lut.astype(np.uint8))


def auto_contrast(images, args):
    """Pillow's ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] onto [0, 255]."""
    lo = images.min(axis=(1, 2)).astype(np.float64)[..., None]  # (k, 3, 1)
    hi = images.max(axis=(1, 2)).astype(np.float64)[..., None]
    flat = hi <= lo
    scale = 255.0 / np.where(flat, 1, hi - lo)
    lut = np.clip((np.arange(256) * scale + (-lo * scale)).astype(np.int64), 0, 255)  # int() truncates
    lut = np.where(flat, np.arange(256), lut)
    return _apply_luts(images, lut.astype(np.uint8))


def cutout(images, args):
    """args[i] = (side, centre_x, centre_y) as fractions of the size, as augment.ops.cutout."""
    out = images.copy()
    k, h, w = images.shape[:3]
    for i, (side, cx, cy) in enumerate(args):
        side_px = round(side * min(h, w))
        if side_px:
            x0, y0 = round(cx * w) - side_px // 2, round(cy * h) - side_px // 2
            out[i, max(y0, 0):max(y0 + side_px, 0), max(x0, 0):max(x0 + side_px, 0)] = FILL
    return out


# --------------------------------------------------------------------------- geometric: Pillow's resampler, batched

AFFINE, BILINEAR = Image.Transform.AFFINE.value, Image.Resampling.BILINEAR.value


def affine(images, matrices):
    """Pillow's ``img.transform(size, AFFINE, matrix, BILINEAR, fillcolor=FILL)`` for image i with matrices[i].

    One RGB image holds the batch stacked vertically; each tile is cropped into its own core image (so
    Pillow's edge clamping and out-of-bounds test see one 32x32 image, exactly as per image) and transformed
    into its rows of an output pre-filled with FILL. This uses Pillow's core objects (``Image.im``), which is
    why requirements.txt pins Pillow; tests compare every geometric op with the public per-image call.
    """
    k, h, w = images.shape[:3]
    src = Image.fromarray(np.ascontiguousarray(images).reshape(k * h, w, 3)).im
    out = Image.new("RGB", (w, k * h), (FILL,) * 3)
    core = out.im
    for i, matrix in enumerate(matrices):
        box = (0, i * h, w, (i + 1) * h)
        core.transform(box, src.crop(box), AFFINE, matrix, BILINEAR, 0)  # 0: keep the fill outside the source
    return np.asarray(out).reshape(images.shape).copy()


def rotate_matrix(degrees, w, h):
    """The inverse affine matrix of Pillow's ``Image.rotate(degrees)`` about the centre (its arithmetic, rounding included)."""
    a = -math.radians(degrees % 360.0)  # Pillow reduces the angle first, which changes the last bits of cos/sin
    cos, sin = round(math.cos(a), 15), round(math.sin(a), 15)
    cx, cy = w / 2, h / 2
    return (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)


def rotate(images, args):
    return affine(images, [rotate_matrix(a, images.shape[2], images.shape[1]) for a in args])


def shear_x(images, args):
    return affine(images, [(1, s, 0, 0, 1, 0) for s in args])


def shear_y(images, args):
    return affine(images, [(1, 0, 0, s, 1, 0) for s in args])


def translate_x(images, args):
    return affine(images, [(1, 0, f * images.shape[2], 0, 1, 0) for f in args])


def translate_y(images, args):
    return affine(images, [(1, 0, 0, 0, 1, f * images.shape[1]) for f in args])
