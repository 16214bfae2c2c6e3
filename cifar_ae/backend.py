"""What depends on the Keras backend (TensorFlow, JAX or PyTorch), in one place: determinism, threads,
SSIM, version info, a run's key and folder, and data-parallel training.

TensorFlow stays the default (KERAS_BACKEND unset). A run on another backend records it in its key, and lives in
its own folder (`<preset>-s<seed>-jax`), so TensorFlow's keys and folders are those of every committed run.

Data parallel, by backend (Trial.strategy):

- "mirrored": tf.distribute.MirroredStrategy over this host's devices (TensorFlow; multi-worker tf.distribute is
  not supported under Keras 3, keras-team/keras#20585);
- "data_parallel": keras.distribution.DataParallel over every device of every process (JAX). Processes join
  through Keras' own variables, KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's host:port first),
  KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID (docs/distributed.md). Each process feeds
  its slice of every global batch (`ProcessShard`), and writes its own copy of the run folder
  (`<...>-process<id>` for id > 0), so one filesystem can hold them all.
"""
from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import numpy as np
import keras

DEFAULT = "tensorflow"
STRATEGY_BACKENDS = {"mirrored": ("tensorflow",), "data_parallel": ("jax",)}
DISTRIBUTION_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                          "KERAS_DISTRIBUTION_PROCESS_ID")
_state: dict = {}


def name() -> str:
    return keras.backend.backend()


# --------------------------------------------------------------------------- processes, threads, determinism

def initialize_processes() -> dict:
    """Join the other processes of a multi-process run when KERAS_DISTRIBUTION_NUM_PROCESSES > 1 is set (JAX:
    before any computation, so the plan of every run calls it first); returns {"processes", "process_id"}."""
    if "processes" in _state:
        return _state["processes"]
    count = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") or 1)
    if count > 1:
        missing = [v for v in DISTRIBUTION_VARIABLES if not os.environ.get(v)]
        if missing:
            raise ValueError(f"a {count}-process run needs {', '.join(missing)} set as well (docs/distributed.md).")
        if name() != "jax":
            raise ValueError(f"several processes need KERAS_BACKEND=jax (keras.distribution); got {name()}.")
        keras.distribution.initialize()  # reads the three variables
    _state["processes"] = {"processes": process_count(), "process_id": process_id()}
    return _state["processes"]


def process_count() -> int:
    if name() == "jax":
        import jax
        return jax.process_count()
    return 1


def process_id() -> int:
    if name() == "jax":
        import jax
        return jax.process_index()
    return 0


def configure_threads() -> dict:
    """The backend's thread pools sized to the usable cores (TensorFlow: cifar_ae.memory; PyTorch: intra-op =
    cores, inter-op 1 on <= 2 cores; JAX: XLA's own pool, one thread per core); returns what was set."""
    if "threads" in _state:
        return _state["threads"]
    from .hardware import usable_cores
    cores = usable_cores()
    if name() == "tensorflow":
        from . import memory
        threads = memory.configure_threads()
    elif name() == "torch":
        import torch
        torch.set_num_threads(cores)
        with contextlib.suppress(RuntimeError):  # fixed once torch ran parallel work
            torch.set_num_interop_threads(1 if cores <= 2 else 2)
        threads = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                   "usable_cores": cores}
    else:
        threads = {"usable_cores": cores}
    _state["threads"] = threads
    return threads


def enable_determinism() -> bool:
    """Same seed, same machine, same backend -> same numbers; returns whether the backend guarantees it here.
    TensorFlow: op determinism. JAX: XLA on CPU is deterministic; on GPU it needs --xla_gpu_deterministic_ops,
    added to XLA_FLAGS here (effective if JAX has not started its GPU backend yet). PyTorch: deterministic
    algorithms (and cuBLAS's fixed workspace)."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
        return True
    if backend == "jax":
        import jax
        if all(d.platform == "cpu" for d in jax.devices()):
            return True
        flag = "--xla_gpu_deterministic_ops=true"
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
        return False  # the GPU backend started before the flag: not guaranteed in this process
    if backend == "torch":
        import torch
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        return True
    return False


def versions() -> dict:
    """For config.json: Python, Keras, the backend and its library's version, numpy, scikit-learn, platform."""
    import sklearn
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version(), "keras": keras.__version__, "backend": name()}
    for package in {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}.get(name(), ()):
        module = __import__(package)
        out[package] = getattr(module, "__version__", None)
        if out[package] is None:
            with contextlib.suppress(PackageNotFoundError):
                out[package] = version(package)
    out.update({"numpy": np.__version__, "scikit-learn": sklearn.__version__, "platform": platform.platform()})
    return out


# --------------------------------------------------------------------------- run identity

def key_with_backend(key: dict) -> dict:
    """A run key with the backend in it, unless it is TensorFlow: a TensorFlow run keeps the key (and folder) it
    always had, and a JAX run of the same trial is another run (other kernels, other numbers)."""
    return key if name() == DEFAULT else {**key, "backend": name()}


