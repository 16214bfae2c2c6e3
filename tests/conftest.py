import os
import warnings

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CIFAR_AE_DOWNLOAD"] = "0"  # tests never download CIFAR-10
# CI sets CIFAR10_DIR=../shared/cifar10, relative to the checkout; tests run children from other folders
# (a copied checkout, notebooks/), so every child gets the absolute path.
if os.environ.get("CIFAR10_DIR"):
    os.environ["CIFAR10_DIR"] = os.path.abspath(os.path.expanduser(os.environ["CIFAR10_DIR"]))
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


class TuneProcesses:
    """`python -m cifar_ae tune` as a chief and workers, each a subprocess that logs to <tmp>/<name>.log.

    A context manager: on exit every process still running is terminated (then killed) and the logs closed.
    """

    def __init__(self, tmp_path, command, cwd):
        self.tmp_path, self.command, self.cwd = tmp_path, list(command), cwd
        self.env, self.procs, self.logs = tuning_env(tmp_path), {}, {}

    def start(self, name, extra):
        import subprocess
        self.logs[name] = open(self.tmp_path / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(self.command + extra, cwd=self.cwd, env=self.env,
                                            stdout=self.logs[name], stderr=subprocess.STDOUT)
        return self.procs[name]

    def tail(self, name=None):
        names = [name] if name else list(self.procs)
        return "\n".join(f"--- {n} ---\n" + (self.tmp_path / f"{n}.log").read_text()[-3000:] for n in names)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        import subprocess
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        for f in self.logs.values():
            f.close()
        return False
