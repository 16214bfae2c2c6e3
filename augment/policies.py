"""Augmentation policies as plain data, and one function that applies any of them.

A policy is a dict::

    {"subpolicies": [[(op_name, probability, level_or_None), ...], ...],   # required
     "space": "standard" | "wide",   # which magnitude ranges (augment.ops); default "standard"
     "bins": 31}                     # a None level is drawn uniformly from this many bins over 0..10

Applying it picks one sub-policy uniformly, then runs each step with its probability. That single rule covers
AutoAugment (25 two-op sub-policies), RandAugment (every ordered N-tuple of ops at a fixed level: picking one
uniformly is the same as picking N ops with replacement), TrivialAugment (one op at a random level) and the
study's own policy (one sub-policy: each op with probability 0.5 at a random level).
"""
from __future__ import annotations

import itertools
from numbers import Real

import numpy as np
from PIL import Image

from .ops import MAX_LEVEL, check_level, check_rng, check_space, get_op, like_input, op_argument, run_op, run_op_batch, to_pil

DEFAULT_BINS = 31  # torchvision's num_magnitude_bins for RandAugment and TrivialAugment

# AutoAugment (Cubuk et al. 2018, arXiv 1805.09501), the policy found on reduced CIFAR-10: (op, probability, level).
# Levels are the paper's; AutoContrast, Equalize and Invert ignore theirs.
AUTOAUGMENT_CIFAR10 = [
    [("Invert", 0.1, 7), ("Contrast", 0.2, 6)],
    [("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)],
    [("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)],
    [("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)],
    [("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)],
    [("ShearY", 0.2, 7), ("Posterize", 0.3, 7)],
    [("Color", 0.4, 3), ("Brightness", 0.6, 7)],
    [("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)],
    [("Equalize", 0.6, 5), ("Equalize", 0.5, 1)],
    [("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)],
    [("Color", 0.7, 7), ("TranslateX", 0.5, 8)],
    [("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)],
    [("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)],
    [("Brightness", 0.9, 6), ("Color", 0.2, 8)],
    [("Solarize", 0.5, 2), ("Invert", 0.0, 3)],
    [("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)],
    [("Equalize", 0.2, 8), ("Equalize", 0.6, 4)],
    [("Color", 0.9, 9), ("Equalize", 0.6, 6)],
    [("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)],
    [("Brightness", 0.1, 3), ("Color", 0.7, 0)],
    [("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)],
    [("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)],
    [("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)],
    [("Equalize", 0.8, 8), ("Invert", 0.1, 3)],
    [("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)],
]

# RandAugment / TrivialAugment op set (torchvision's): no Invert or Cutout.
RAND_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
            "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")

STUDY_OPS = ("Contrast", "Equalize", "Sharpness")  # the study's photometric ops


def randaugment(n=2, m=9, bins=DEFAULT_BINS, ops=RAND_OPS):
    """RandAugment (Cubuk et al. 2019): ``n`` ops chosen with replacement, all at magnitude bin ``m`` of ``bins``."""
    level = m * MAX_LEVEL / (bins - 1)
    return {"subpolicies": [[(name, 1.0, level) for name in combo] for combo in itertools.product(ops, repeat=n)]}


def trivialaugment(bins=DEFAULT_BINS, ops=RAND_OPS, space="wide"):
    """TrivialAugment-wide (Mueller & Hutter 2021): one op at a uniformly random bin, wide ranges."""
    return {"subpolicies": [[(name, 1.0, None)] for name in ops], "space": space, "bins": bins}


def each_with_probability(ops=STUDY_OPS, probability=0.5, bins=DEFAULT_BINS):
    """Every op independently with ``probability``, each at a random level: the study's policy."""
    return {"subpolicies": [[(name, probability, None) for name in ops]], "bins": bins}


POLICIES = {
    "autoaugment-cifar10": {"subpolicies": AUTOAUGMENT_CIFAR10},
    "randaugment": randaugment(),
    "trivialaugment": trivialaugment(),
    "study": each_with_probability(),
}


# --------------------------------------------------------------------------- validation and application

def check_policy(policy: dict) -> dict:
    """Validate a policy dict; errors name the bad entry and what would be valid."""
    if not isinstance(policy, dict) or not policy.get("subpolicies"):
        raise ValueError("a policy is a dict with a non-empty 'subpolicies' list of [(op, probability, level), ...]; "
                         f"or a name: {', '.join(POLICIES)}.")
    extra = set(policy) - {"subpolicies", "space", "bins"}
    if extra:
        raise ValueError(f"unknown policy keys {sorted(extra)}; valid: subpolicies, space, bins.")
    check_space(policy.get("space", "standard"))
    bins = policy.get("bins", DEFAULT_BINS)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"policy bins must be an int >= 2, got {bins!r}.")
    for sub in policy["subpolicies"]:
        for step in sub:
            if len(step) != 3:
                raise ValueError(f"policy step {step!r} must be (op_name, probability, level_or_None).")
            name, prob, level = step
            get_op(name)
            if isinstance(prob, bool) or not isinstance(prob, Real) or not 0 <= prob <= 1:
                raise ValueError(f"probability {prob!r} in step {step!r} must be in 0..1.")
            if level is not None:
                check_level(level)
    return policy


def get_policy(policy) -> dict:
    """A registered name or a policy dict -> validated policy dict."""
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; valid policies: {', '.join(POLICIES)}.")
        return POLICIES[policy]
    return check_policy(policy)


def random_level(rng, bins, size=None):
    return rng.integers(bins, size=size) * MAX_LEVEL / (bins - 1)


def run_policy(img, policy: dict, rng):
    """Apply a validated policy (the per-image hot path). ``img`` is a PIL image, or a uint8 array that is
    converted only once an op fires: if none does, the very same array comes back, with no Pillow round trip."""
    subpolicies = policy["subpolicies"]
    space, bins = policy.get("space", "standard"), policy.get("bins", DEFAULT_BINS)
    for name, prob, level in subpolicies[rng.integers(len(subpolicies))]:
        if rng.random() < prob:
            pil = img if isinstance(img, Image.Image) else Image.fromarray(img)
            img = run_op(pil, name, random_level(rng, bins) if level is None else level, rng, space)
    return img


def run_policy_batch(images, policy: dict, rng):
    """The same rule as run_policy over a uint8 batch (policy already validated): each image picks a sub-policy,
    then step by step the images whose step fires are grouped by op, and each group goes through the op's
    batch kernel in one call (ops without one: Pillow per image). Draws differ from run_policy's, so the same
    seed gives other samples than the per-image path."""
    subpolicies = policy["subpolicies"]
    space, bins = policy.get("space", "standard"), policy.get("bins", DEFAULT_BINS)
    chosen = rng.integers(len(subpolicies), size=len(images))
    out = images
    for j in range(max(map(len, subpolicies))):
        fires = rng.random(len(images))
        random_levels = random_level(rng, bins, size=len(images))
        groups = {}  # (op, level) per image whose step j fires, grouped by op
        for i, s in enumerate(chosen):
            if j < len(subpolicies[s]):
                name, prob, level = subpolicies[s][j]
                if fires[i] < prob:
                    groups.setdefault(name, []).append((i, random_levels[i] if level is None else level))
        for name, members in groups.items():
            index = np.array([i for i, _ in members])
            args = [op_argument(name, level, rng, space) for _, level in members]
            if out is images:
                out = images.copy()
            out[index] = run_op_batch(out[index], name, args)
    return out


def apply_policy(img, policy, rng):
    """Augment one image (uint8 HxWx3 array or RGB PIL image) with a policy name or dict, drawing from ``rng``."""
    return like_input(run_policy(to_pil(img), get_policy(policy), check_rng(rng)), img)


for _policy in POLICIES.values():  # catch a typo in the tables at import, not mid-training
    check_policy(_policy)
