"""What this machine is: CPU model and flags, usable cores, accelerators, and the precision that is fast here.

The CPU changes between sessions (an AVX-512-BF16 EPYC one day, an AVX2-only one the next), so nothing that
depends on it is hard-coded: ``precision="auto"`` asks `resolve_precision`, thread counts ask `usable_cores`,
and every run records `describe()` in its config.json.

A bf16 flag is not enough: on one Xeon with AVX512-BF16, TensorFlow's bf16 kernels peaked at 173 GFLOP/s against
float32's 277. So on a CPU with the flags, "auto" times both (`measured_peaks`, a few seconds, cached per machine)
and takes bf16 only where it is measurably faster.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

from .atomic import write_atomic

# CPU flags with native bf16 arithmetic (oneDNN uses them for bf16 matmul/conv); without them bf16 is emulated
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# mixed precision keeps float32 weights and casts at every layer, so a smaller kernel edge is lost to that
BF16_MIN_SPEEDUP = 1.25


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset:
    return _cpuinfo()[1]


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask: what a container or `taskset` allows), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def gpus() -> list[dict]:
    """The backend's GPUs with their compute capability, asked of the backend in use (a JAX-only machine needs
    no TensorFlow); [] without GPUs."""
    import keras
    backend = keras.backend.backend()
    found = []
    try:
        if backend == "jax":
            import jax
            for dev in jax.devices():
                if dev.platform == "gpu":
                    cap = getattr(dev, "compute_capability", "") or ""
                    found.append({"name": dev.device_kind,
                                  "compute_capability": [int(p) for p in str(cap).split(".") if p.isdigit()]})
        elif backend == "torch":
            import torch
            for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
                found.append({"name": torch.cuda.get_device_name(i),
                              "compute_capability": list(torch.cuda.get_device_capability(i))})
        else:
            import tensorflow as tf
            for dev in tf.config.list_physical_devices("GPU"):
                details = tf.config.experimental.get_device_details(dev)
                found.append({"name": details.get("device_name", dev.name),
                              "compute_capability": list(details.get("compute_capability") or ())})
    except ImportError:
        return []
    return found


def native_bf16(flags=None, gpu_list=None) -> bool:
    """True where bf16 math runs in hardware: a GPU of compute capability >= 8.0, or a CPU with AVX512-BF16/AMX."""
    gpu_list = gpus() if gpu_list is None else gpu_list
    if gpu_list:
        return all(tuple(g.get("compute_capability") or (0, 0)) >= (8, 0) for g in gpu_list)
    flags = cpu_flags() if flags is None else set(flags)
    return any(f in flags for f in BF16_CPU_FLAGS)


def resolve_precision(precision: str, flags=None, gpu_list=None, peaks=None) -> str:
    """The Keras dtype policy for a trial's `precision`: "auto" is bf16 only where the hardware has it natively
    and, on a CPU, where its measured bf16 peak beats float32's by BF16_MIN_SPEEDUP. `peaks` ({"float32": GFLOP/s,
    "bfloat16": GFLOP/s}) is this machine's `measured_peaks()` unless `flags` are given (another CPU): then the
    flags alone decide, as they do when nothing could be measured."""
    return choose_precision(precision, flags, gpu_list, peaks)[0]


def choose_precision(precision: str, flags=None, gpu_list=None, peaks=None) -> tuple[str, str]:
    """(policy, why), as `resolve_precision`; the why goes into each run's config.json."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision, "set by the trial"
    gpu_list = gpus() if gpu_list is None else gpu_list
    if not native_bf16(flags, gpu_list):
        return "float32", "no native bf16 (CPU flags / GPU compute capability)"
    if gpu_list:  # tensor cores: bf16 is the fast path on every GPU that has it
        return "mixed_bfloat16", "GPUs with native bf16"
    if peaks is None and flags is None:
        peaks = measured_peaks()
    if not peaks:
        return "mixed_bfloat16", "CPU bf16 flags (the peaks could not be measured)"
    speedup = peaks["bfloat16"] / peaks["float32"]
    why = (f"measured peaks: bfloat16 {peaks['bfloat16']:.0f} GFLOP/s, float32 {peaks['float32']:.0f} "
           f"({speedup:.2f}x; bf16 needs {BF16_MIN_SPEEDUP}x)")
    return ("mixed_bfloat16" if speedup >= BF16_MIN_SPEEDUP else "float32"), why


