"""TensorFlow's log noise, silenced in one place for the CLI and the notebooks; real errors still show.

- Its C++ INFO and WARNING lines (TF_CPP_MIN_LOG_LEVEL=2, unless the user set another level) and the absl and oneDNN
  lines printed while it is imported (stderr's file descriptor muted for the import only; a failed import is
  raised again, visibly, by the code that needs TensorFlow).
- Python-side warnings from TensorFlow's logger (tf.function retracing) and absl: ERROR and above still show.
- The tf.data line `NodeDef mentions attribute use_unbounded_threadpool`, which Keras' predict on arrays logs at
  ERROR level from C++ on TF 2.21, is avoided, not hidden: cifar_ae.inference.predict feeds batches without tf.data.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings


def quiet_tensorflow(import_now=True) -> None:
    """import_now=False (the CLI, whose light commands never import TensorFlow): only the settings, before it loads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", message=r".*scipy\.ndimage.*", category=DeprecationWarning)
    if import_now and "tensorflow" not in sys.modules:
        _import_muted()
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


def _import_muted() -> None:
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401  (for its side effect: its import-time lines go to /dev/null)
    except Exception:
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
