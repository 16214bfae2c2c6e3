import os
import warnings

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=r".*scipy\.ndimage.*", category=DeprecationWarning)


@pytest.fixture(scope="session")
def cifar_dir():
    """The real CIFAR-10 (CI sets CIFAR10_DIR=../shared/cifar10); tests that need it skip without it."""
    path = os.environ.get("CIFAR10_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("CIFAR10_DIR is not set to the CIFAR-10 folder")
    return path


@pytest.fixture(scope="session")
def cifar(cifar_dir):
    from cifar_ae.data import load_cifar10
    return load_cifar10(cifar_dir)
