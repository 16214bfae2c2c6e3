"""The official CIFAR-10 python batches, read without trusting them.

A batch is a pickled dict of a uint8 array, a list of int labels and a list of file names. numpy's own unpickling
trusts the dtype state it is given (a forged one can hide an object field or an offset past the item size, and numpy
then dereferences attacker bytes), so numpy never sees the pickle: the pickle's size, opcodes and nesting are bounded
first, the globals a batch uses are mapped to inert records, and those are checked (plain integer dtype, shape
consistent with the buffer, labels a flat list of ints in 0..9) before `frombuffer` builds any array.
"""
from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np

from .errors import DataError

CLASS_COUNT = 10


MAX_PICKLE_BYTES = 64 << 20      # an official batch is ~31 MB
MAX_PICKLE_OPCODES = 1_000_000   # an official batch has ~40,000
MAX_PICKLE_DEPTH = 8             # dict -> list -> bytes is 3; an array's reduce/build state is 4
MAX_ARRAY_ELEMENTS = 64 << 20
INT_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"}


class _NDArrayClass:
    """Stands for numpy.ndarray inside a pickle."""


class _PickledDtype:
    def __init__(self, *args):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state


class _PickledArray:
    def __init__(self, *args):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state


class _PickledScalar:
    def __init__(self, *args):
        self.args = args


def _reconstruct(*args):
    return _PickledArray(*args)


def _latin1_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only as protocol 2's latin1 bytes")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    ("numpy", "ndarray"): _NDArrayClass, ("numpy", "dtype"): _PickledDtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct, ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _PickledScalar, ("numpy._core.multiarray", "scalar"): _PickledScalar,
    ("_codecs", "encode"): _latin1_encode,  # how protocol-2 pickles written by Python 3 rebuild bytes
}


class _AllowListUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, tuples, bytes, str, numbers and inert records of numpy arrays."""

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise DataError(f"{self.path}: refused to unpickle {module}.{name} (not a CIFAR-10 batch; "
                            "only numpy arrays, lists and dicts are allowed). Replace the file with the official batch.")
        return _SAFE_GLOBALS[(module, name)]


_PUSH_LEAF = {"NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
              "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES",
              "BINBYTES8", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "EMPTY_DICT", "EMPTY_LIST",
              "EMPTY_TUPLE", "GLOBAL", "BYTEARRAY8"}


def _check_pickle_shape(raw: bytes, path):
    """Bound a pickle's opcode count and nesting depth before unpickling it (a deeply nested tuple used as a
    dict key would overflow the C stack while being hashed; shared sublists can fake a huge list)."""
    import pickletools
    stack, marks, memo = [], [], {}

    def pop_to_mark():
        if not marks:
            raise ValueError("MARK missing")
        cut = marks.pop()
        items = stack[cut:]
        del stack[cut:]
        return max(items, default=0)

    def pop(n):
        if len(stack) < n:
            raise ValueError("stack underflow")
        items = stack[len(stack) - n:] if n else []
        del stack[len(stack) - n:]
        return max(items, default=0)

    def nest(depth):
        if depth > MAX_PICKLE_DEPTH:
            raise DataError(f"{path}: pickle nests deeper than {MAX_PICKLE_DEPTH} levels; a CIFAR-10 batch is a flat "
                            "dict of an array and lists. Replace the file with the official batch.")
        return depth

    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(raw)):
            if count > MAX_PICKLE_OPCODES:
                raise DataError(f"{path}: pickle has more than {MAX_PICKLE_OPCODES:,} opcodes; not a CIFAR-10 batch.")
            name = op.name
            if name in _PUSH_LEAF:
                stack.append(0)
            elif name in ("PROTO", "FRAME", "STOP"):
                pass
            elif name == "MARK":
                marks.append(len(stack))
            elif name in ("TUPLE", "LIST", "DICT"):
                stack.append(nest(pop_to_mark() + 1))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                stack.append(nest(pop(int(name[-1])) + 1))
            elif name in ("APPENDS", "SETITEMS"):
                inner = pop_to_mark()
                stack[-1] = nest(max(stack[-1], inner + 1))
            elif name == "APPEND":
                inner = pop(1)
                stack[-1] = nest(max(stack[-1], inner + 1))
            elif name == "SETITEM":
                inner = pop(2)
                stack[-1] = nest(max(stack[-1], inner + 1))
            elif name in ("REDUCE", "BUILD", "NEWOBJ"):
                inner = pop(2) if name != "BUILD" else pop(1)
                if name == "BUILD":
                    stack[-1] = nest(max(stack[-1], inner + 1))
                else:
                    stack.append(nest(inner + 1))
            elif name == "STACK_GLOBAL":
                pop(2)
                stack.append(0)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "POP":
                pop(1)
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "POP_MARK":
                pop_to_mark()
            else:
                raise DataError(f"{path}: pickle uses opcode {name}, which no CIFAR-10 batch has; replace the file "
                                "with the official batch.")
    except DataError:
        raise
    except Exception as e:  # truncated, or an opcode stream that is not a pickle
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e}); "
                        "re-download it or point CIFAR10_DIR at an intact copy.") from None


def safe_unpickle(path) -> object:
    """Load a pickle through the allow-list; a truncated or hostile file raises DataError naming it.

    Arrays come back as inert `_PickledArray` records: `_array` checks one and builds it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e}).") from None
    if size > MAX_PICKLE_BYTES:
        raise DataError(f"{path}: {size:,} bytes, more than any CIFAR-10 batch ({MAX_PICKLE_BYTES:,}); "
                        "replace it with the official batch.")
    raw = path.read_bytes()
    _check_pickle_shape(raw, path)
    try:
        return _AllowListUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, ... : a truncated or foreign file
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e}); "
                        "re-download it or point CIFAR10_DIR at an intact copy.") from None


