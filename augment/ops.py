"""Pillow image operations in one registry, and the mapping from a magnitude level to each op's argument.

``OPS[name] = Op(fn, to_arg, max_value, wide_max, batch)``: ``fn(pil_image, arg) -> pil_image`` does the work;
``to_arg(level, max_value, rng) -> arg`` maps a level in 0..MAX_LEVEL linearly onto the op's range
(``max_value`` for the AutoAugment/CIFAR-10 space, ``wide_max`` for TrivialAugment-wide); ``batch`` is the same op
over a whole uint8 batch (``augment.kernels``: numpy, or Pillow's core resampler for the geometric ops; optional:
without it the fast path runs ``fn`` image by image). Adding an op is one entry.
The table of ranges is in the package docstring (``help(augment)``).
"""
from __future__ import annotations

from numbers import Real
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from . import kernels as K

MAX_LEVEL = 10  # AutoAugment's magnitude scale; policies with finer bins rescale onto it
SPACES = ("standard", "wide")  # AutoAugment/torchvision CIFAR-10 ranges; TrivialAugment-wide ranges
FILL = (128, 128, 128)  # mid-grey for pixels uncovered by geometric ops and cutout (AutoAugment's choice)
RESAMPLE = Image.Resampling.BILINEAR  # smoother than nearest at 32 px; still exact identity at level 0


# --------------------------------------------------------------------------- ops: (PIL image, arg) -> PIL image

def identity(img, _):
    return img


def auto_contrast(img, _):
    return ImageOps.autocontrast(img)


def equalize(img, _):
    return ImageOps.equalize(img)


def invert(img, _):
    return ImageOps.invert(img)


def contrast(img, factor):
    return ImageEnhance.Contrast(img).enhance(factor)


def brightness(img, factor):
    return ImageEnhance.Brightness(img).enhance(factor)


def color(img, factor):
    return ImageEnhance.Color(img).enhance(factor)


def sharpness(img, factor):
    return ImageEnhance.Sharpness(img).enhance(factor)


def posterize(img, bits):
    return ImageOps.posterize(img, bits)


def solarize(img, threshold):
    return ImageOps.solarize(img, threshold)


def rotate(img, degrees):
    return img.rotate(degrees, resample=RESAMPLE, fillcolor=FILL)


def _affine(img, matrix):
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=RESAMPLE, fillcolor=FILL)


def shear_x(img, shear):
    return _affine(img, (1, shear, 0, 0, 1, 0))  # about the top-left corner, as AutoAugment and torchvision do


def shear_y(img, shear):
    return _affine(img, (1, 0, 0, shear, 1, 0))


def translate_x(img, fraction):
    return _affine(img, (1, 0, fraction * img.width, 0, 1, 0))  # relative to size, so any resolution works


def translate_y(img, fraction):
    return _affine(img, (1, 0, 0, 0, 1, fraction * img.height))


def cutout(img, box):
    """box = (side, centre_x, centre_y) as fractions of the image size; the square is clipped at the border."""
    side, cx, cy = box
    side_px = round(side * min(img.size))
    if side_px == 0:
        return img
    x0, y0 = round(cx * img.width) - side_px // 2, round(cy * img.height) - side_px // 2
    out = img.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, x0 + side_px - 1, y0 + side_px - 1), fill=FILL)
    return out


# --------------------------------------------------------------------------- level -> argument: (level, max_value, rng)

def _no_arg(level, max_value, rng):
    return None


def _random_sign(value, rng):
    return -value if rng.random() < 0.5 else value


def _signed(level, max_value, rng):
    return _random_sign(level / MAX_LEVEL * max_value, rng)


def _enhance_factor(level, max_value, rng):
    return 1.0 + _signed(level, max_value, rng)  # 1 +- 0.9 m/10: 0.1..1.9, 1.0 (identity) at level 0


def _posterize_bits(level, max_value, rng):
    return 8 - round(level / MAX_LEVEL * max_value)  # max_value = bits removed: 8 bits (identity) .. 4


def _solarize_threshold(level, max_value, rng):
    return 256 - level / MAX_LEVEL * max_value  # 256 inverts nothing (identity), 0 inverts everything


def _cutout_box(level, max_value, rng):
    return (level / MAX_LEVEL * max_value, rng.random(), rng.random())


# --------------------------------------------------------------------------- the registry

class Op(NamedTuple):
    fn: Callable  # (PIL image, arg) -> PIL image
    to_arg: Callable  # (level, max_value, rng) -> arg
    max_value: float | None = None  # AutoAugment / torchvision CIFAR-10 range at level 10
    wide_max: float | None = None  # TrivialAugment-wide range at level 10
    batch: Callable | None = None  # (uint8 batch, [arg per image]) -> uint8 batch, Pillow-exact (augment.kernels)


