"""Hostile and broken CIFAR-10 batch files: every one is refused with one line naming the file, before numpy
builds anything from it; none crashes the process (cifar_ae.batchfile)."""
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cifar_ae import batchfile as B, data as D
from numpy._core import multiarray

FUZZ_SEED = 20261201
FUZZ_CASES = 400


def batch_dict(n=12, seed=0, labels=None, data=None):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"test", b"labels": labels if labels is not None else [int(v) for v in rng.integers(0, 10, n)],
            b"data": data if data is not None else rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write(path, obj, protocol=2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


class Reduce:
    """Pickles as `func(*args)` with BUILD `state`: how a forged numpy object is written."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def forged_array(dtype_args, dtype_state, shape=(2,), buf=b"\0" * 16):
    dtype = Reduce(np.dtype, dtype_args, dtype_state)
    return Reduce(multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, buf))


# An object field whose flags say "no objects": the previous loader segfaulted on it (exit 139), as numpy read
# the buffer's 0x41 bytes as a PyObject pointer
OBJECT_FIELD = forged_array(("V8", False, True), (3, "|", None, ("f",), {"f": (np.dtype("O"), 0)}, 8, 1, 0),
                            shape=(12,), buf=b"\x41" * 96)
OFFSET_PAST_ITEM = forged_array(("V8", False, True), (3, "|", None, ("f",), {"f": (np.dtype("<u8"), 1 << 20)}, 8, 1, 0),
                                shape=(12,), buf=b"\0" * 96)


def billion_laughs(levels=7, width=12):
    level = [1] * width
    for _ in range(levels):
        level = [level] * width  # each level refers to one shared sublist: a tiny pickle, 12^9 "labels"
    return [level] * 12  # as many top-level labels as images (the previous loader: 38 GiB MemoryError)


def test_valid_batch_loads_and_a_numpy_written_one_too(tmp_path):
    images, labels, names = B.read_batch(write(tmp_path / "b", batch_dict()))
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    as_array = batch_dict(labels=np.arange(12) % 10)  # labels as a 1-D int array, protocol 4
    _, labels, _ = B.read_batch(write(tmp_path / "c", as_array, protocol=4))
    assert labels.tolist() == (np.arange(12) % 10).tolist()


@pytest.mark.parametrize("case, message", [
    ("object-field", "nests deeper than 8 levels|b'data' has a dtype that is not a plain integer type"),
    ("offset-past-item", "nests deeper than 8 levels|b'data' has a dtype that is not a plain integer type"),
    ("void-dtype", "b'data' has a dtype that is not a plain integer type"),
    ("flagged-dtype", "b'data' has a dtype that is not a plain integer type"),
    ("short-buffer", "b'data' is not a plain integer array consistent with its buffer"),
    ("billion-laughs", "nests deeper than 8 levels"),
    ("labels-out-of-range", r"label 10 at index 3 is outside 0..9"),
    ("pixels-out-of-range", r"pixel values run from 0 to 300, outside 0..255"),
    ("nested-labels", "b'labels' holds a list; expected a flat list of ints"),
    ("labels-wrong-length", "11 labels for 12 images"),
    ("system", "refused to unpickle posix.system"),
])
def test_hostile_or_broken_batches_get_one_line_errors(tmp_path, case, message):
    d = batch_dict()
    if case == "object-field":
        d[b"data"] = OBJECT_FIELD
    elif case == "offset-past-item":
        d[b"data"] = OFFSET_PAST_ITEM
    elif case == "void-dtype":
        d[b"data"] = forged_array(("V8", False, True), (3, "|", None, None, None, 1 << 40, 1, 0))
    elif case == "flagged-dtype":  # a u1 that claims to hold object references
        d[b"data"] = forged_array(("u1", False, True), (3, "|", None, None, None, -1, -1, 0x3F))
    elif case == "short-buffer":
        d[b"data"] = forged_array(("u1", False, True), (3, "|", None, None, None, -1, -1, 0), shape=(12, 3072), buf=b"x")
    elif case == "billion-laughs":
        d[b"labels"] = billion_laughs()
    elif case == "labels-out-of-range":
        d[b"labels"][3] = 10
    elif case == "pixels-out-of-range":
        data = np.zeros((12, 3072), np.int64)
        data[0, 0] = 300
        d[b"data"] = data
    elif case == "nested-labels":
        d[b"labels"] = [[1]] * 12
    elif case == "labels-wrong-length":
        d[b"labels"] = d[b"labels"][:11]
    elif case == "system":
        d[b"data"] = Reduce(os.system, ("echo pwned",))
    path = write(tmp_path / "data_batch_1", d)
    with pytest.raises(D.DataError, match=message) as e:
        B.read_batch(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_dtype_records_with_fields_or_objects_are_refused():
    for state in NASTY_DTYPE_STATES:
        record = B._PickledDtype("u1", False, True)
        record.__setstate__(state)
        with pytest.raises(D.DataError, match="not a plain integer type"):
            B._plain_dtype(record, "f", "b'data'")
    ok = B._PickledDtype("<i8", False, True)
    ok.__setstate__((3, "<", None, None, None, -1, -1, 0))
    with pytest.raises(D.DataError):  # "<i8" is not a bare type name as numpy pickles it ("i8")
        B._plain_dtype(ok, "f", "b'data'")
    ok = B._PickledDtype("i8", False, True)
    ok.__setstate__((3, "<", None, None, None, -1, -1, 0))
    assert B._plain_dtype(ok, "f", "b'data'") == np.dtype("<i8")


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        f.truncate(B.MAX_PICKLE_BYTES + 1)
    with pytest.raises(D.DataError, match="more than any CIFAR-10 batch"):
        B.read_batch(path)


# --------------------------------------------------------------------------- fuzz: mutations in child processes

DRIVER = textwrap.dedent("""
    # For each case file: fork, load it in the child, report; a child killed by a signal is reported as such.
    import json, os, sys
    from cifar_ae import batchfile as B, data as D
    for path in sys.argv[1:]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                B.read_batch(path)
                msg = "ok"
            except D.DataError as e:
                msg = "error " + str(e)
            except BaseException as e:
                msg = f"traceback {type(e).__name__}: {e}"
            os.write(w, msg.encode()[:2000])
            os._exit(0)
        os.close(w)
        out = b""
        while chunk := os.read(r, 4096):
            out += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            out = f"signal {os.WTERMSIG(status)}".encode()
        print(json.dumps({"case": os.path.basename(path), "result": out.decode(errors="replace")}), flush=True)
""")

NASTY_DTYPE_STATES = [
    (3, "|", None, ("f",), {"f": (np.dtype("O"), 0)}, 8, 1, 0x3F),
    (3, "|", None, ("f",), {"f": (np.dtype("<u8"), 1 << 20)}, 1, 1, 0x10),
    (3, "|", (np.dtype("u1"), (1 << 30,)), None, None, 1 << 30, 1, 0),
    (3, "|", None, None, None, 1 << 40, 1, 0),
    (3, "|", None, None, None, -1, -1, 1),
    (9, "|", None, None, None, -1, -1, 0),
]


def mutations(valid: bytes, rng):
    """Random damage to a valid batch pickle: flipped bytes, truncations, swapped opcodes, forged dtype states."""
    kind = rng.integers(5)
    b = bytearray(valid)
    if kind == 0:
        for _ in range(rng.integers(1, 8)):
            b[rng.integers(len(b))] = rng.integers(256)
    elif kind == 1:
        b = b[:rng.integers(1, len(b))]
    elif kind == 2:  # swap an opcode-looking byte for another opcode
        ops = b"()]}ecXNtJKhqRbu.\x80\x85\x86\x87\x88\x89\x8c\x93\x94\x95"
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(len(b))
            b[i] = ops[rng.integers(len(ops))]
    elif kind == 3:  # a header region edit: shapes, dtype names, protocol bytes
        i = rng.integers(min(len(b), 300))
        b[i:i + 2] = bytes(rng.integers(0, 256, 2).tolist())
    else:
        d = batch_dict(n=4)
        state = NASTY_DTYPE_STATES[rng.integers(len(NASTY_DTYPE_STATES))]
        name = ["u1", "V8", "O", "i8", "V1", "u8"][rng.integers(6)]
        d[[b"data", b"labels"][rng.integers(2)]] = forged_array((name, False, True), state, shape=(4, 3072),
                                                                  buf=bytes(rng.integers(0, 64)))
        return pickle.dumps(d, protocol=2)
    return bytes(b)


def test_fuzzed_batches_load_or_fail_with_one_line_never_a_crash(tmp_path):
    rng = np.random.default_rng(FUZZ_SEED)
    valid = pickle.dumps(batch_dict(n=4), protocol=2)
    paths = []
    for i in range(FUZZ_CASES):
        path = tmp_path / f"case_{i:04d}"
        path.write_bytes(mutations(valid, rng))
        paths.append(str(path))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", DRIVER, *paths], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == FUZZ_CASES
    bad = [r for r in results if not (r["result"] == "ok" or r["result"].startswith("error "))]
    assert not bad, bad[:5]
    errors = [r["result"] for r in results if r["result"] != "ok"]
    assert all("\n" not in e and "case_" in e for e in errors)  # one line, naming the file
    assert len(errors) > FUZZ_CASES // 2  # the mutations do break most files


def test_hostile_batch_through_the_command_line_is_one_line(tmp_path):
    root = tmp_path / "batches"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write(root / name, {**batch_dict(), b"data": OBJECT_FIELD})
    env = {**os.environ, "CIFAR10_DIR": str(root), "CIFAR_AE_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "cifar_ae", "train", "v0-mlp-ae", "--preset", "smoke", "--out",
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data_batch_1: pickle nests deeper than 8 levels" in errors[0]
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()
