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


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tuning_env(tmp_path):
    """The environment of a `python -m cifar_ae tune` child: quiet, unbuffered, its own tuned-trials file, and no
    KERASTUNER_* variables inherited from the test process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "CIFAR_AE_TUNE_COMMAND": "",
           "CIFAR_AE_TUNED_TRIALS": str(tmp_path / "results" / "tuned_trials.json")}
    for k in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        env.pop(k, None)
    return env
