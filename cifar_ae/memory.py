"""Allocation and threads for training on a CPU: glibc malloc keeps its memory, TensorFlow's pools fit the cores.

Why: TensorFlow allocates and frees large tensors every step. glibc serves blocks above its mmap threshold with
fresh mmaps and trims freed heap tops back to the kernel, so each step faults its pages in again; on one 2-core
Zen 3 machine that was ~230,000 minor faults/s and 40% of the CPU time in the kernel. `tune_malloc` calls
glibc's mallopt (at run time, so it works from the CLI, a notebook kernel and pytest alike):

- M_MMAP_MAX = 0: no mmap'd blocks; large tensors come from the arenas and their pages stay mapped;
- M_TRIM_THRESHOLD = 1 GiB and M_TOP_PAD = 256 MiB: freed memory is kept for the next step, not returned.

The cost is a process that holds its peak heap. ``CIFAR_AE_MALLOC=off`` leaves glibc's defaults and
``CIFAR_AE_TF_THREADS=default`` TensorFlow's thread pools
(benchmarks/train_throughput.py measures both). Elsewhere than glibc it does nothing.

`configure_threads` sizes TensorFlow's intra-op pool to the CPUs this process may use (its affinity mask)
and the inter-op pool to 1 on two cores or fewer, so TensorFlow's threads and the augmentation worker do not
oversubscribe them; it must run before TensorFlow executes its first op, and is a no-op after that.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

from .hardware import usable_cores

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = {"M_MMAP_MAX": (M_MMAP_MAX, 0), "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 1 << 30),
            "M_TOP_PAD": (M_TOP_PAD, 256 << 20)}
_state: dict = {}


def tune_malloc() -> dict:
    """Apply SETTINGS through mallopt once per process; returns what was applied ({} when off or not glibc)."""
    if "malloc" in _state:
        return _state["malloc"]
    applied = {}
    if os.environ.get("CIFAR_AE_MALLOC", "on").lower() not in ("off", "0", "false"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            for name, (param, value) in SETTINGS.items():
                if mallopt(param, value) == 1:
                    applied[name] = value
    _state["malloc"] = applied
    return applied


def configure_threads() -> dict:
    """TensorFlow intra-op threads = usable cores, inter-op = 1 on <= 2 cores; returns the pools' sizes."""
    if "threads" in _state:
        return _state["threads"]
    import tensorflow as tf
    cores = usable_cores()
    intra, inter = cores, (1 if cores <= 2 else 2)
    try:
        if os.environ.get("CIFAR_AE_TF_THREADS", "on").lower() in ("default", "off"):
            raise RuntimeError("left at TensorFlow's defaults (for comparison)")
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # TensorFlow already ran an op: its pools are fixed for this process
        pass
    _state["threads"] = {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                         "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                         "usable_cores": cores}
    return _state["threads"]