def own_folder(folder) -> Path:
    """A run's folder on this backend and process: TensorFlow's as planned; `<folder>-jax` on JAX; a further
    `-process<id>` for process id > 0 of a multi-process run (each process writes its own copy)."""
    folder = Path(folder)
    suffix = "" if name() == DEFAULT else f"-{name()}"
    if process_id() > 0:
        suffix += f"-process{process_id()}"
    return folder.with_name(folder.name + suffix) if suffix else folder


# --------------------------------------------------------------------------- data parallel

def check_strategy(strategy) -> None:
    from .trials import TrialError
    if strategy is None:
        return
    backends = STRATEGY_BACKENDS[strategy]  # Trial validates the name
    if name() not in backends:
        other = next((s for s, b in STRATEGY_BACKENDS.items() if name() in b), None)
        raise TrialError(f"strategy {strategy!r} needs KERAS_BACKEND={' or '.join(backends)}; on {name()} "
                         + (f"use strategy={other!r}." if other else "train without a strategy."))


def distribution_scope(strategy):
    """Where the model is built: MirroredStrategy's scope (TensorFlow), or a DataParallel over every device of
    every process set as Keras' distribution (JAX; it stays set through training, until `end_distribution`)."""
    check_strategy(strategy)
    if strategy == "mirrored":
        import tensorflow as tf
        return tf.distribute.MirroredStrategy().scope()
    if strategy == "data_parallel":
        distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
        distribution.auto_shard_dataset = False  # each process feeds its own slice (ProcessShard)
        keras.distribution.set_distribution(distribution)
    return contextlib.nullcontext()


def distributed() -> bool:
    return name() == "jax" and keras.distribution.distribution() is not None


def end_distribution() -> None:
    if name() == "jax":
        keras.distribution.set_distribution(None)


def optimizer_scope(model):
    """The scope that builds optimizer variables beside the model's (MirroredStrategy's on TensorFlow)."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def undistributed(model, saved):
    """After data-parallel training: the saved model, loaded on this process alone (evaluation reads it whole on
    every process); else `model` unchanged."""
    if not distributed():
        return model
    end_distribution()
    from .scoring import load_model  # safe mode; a file Keras cannot rebuild is one line
    return load_model(saved)


def data_shards() -> int:
    """How many equal parts a global batch splits into: the distribution's devices (JAX), else 1."""
    return len(keras.distribution.list_devices()) if distributed() else 1


class ProcessShard(keras.utils.PyDataset):
    """This process's slice of every batch of `batches` (an ArrayBatches): rows [i * n/P, (i+1) * n/P) of a batch
    of n for process i of P, so P processes together train on exactly the single-process batches."""

    def __init__(self, batches, processes, index, devices):
        super().__init__(workers=batches.workers, use_multiprocessing=batches.use_multiprocessing,
                         max_queue_size=batches.max_queue_size)
        self.batches, self.processes, self.index, self.devices = batches, processes, index, devices

    def set_epoch(self, epoch):
        self.batches.set_epoch(epoch)

    def on_epoch_end(self):
        self.batches.on_epoch_end()

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        batch = self.batches[i]
        n = len(batch[0])
        if n % self.devices:
            raise ValueError(f"a batch of {n} images does not split over {self.devices} devices; use a batch size "
                             f"and image counts that {self.devices} divides (or drop_last=True).")
        part = n // self.processes
        return keras.tree.map_structure(lambda a: a[self.index * part:(self.index + 1) * part], batch)


def shard(batches):
    """`batches` as this process feeds them: a ProcessShard under a data-parallel distribution, else unchanged."""
    if not distributed():
        return batches
    return ProcessShard(batches, process_count(), process_id(), data_shards())


# --------------------------------------------------------------------------- image metrics

def ssim(x, y, max_val=1.0, filter_size=11, sigma=1.5) -> np.ndarray:
    """Per-image SSIM of (N, H, W, C) batches in keras.ops (any backend), as tf.image.ssim computes it: an
    11x11 Gaussian window (sigma 1.5), 'valid' positions, K1 = 0.01, K2 = 0.03, averaged over positions and
    channels."""
    ops = keras.ops
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (N, H, W, C) batches of one shape; got {x.shape} and {y.shape}.")
    size = min(filter_size, x.shape[1], x.shape[2])
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-coords ** 2 / (2 * sigma ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    kernel = np.tile(window[:, :, None, None], (1, 1, x.shape[3], 1)).astype(np.float32)

    def blur(z):
        return ops.depthwise_conv(z, kernel, strides=1, padding="valid")

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    xt, yt = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    mean_x, mean_y = blur(xt), blur(yt)
    num0 = mean_x * mean_y * 2.0
    den0 = ops.square(mean_x) + ops.square(mean_y)
    luminance = (num0 + c1) / (den0 + c1)
    num1 = blur(xt * yt) * 2.0
    den1 = blur(ops.square(xt) + ops.square(yt))
    contrast_structure = (num1 - num0 + c2) / (den1 - den0 + c2)
    return ops.convert_to_numpy(ops.mean(luminance * contrast_structure, axis=(1, 2, 3))).astype(np.float64)
