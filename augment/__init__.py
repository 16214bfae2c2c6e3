"""Image augmentation for the CIFAR-10 study: Pillow ops, policies as data, a keras_preprocessing generator,
a fast batch augmenter for ``cifar_ae.batches.ArrayBatches``, and figures.

    import augment
    augment.apply_op(img, "Rotate", 6, rng)                  # one op at magnitude level 6 of 10
    augment.apply_policy(img, "autoaugment-cifar10", rng)    # one image, any registered policy
    gen = augment.ImageDataGenerator(rotation_range=15, horizontal_flip=True,
                                     contrast_range=(0.6, 1.4), equalize_prob=0.5)   # notebook path
    ArrayBatches(x, y, transform=augment.BatchAugmenter("study"), workers=2)  # fast path (threads)

Images are uint8 HxWx3 arrays or RGB PIL images; randomness always comes from a passed numpy Generator.

Magnitudes
----------
Every op maps a level ``m`` in 0..10 linearly onto its range (AutoAugment's convention, arXiv 1805.09501;
ranges from torchvision's CIFAR-10 ``_augmentation_space``). "+-" ops take a random sign from the rng.
The "wide" column is TrivialAugment-wide's space (policies with ``"space": "wide"``).

=============  ===================================  =====================  ================  ==============
op             argument at level m                  standard range         wide range        identity at 0
=============  ===================================  =====================  ================  ==============
Identity       -                                    -                      -                 yes
AutoContrast   -                                    -                      -                 no
Equalize       - (histogram equalization)           -                      -                 no
Invert         -                                    -                      -                 no
Contrast       factor 1 +- 0.9 m/10                 0.1 .. 1.9             0.01 .. 1.99      yes
Brightness     factor 1 +- 0.9 m/10                 0.1 .. 1.9             0.01 .. 1.99      yes
Color          factor 1 +- 0.9 m/10                 0.1 .. 1.9             0.01 .. 1.99      yes
Sharpness      factor 1 +- 0.9 m/10                 0.1 .. 1.9             0.01 .. 1.99      yes
Posterize      bits kept 8 - round(4 m/10)          8 .. 4 bits            8 .. 2 bits       yes
Solarize       threshold 256 - 256 m/10             256 .. 0               256 .. 0          yes
Rotate         degrees +- 30 m/10                   -30 .. 30              -135 .. 135       yes
ShearX/Y       shear +- 0.3 m/10                    -0.3 .. 0.3            -0.99 .. 0.99     yes
TranslateX/Y   +- (150/331) m/10 of the image size  +-14.5 px at 32 px     +-32 px at 32     yes
Cutout         square side 0.2 m/10 of the size     0 .. 6.4 px at 32 px   same              yes
=============  ===================================  =====================  ================  ==============

Geometric ops resample bilinearly and fill uncovered pixels with mid-grey (128); shear is about the top-left
corner (as in AutoAugment). Cutout's 0..0.2 of the size follows the issue (AutoAugment's search space had
0..20 px); AutoAugment's CIFAR-10 training added a fixed 16 px cutout after the policy: ``BatchAugmenter(cutout=16)``.

Policies (``POLICIES``): "autoaugment-cifar10" (the paper's 25 sub-policies), "randaugment" (N=2, M=9 of 31
bins, torchvision's defaults; ``randaugment(n, m)`` for others), "trivialaugment" (TrivialAugment-wide),
"study" (Contrast, Equalize, Sharpness, each with probability 0.5 at a random level).
"""
from .fast import BatchAugmenter, make_augmenter
from .ops import MAX_LEVEL, OPS, apply_op
from .policies import (POLICIES, apply_policy, check_policy, each_with_probability, get_policy, randaugment,
                       trivialaugment)

__all__ = ["MAX_LEVEL", "OPS", "apply_op", "POLICIES", "apply_policy", "check_policy", "get_policy",
           "randaugment", "trivialaugment", "each_with_probability", "BatchAugmenter", "make_augmenter",
           "ImageDataGenerator", "plot_ops", "plot_policy_samples"]

# Loaded on first use: the generator imports keras (TensorFlow) and the figures matplotlib; ops, policies and the
# fast path need only numpy and Pillow, which keeps `import augment` quick in worker processes.
_LAZY = {"ImageDataGenerator": "generator", "plot_ops": "figures", "plot_policy_samples": "figures"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'augment' has no attribute {name!r}")
