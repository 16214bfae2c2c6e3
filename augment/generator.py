"""keras_preprocessing's ImageDataGenerator, plus Pillow ops as constructor arguments.

    gen = augment.ImageDataGenerator(rotation_range=15, width_shift_range=0.1, horizontal_flip=True,
                                     contrast_range=(0.6, 1.4), sharpness_range=(0.5, 1.5), equalize_prob=0.5)
    model.fit(gen.flow(x_train, y_train, batch_size=128), epochs=10)

New arguments draw their parameters in ``get_random_transform`` after the parent's draws, from the same global
``np.random`` state the iterators seed, and only when set; so without them the output is the parent's, exactly.
``apply_transform`` runs the Pillow ops first, on the raw 0..255 image (rounded to uint8 and back), then the
parent's affine/flip/brightness; ``rescale`` and ``preprocessing_function`` still run afterwards, in ``standardize``.
"""
from __future__ import annotations

import warnings

import keras
import numpy as np
from keras_preprocessing import image as kp_image
from PIL import Image

from .ops import OPS
from .policies import get_policy, run_policy


def silence_scipy_namespace_warning():
    """keras_preprocessing 1.1.2 calls ``scipy.ndimage.interpolation.affine_transform``, which warns once per image
    that the namespace is deprecated. Ignore only that message, only from that module."""
    warnings.filterwarnings("ignore", message=r"Please import `affine_transform` from the `scipy\.ndimage` namespace",
                            category=DeprecationWarning, module=r"keras_preprocessing\.image\.affine_transformations")


silence_scipy_namespace_warning()


def _check_factor_range(name, value):
    if value is None:
        return None
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and v >= 0 for v in value) or value[0] > value[1]):
        raise ValueError(f"{name} must be (low, high) enhancement factors with 0 <= low <= high "
                         f"(1.0 = unchanged), got {value!r}.")
    return tuple(float(v) for v in value)


def _as_pydataset(iterator):
    """keras_preprocessing's iterators add keras.utils.Sequence (Keras 3: PyDataset) to their bases in ``__new__``,
    which is why Keras 3 ``fit`` accepts them, but never call its ``__init__``, so fit warns. Initialise it here
    (one worker, in-process: the per-image draws share np.random's global state)."""
    if isinstance(iterator, keras.utils.PyDataset):
        keras.utils.PyDataset.__init__(iterator)
    return iterator


def to_uint8(x):
    """Raw float image -> uint8, rounding rather than truncating so integer-valued pixels survive the round trip."""
    if x.min() < 0 or x.max() > 255:
        raise ValueError(f"Pillow ops need raw pixel values in 0..255, got {x.min():.3g}..{x.max():.3g}; "
                         "pass unscaled images to flow and scale with rescale= or preprocessing_function=.")
    if 0 < x.max() <= 1:
        warnings.warn("Pillow ops got an image with values in [0, 1]; they expect 0..255. Pass unscaled images "
                      "to flow and scale with rescale=1/255.", UserWarning, stacklevel=2)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


class ImageDataGenerator(kp_image.ImageDataGenerator):
    """``keras_preprocessing.image.ImageDataGenerator`` with Pillow ops (all keyword-only, all off by default).

    contrast_range, sharpness_range: (low, high) ImageEnhance factors drawn uniformly per image (1.0 = unchanged).
    equalize_prob: probability of histogram equalization per image.
    policy: a policy name (``augment.POLICIES``) or dict, applied per image after the ops above.
    Everything else is the parent's argument, with the parent's behaviour.
    """

    def __init__(self, *args, contrast_range=None, sharpness_range=None, equalize_prob=0.0, policy=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.contrast_range = _check_factor_range("contrast_range", contrast_range)
        self.sharpness_range = _check_factor_range("sharpness_range", sharpness_range)
        if not isinstance(equalize_prob, (int, float)) or not 0 <= equalize_prob <= 1:
            raise ValueError(f"equalize_prob must be a probability in 0..1, got {equalize_prob!r}.")
        self.equalize_prob = float(equalize_prob)
        self.policy = None if policy is None else get_policy(policy)
        silence_scipy_namespace_warning()  # again: warnings.catch_warnings (pytest, notebooks) may have reset it

    def uses_pil_ops(self):
        return bool(self.contrast_range or self.sharpness_range or self.equalize_prob or self.policy)

    def get_random_transform(self, img_shape, seed=None):
        params = super().get_random_transform(img_shape, seed)
        if self.uses_pil_ops():  # draw only when used, so the parent's random stream is untouched otherwise
            params["pil_ops"] = self._draw_pil_ops()
            params["policy_seed"] = np.random.randint(2**31) if self.policy else None
        return params

    def _draw_pil_ops(self):
        """[(op name, argument), ...] from np.random, which the iterators seed per batch."""
        steps = []
        if self.contrast_range:
            steps.append(("Contrast", np.random.uniform(*self.contrast_range)))
        if self.equalize_prob and np.random.random() < self.equalize_prob:
            steps.append(("Equalize", None))
        if self.sharpness_range:
            steps.append(("Sharpness", np.random.uniform(*self.sharpness_range)))
        return steps

    def apply_transform(self, x, transform_parameters):
        if transform_parameters.get("pil_ops") or transform_parameters.get("policy_seed") is not None:
            x = self._apply_pil_ops(x, transform_parameters)
        return super().apply_transform(x, transform_parameters)

    def _apply_pil_ops(self, x, params):
        channels_first = self.data_format == "channels_first"
        hwc = np.moveaxis(x, 0, -1) if channels_first else x
        if hwc.ndim != 3 or hwc.shape[-1] != 3:
            raise ValueError(f"Pillow ops need RGB images (3 channels), got an image of shape {x.shape}; "
                             "use color_mode='rgb' or drop the Pillow arguments.")
        img = Image.fromarray(to_uint8(hwc))
        for name, arg in params.get("pil_ops", ()):
            img = OPS[name].fn(img, arg)
        if params.get("policy_seed") is not None:
            img = run_policy(img, self.policy, np.random.default_rng(params["policy_seed"]))
        out = np.asarray(img).astype(x.dtype)
        return np.moveaxis(out, -1, 0) if channels_first else out

    def flow(self, *args, **kwargs):
        return _as_pydataset(super().flow(*args, **kwargs))

    def flow_from_directory(self, *args, **kwargs):
        return _as_pydataset(super().flow_from_directory(*args, **kwargs))

    def flow_from_dataframe(self, *args, **kwargs):
        return _as_pydataset(super().flow_from_dataframe(*args, **kwargs))