def _text(v):
    return v.decode("ascii", "replace") if isinstance(v, bytes) else v


def _plain_dtype(d, path, what):
    """A pickled dtype record -> numpy dtype, if (and only if) it is a plain integer type."""
    bad = DataError(f"{path}: {what} has a dtype that is not a plain integer type (fields, objects, sub-arrays or "
                    "a forged layout); replace the file with the official batch.")
    if not isinstance(d, _PickledDtype) or not d.args or not isinstance(d.args[0], (str, bytes)):
        raise bad
    name = _text(d.args[0])
    state = d.state
    if name not in INT_DTYPES or not isinstance(state, tuple) or len(state) != 8:
        raise bad
    version, order, sub, names, fields, elsize, alignment, flags = state
    order = _text(order)
    if (version not in (3, 4) or order not in ("|", "<", ">", "=") or sub is not None or names is not None
            or fields is not None or elsize != -1 or alignment != -1 or flags != 0):
        raise bad
    return np.dtype(order + name)


def _array(obj, path, what) -> np.ndarray:
    """A pickled array record, checked against its own buffer, as a numpy array (built by frombuffer)."""
    bad = f"{path}: {what} is not a plain integer array consistent with its buffer; replace the file with the official batch."
    if not isinstance(obj, _PickledArray) or not isinstance(obj.state, tuple) or len(obj.state) != 5:
        raise DataError(bad)
    if len(obj.args) != 3 or obj.args[0] is not _NDArrayClass:
        raise DataError(bad)
    version, shape, dtype, fortran, buf = obj.state
    if (version != 1 or not isinstance(shape, tuple) or not 1 <= len(shape) <= 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            or not isinstance(fortran, bool) or not isinstance(buf, bytes)):
        raise DataError(bad)
    dt = _plain_dtype(dtype, path, what)
    n = math.prod(shape)
    if n > MAX_ARRAY_ELEMENTS or len(buf) != n * dt.itemsize:
        raise DataError(bad)
    return np.frombuffer(buf, dtype=dt).reshape(shape, order="F" if fortran else "C")


def _labels(obj, n, path) -> np.ndarray:
    """Labels as a 1-D int64 array: a flat list of ints (or numpy int scalars) or a 1-D int array, of length n."""
    if isinstance(obj, _PickledArray):
        labels = _array(obj, path, "b'labels'")
        if labels.ndim != 1:
            raise DataError(f"{path}: b'labels' has shape {labels.shape}; expected a flat list of {n} labels.")
        labels = labels.astype(np.int64)
    elif isinstance(obj, list):
        values = []
        for v in obj:
            if isinstance(v, _PickledScalar) and len(v.args) == 2 and isinstance(v.args[1], bytes):
                dt = _plain_dtype(v.args[0], path, "a label")
                if len(v.args[1]) != dt.itemsize:
                    raise DataError(f"{path}: a label scalar's bytes do not match its dtype.")
                v = int(np.frombuffer(v.args[1], dtype=dt)[0])
            if isinstance(v, bool) or not isinstance(v, int):
                raise DataError(f"{path}: b'labels' holds a {type(v).__name__}; expected a flat list of ints.")
            values.append(v)
        labels = np.asarray(values, dtype=np.int64) if all(-2**63 <= v < 2**63 for v in values) else None
        if labels is None:
            raise DataError(f"{path}: b'labels' holds integers outside int64.")
    else:
        raise DataError(f"{path}: b'labels' is a {type(obj).__name__}; expected a flat list of ints.")
    if len(labels) != n:
        raise DataError(f"{path}: {len(labels)} labels for {n} images.")
    check_labels(labels, path)
    return labels


def check_labels(labels, where):
    bad = np.flatnonzero((labels < 0) | (labels >= CLASS_COUNT))
    if len(bad):
        raise DataError(f"{where}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside 0..9 "
                        f"({len(bad)} such labels); CIFAR-10 has 10 classes. Replace the file with the official batch.")


def read_batch(path):
    d = safe_unpickle(path)
    if not isinstance(d, dict) or not all(k in d for k in (b"data", b"labels", b"filenames")):
        keys = sorted(map(repr, d)) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: batch has {keys}; expected a dict with b'data', b'labels', b'filenames'.")
    raw = _array(d[b"data"], path, "b'data'")
    if raw.ndim != 2 or raw.shape[1] != 3072:
        raise DataError(f"{path}: b'data' has shape {raw.shape}; expected N x 3072 (32x32x3 per row).")
    if raw.dtype != np.uint8:
        lo, hi = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
        if lo < 0 or hi > 255:
            raise DataError(f"{path}: pixel values run from {lo} to {hi}, outside 0..255; "
                            "replace the file with the official batch.")
    data = raw.astype(np.uint8)
    labels = _labels(d[b"labels"], len(data), path)
    files = d[b"filenames"]
    if not isinstance(files, list) or len(files) != len(data) or not all(
            isinstance(n, (bytes, str)) and 0 < len(n) <= 255 for n in files):
        raise DataError(f"{path}: b'filenames' must be a list of {len(data)} file names.")
    names = [n.decode(errors="replace") if isinstance(n, bytes) else n for n in files]
    if any("/" in n or n in (".", "..") for n in names):
        raise DataError(f"{path}: a file name holds '/' or is '.'/'..'; replace the file with the official batch.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels, names
