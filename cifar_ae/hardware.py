"""What this machine is: CPU model and flags, usable cores, accelerators, and the precision that is fast here.

The CPU changes between sessions (an AVX-512-BF16 EPYC one day, an AVX2-only one the next), so nothing that
depends on it is hard-coded: ``precision="auto"`` asks `resolve_precision`, thread counts ask `usable_cores`,
and every run records `describe()` in its config.json.
"""
from __future__ import annotations

import functools
import os
import platform

# CPU flags with native bf16 arithmetic (oneDNN uses them for bf16 matmul/conv); without them bf16 is emulated
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


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
    """TensorFlow's GPUs with their compute capability, [] without TensorFlow or GPUs."""
    try:
        import tensorflow as tf
    except ImportError:
        return []
    found = []
    for dev in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(dev)
        found.append({"name": details.get("device_name", dev.name),
                      "compute_capability": list(details.get("compute_capability") or ())})
    return found


def native_bf16(flags=None, gpu_list=None) -> bool:
    """True where bf16 math runs in hardware: a GPU of compute capability >= 8.0, or a CPU with AVX512-BF16/AMX."""
    gpu_list = gpus() if gpu_list is None else gpu_list
    if gpu_list:
        return all(tuple(g.get("compute_capability") or (0, 0)) >= (8, 0) for g in gpu_list)
    flags = cpu_flags() if flags is None else set(flags)
    return any(f in flags for f in BF16_CPU_FLAGS)


def resolve_precision(precision: str, flags=None, gpu_list=None) -> str:
    """The Keras dtype policy for a trial's `precision`: "auto" is bf16 only where the hardware has it natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if native_bf16(flags, gpu_list) else "float32"


def describe() -> dict:
    """The machine, for config.json: CPU model, the flags that decide speed, cores, GPUs."""
    flags = cpu_flags()
    return {"cpu_model": cpu_model(), "cpu_flags": [f for f in REPORTED_FLAGS if f in flags],
            "usable_cores": usable_cores(), "cpu_count": os.cpu_count(), "gpus": gpus(),
            "native_bf16": native_bf16(flags)}