OPS = {
    "Identity": Op(identity, _no_arg, batch=K.identity),
    "AutoContrast": Op(auto_contrast, _no_arg, batch=K.auto_contrast),
    "Equalize": Op(equalize, _no_arg, batch=K.equalize),
    "Invert": Op(invert, _no_arg, batch=K.invert),
    "Contrast": Op(contrast, _enhance_factor, 0.9, 0.99, K.contrast),
    "Brightness": Op(brightness, _enhance_factor, 0.9, 0.99, K.brightness),
    "Color": Op(color, _enhance_factor, 0.9, 0.99, K.color),
    "Sharpness": Op(sharpness, _enhance_factor, 0.9, 0.99, K.sharpness),
    "Posterize": Op(posterize, _posterize_bits, 4, 6, K.posterize),
    "Solarize": Op(solarize, _solarize_threshold, 256, 256, K.solarize),
    "Rotate": Op(rotate, _signed, 30.0, 135.0, K.rotate),
    "ShearX": Op(shear_x, _signed, 0.3, 0.99, K.shear_x),
    "ShearY": Op(shear_y, _signed, 0.3, 0.99, K.shear_y),
    "TranslateX": Op(translate_x, _signed, 150 / 331, 1.0, K.translate_x),  # wide: 32 px of 32
    "TranslateY": Op(translate_y, _signed, 150 / 331, 1.0, K.translate_y),
    "Cutout": Op(cutout, _cutout_box, 0.2, 0.2, K.cutout),
}


# --------------------------------------------------------------------------- validation and application

def get_op(name) -> Op:
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(OPS)}.")
    return OPS[name]


def check_level(level):
    if isinstance(level, bool) or not isinstance(level, Real) or not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"magnitude {level!r} out of range; use a number in 0..{MAX_LEVEL} "
                         "(finer bins, e.g. RandAugment's 0..30, rescale onto it).")
    return level


def check_space(space):
    if space not in SPACES:
        raise ValueError(f"unknown magnitude space {space!r}; valid: {', '.join(SPACES)}.")
    return space


def check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator, got {type(rng).__name__}; pass np.random.default_rng(seed).")
    return rng


def to_pil(img) -> Image.Image:
    """A uint8 HxWx3 array or an RGB PIL image -> RGB PIL image; anything else raises a one-line ValueError."""
    if isinstance(img, Image.Image):
        if img.mode != "RGB":
            raise ValueError(f"expected an RGB PIL image, got mode {img.mode!r}; convert with img.convert('RGB').")
        return img
    if not isinstance(img, np.ndarray):
        raise ValueError(f"expected a uint8 HxWx3 numpy array or a PIL image, got {type(img).__name__}.")
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {img.dtype}; convert with "
                         "np.clip(x, 0, 255).round().astype(np.uint8) (multiply by 255 first if x is in [0, 1]).")
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {img.shape}; "
                         "drop alpha with x[..., :3], or repeat a grey channel 3 times.")
    return Image.fromarray(img)


def like_input(out: Image.Image, img):
    """Return the same kind of image the caller passed in (array in -> writable array out)."""
    return np.array(out) if isinstance(img, np.ndarray) else out


def op_argument(name, level, rng, space="standard"):
    """The argument op ``name`` gets at ``level`` (already validated), drawing any random sign from ``rng``."""
    op = OPS[name]
    return op.to_arg(level, op.max_value if space == "standard" else op.wide_max, rng)


def run_op(img: Image.Image, name, level, rng, space="standard") -> Image.Image:
    """Apply a registered op to a PIL image without re-validating (the per-image hot path)."""
    return OPS[name].fn(img, op_argument(name, level, rng, space))


def run_op_batch(images, name, args):
    """Apply a registered op to a uint8 batch, image i with args[i]: its batch kernel, else Pillow per image."""
    op = OPS[name]
    if op.batch is not None:
        return op.batch(images, args)
    return np.stack([np.asarray(op.fn(Image.fromarray(img), arg)) for img, arg in zip(images, args)])


def apply_op(img, name, level, rng, space="standard"):
    """Apply op ``name`` at magnitude ``level`` (0..10) to a uint8 HxWx3 array or RGB PIL image."""
    get_op(name), check_level(level), check_space(space), check_rng(rng)
    return like_input(run_op(to_pil(img), name, level, rng, space), img)
