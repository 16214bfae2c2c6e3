"""The registry's ops in numpy, on a whole uint8 batch at once: the fast path's kernels.

Each kernel is ``(images (k, H, W, 3) uint8, args: sequence of k arguments) -> new (k, H, W, 3) uint8``,
where ``args[i]`` is what the Pillow op in ``augment.ops`` would get for image ``i``. They reproduce Pillow's
arithmetic (its grey conversion, blend truncation, SMOOTH filter, equalize and autocontrast tables, affine
pixel centres and bilinear sampling), so a policy means the same thing on both paths; ``tests/test_augment.py``
compares every kernel with its Pillow op. Per image the Pillow path costs ~100 us of Python and C round trips;
here a batch of 128 costs about as much as a handful of images did.
"""
from __future__ import annotations

import math

import numpy as np

FILL = 128  # mid-grey, as augment.ops.FILL


def _column(args, k):
    """k scalar arguments -> float64 array shaped (k, 1, 1, 1) to broadcast over images."""
    return np.asarray(args, dtype=np.float64).reshape(k, 1, 1, 1)


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
    return _blend(np.float32(0), images, _column(args, len(images)).astype(np.float32))


def color(images, args):
    return _blend(grey(images)[..., None].astype(np.float32), images, _column(args, len(images)).astype(np.float32))


def contrast(images, args):
    mean = np.floor(grey(images).mean(axis=(1, 2), dtype=np.float64) + 0.5)  # int(mean + 0.5), as Pillow
    return _blend(mean.reshape(-1, 1, 1, 1).astype(np.float32), images,
                  _column(args, len(images)).astype(np.float32))


def smooth(images):
    """Pillow's ImageFilter.SMOOTH: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13, rounded; border pixels unchanged."""
    x = images.astype(np.float32)
    total = 4 * x[:, 1:-1, 1:-1]  # centre weight 5 = 1 (in the 3x3 sum below) + 4
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total = total + x[:, dy:dy + x.shape[1] - 2, dx:dx + x.shape[2] - 2]
    out = images.copy()
    out[:, 1:-1, 1:-1] = np.clip(total / np.float32(13) + np.float32(0.5), 0, 255).astype(np.uint8)
    return out


def sharpness(images, args):
    return _blend(smooth(images).astype(np.float32), images, _column(args, len(images)).astype(np.float32))


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


def affine(images, matrices):
    """Pillow's Image.transform(AFFINE, matrix, BILINEAR, fillcolor=grey) for each image's own matrix.

    matrices (k, 6): output pixel centre (x + .5, y + .5) samples input point (a x + b y + c, d x + e y + f);
    points outside the image get the fill, others are interpolated between the clamped neighbours, truncated.
    """
    k, h, w = images.shape[:3]
    m = np.asarray(matrices, dtype=np.float64).reshape(k, 6, 1, 1)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    xin = m[:, 0] * xx + m[:, 1] * yy + m[:, 2]  # (k, h, w)
    yin = m[:, 3] * xx + m[:, 4] * yy + m[:, 5]
    outside = (xin < 0) | (xin >= w) | (yin < 0) | (yin >= h)
    xin, yin = xin - 0.5, yin - 0.5
    x0, y0 = np.floor(xin), np.floor(yin)
    dx, dy = xin - x0, yin - y0
    x0, y0 = x0.astype(np.intp), y0.astype(np.intp)
    xa, xb = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    row = (np.arange(k) * (h * w)).reshape(k, 1, 1)
    ya, yb = row + np.clip(y0, 0, h - 1) * w, row + np.clip(y0 + 1, 0, h - 1) * w
    planes = np.moveaxis(images, -1, 0).reshape(3, -1)  # channel planes: every step below runs on long rows

    def gather(index):  # np.take along one axis is ~10x faster than planes[:, index]
        return np.take(planes, index.ravel(), axis=1).reshape(3, k, h, w).astype(np.float64)
    top, top_b = gather(ya + xa), gather(ya + xb)
    top += (top_b - top) * dx
    bottom, bottom_b = gather(yb + xa), gather(yb + xb)
    bottom += (bottom_b - bottom) * dx
    top += (bottom - top) * dy  # the same operations, in doubles, as Pillow's BILINEAR macro
    out = np.moveaxis(top.astype(np.uint8), 0, -1).copy()
    out[outside] = FILL
    return out


def _matrices(values, column):
    """Identity affine matrices, one per value, with entry `column` (0..5 = a..f) set to it."""
    values = np.asarray(values, dtype=np.float64)
    m = np.tile(np.array([1.0, 0, 0, 0, 1.0, 0]), (len(values), 1))
    m[:, column] = values
    return m


def shear_x(images, args):
    return affine(images, _matrices(args, 1))  # about the top-left corner, as augment.ops.shear_x


def shear_y(images, args):
    return affine(images, _matrices(args, 3))


def translate_x(images, args):
    return affine(images, _matrices(np.asarray(args, dtype=np.float64) * images.shape[2], 2))


def translate_y(images, args):
    return affine(images, _matrices(np.asarray(args, dtype=np.float64) * images.shape[1], 5))


def rotation_matrix(degrees, width, height):
    """Pillow's Image.rotate matrix (about the centre, no expand), rounded to 15 places as Pillow does."""
    angle = -math.radians(degrees % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = width / 2, height / 2
    return (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy)


def rotate(images, args):
    k, h, w = images.shape[:3]
    out = affine(images, np.array([rotation_matrix(deg, w, h) for deg in args]).reshape(k, 6))
    # Pillow returns an exact copy at 0 degrees and transposes at 90/180/270 (square images): no resampling
    for i, deg in enumerate(args):
        quarter = (deg % 360.0) / 90.0
        if quarter == int(quarter):
            out[i] = np.rot90(images[i], k=int(quarter), axes=(0, 1))
    return out


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
