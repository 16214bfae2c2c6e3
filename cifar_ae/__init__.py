"""cifar-ae: CIFAR-10 classification from autoencoder features (README.md)."""
from .quiet import quiet_tensorflow as _quiet_tensorflow

_quiet_tensorflow(import_now=False)  # before any TensorFlow import: its log noise, silenced in one place (quiet.py)