def _median_seconds(fn, repeats) -> float:
    fn()  # trace and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_kernels(repeats=7, dtypes=("float32", "bfloat16")) -> dict:
    """GFLOP/s of a 2048 matmul and a 64x32x32x128 3x3 conv per dtype, median of `repeats` timed calls
    (2 FLOPs per multiply-add), and each dtype's peak (the faster of the two)."""
    import tensorflow as tf
    n, x_shape, w_shape = 2048, (64, 32, 32, 128), (3, 3, 128, 128)
    conv_flops = 2 * 64 * 32 * 32 * 128 * 9 * 128
    kernels = {}
    for dtype in dtypes:
        a, b, x, w = (tf.cast(tf.random.normal(s), dtype) for s in ((n, n), (n, n), x_shape, w_shape))
        matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
        conv = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME")))
        k = {"matmul_2048_gflops": round(2 * n ** 3 / _median_seconds(lambda: matmul().numpy(), repeats) / 1e9, 1),
             "conv3x3_64x32x32x128_gflops": round(conv_flops / _median_seconds(lambda: conv().numpy(), repeats) / 1e9, 1)}
        kernels[dtype] = {**k, "peak_gflops": max(k.values())}
    return kernels


def _peaks_cache(machine) -> Path:
    from cifar_ae.data import cache_dir
    name = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"peak-gflops-{name}.json"


def _valid_peaks(obj, machine):
    """The cached {"float32", "bfloat16"} peaks if the file is this machine's and well formed, else None."""
    if not isinstance(obj, dict) or obj.get("machine") != machine:
        return None
    peaks = obj.get("peaks")
    if not isinstance(peaks, dict) or set(peaks) != {"float32", "bfloat16"}:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in peaks.values()):
        return None
    return {k: float(v) for k, v in peaks.items()}


@functools.lru_cache(maxsize=1)
def measured_peaks() -> dict | None:
    """This machine's float32 and bfloat16 peak GFLOP/s, measured once (a few seconds) and cached per machine
    under the data cache folder; None where TensorFlow cannot run bf16 here (the flags then decide)."""
    machine = describe()
    cache = _peaks_cache(machine)
    try:
        found = _valid_peaks(json.loads(cache.read_text()), machine)
        if found:
            return found
    except (OSError, ValueError, RecursionError):
        pass  # absent or damaged: measured again below
    # Callers size TensorFlow's thread pools first (training.plan calls memory.configure_threads), so the
    # kernels are timed with the pools training will use; importing memory here would be a cycle.
    try:
        kernels = measure_kernels(repeats=5)
    except Exception:  # noqa: BLE001 - a TensorFlow build without bf16 kernels: fall back to the flags
        return None
    peaks = {dtype: kernels[dtype]["peak_gflops"] for dtype in ("float32", "bfloat16")}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, lambda tmp: tmp.write_text(json.dumps({"machine": machine, "peaks": peaks,
                                                                    "kernels": kernels}, indent=1)))
    except OSError:
        pass  # a read-only cache: measured again next process
    return peaks


def describe() -> dict:
    """The machine, for config.json: CPU model, the flags that decide speed, cores, GPUs."""
    flags = cpu_flags()
    return {"cpu_model": cpu_model(), "cpu_flags": [f for f in REPORTED_FLAGS if f in flags],
            "usable_cores": usable_cores(), "cpu_count": os.cpu_count(), "gpus": gpus(),
            "native_bf16": native_bf16(flags)}
