"""CIFAR-10 loading, the study's imbalanced subset, scaling, validation splits and class weights.

Canonical order everywhere is (label, original file name): the official python batches carry
the file names, the PNG export keeps them, so both formats decode to identical arrays.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
# The study cut these three classes to half their training images.
STUDY_REDUCED_CLASSES = ("bird", "deer", "truck")
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SUBSET_FILE = REPO_DATA_DIR / "imbalanced_removed.txt"

KERAS_CACHE = Path("~/.keras/datasets/cifar-10-batches-py").expanduser()
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DOWNLOAD_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """Bad or missing data; the message names the file and the fix."""


@dataclass
class Cifar10:
    """Decoded CIFAR-10. Unpacks like keras: ``(x_train, y_train), (x_test, y_test), names = load_cifar10()``."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_files: np.ndarray  # "class/file.png", canonical order
    test_files: np.ndarray
    source: str
    digest: str = ""  # sha256 of the decoded arrays (format-independent): the data part of every run key
    class_names: tuple = CLASS_NAMES

    def __iter__(self):
        yield (self.x_train, self.y_train)
        yield (self.x_test, self.y_test)
        yield self.class_names


# --------------------------------------------------------------------------- safe pickles
# A CIFAR-10 batch is a pickled dict of a uint8 array, a list of int labels and a list of file names. numpy's
# own unpickling trusts the dtype state it is given (a forged one can hide an object field or an offset past
# the item size, and numpy then dereferences attacker bytes), so numpy never sees the pickle: the globals a
# batch uses are mapped to inert records, which are checked and only then turned into arrays by frombuffer.

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
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASS_NAMES)))
    if len(bad):
        raise DataError(f"{where}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside 0..9 "
                        f"({len(bad)} such labels); CIFAR-10 has 10 classes. Replace the file with the official batch.")


# --------------------------------------------------------------------------- the two formats

def _read_batch(path):
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


def _load_batches(root: Path, files):
    parts = [_read_batch(root / f) for f in files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    names = [n for p in parts for n in p[2]]
    return _canonical(x, y, [f"{CLASS_NAMES[label]}/{n}" for label, n in zip(y, names)])


def _decode_image(path):
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.size != (32, 32) or im.mode != "RGB":
                raise DataError(f"{path}: image is {im.size[0]}x{im.size[1]} {im.mode}; CIFAR-10 images must be 32x32 RGB.")
            return np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e}).") from None


def _list_folder_split(split_dir: Path):
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing split folder; a CIFAR-10 image tree has train/<class>/ and "
                        "test/<class>/ for all 10 classes. Point CIFAR10_DIR at a complete copy.")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    unknown = [c for c in classes if c not in CLASS_NAMES]
    if unknown:
        raise DataError(f"{split_dir / unknown[0]}: unknown class folder '{unknown[0]}'; "
                        f"class folders must be named {', '.join(CLASS_NAMES)}.")
    files = []
    for label, name in enumerate(CLASS_NAMES):
        d = split_dir / name
        if not d.is_dir():
            raise DataError(f"{d}: missing class folder '{name}' (found {len(classes)} of 10 classes); "
                            "point CIFAR10_DIR at a complete CIFAR-10 tree.")
        found = [(label, f"{name}/{f}") for f in sorted(os.listdir(d)) if f.lower().endswith(IMAGE_SUFFIXES)]
        if not found:
            raise DataError(f"{d}: class folder '{name}' has no images; point CIFAR10_DIR at a complete CIFAR-10 tree.")
        files += found
    return files


def _decode_many(paths):
    return np.stack([_decode_image(p) for p in paths])


def _load_folder_split(split_dir: Path):
    files = _list_folder_split(split_dir)
    paths = [split_dir / rel for _, rel in files]
    workers = min(os.cpu_count() or 1, 8)
    if workers > 1 and len(paths) >= 4000:  # PNG decoding is CPU-bound: one process per core
        from concurrent.futures import ProcessPoolExecutor
        chunks = [paths[i:i + 2000] for i in range(0, len(paths), 2000)]
        with ProcessPoolExecutor(workers) as pool:
            x = np.concatenate(list(pool.map(_decode_many, chunks)))
    else:
        x = _decode_many(paths)
    y = np.array([label for label, _ in files], dtype=np.int64)
    return _canonical(x, y, [rel for _, rel in files])


def _canonical(x, y, rel_names):
    """Sort by (label, file name): the order both formats share."""
    order = sorted(range(len(y)), key=lambda i: (int(y[i]), rel_names[i].split("/", 1)[1]))
    order = np.asarray(order, dtype=np.int64)
    return x[order], y[order].astype(np.int64), np.asarray(rel_names)[order]


def _detect_format(root: Path) -> str | None:
    if (root / "data_batch_1").is_file() and (root / "test_batch").is_file():
        return "batches"
    if (root / "cifar-10-batches-py" / "data_batch_1").is_file():
        return "batches-nested"
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "folders"  # a missing split is named when it is listed
    return None


def _fingerprint(root: Path, fmt: str) -> str:
    """Cache key: names, sizes and mtimes of every source file (cheap, changes when any file does)."""
    h = hashlib.sha256(f"{fmt}:{root.resolve()}".encode())
    if fmt == "folders":
        for split in ("train", "test"):
            for dirpath, dirnames, filenames in os.walk(root / split, followlinks=True):  # symlinked class folders too
                dirnames.sort()
                for f in sorted(filenames):
                    st = os.stat(os.path.join(dirpath, f))
                    h.update(f"{os.path.relpath(os.path.join(dirpath, f), root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    else:
        for f in sorted(root.iterdir()):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    return Path(os.environ.get("CIFAR_AE_CACHE", "~/.cache/cifar_ae")).expanduser()


ARRAY_SPEC = {"x_train": (np.uint8, (32, 32, 3)), "y_train": (np.int64, ()), "x_test": (np.uint8, (32, 32, 3)),
              "y_test": (np.int64, ())}


def arrays_digest(arrays: dict) -> str:
    """sha256 over the decoded images and labels (shape, dtype and bytes), the same for both source formats."""
    h = hashlib.sha256()
    for k in ARRAY_SPEC:
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _atomic_save_npz(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


_LOADED: dict = {}  # cache file -> Cifar10 already read and checked by this process (its key names its sources)


def _read_cache(cache: Path, root: Path) -> Cifar10 | None:
    """The cached arrays if they are what the sidecar says (shapes, dtypes, sha256), else None (rebuilt)."""
    sidecar = cache.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        with np.load(cache, allow_pickle=False) as z:
            arrays = {k: z[k] for k in (*ARRAY_SPEC, "train_files", "test_files")}
    except Exception:
        return None
    for k, (dtype, tail) in ARRAY_SPEC.items():
        a = arrays[k]
        if a.dtype != dtype or a.shape[1:] != tail or len(a) != len(arrays[k.replace("x_", "y_")]):
            return None
    if arrays["train_files"].shape != arrays["y_train"].shape or arrays["test_files"].shape != arrays["y_test"].shape:
        return None
    digest = arrays_digest(arrays)
    if not isinstance(meta, dict) or meta.get("sha256") != digest:
        return None
    return Cifar10(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   arrays["train_files"], arrays["test_files"], source=str(root), digest=digest)


def _load_from(root: Path, use_cache: bool) -> Cifar10:
    fmt = _detect_format(root)
    if fmt == "batches-nested":
        root, fmt = root / "cifar-10-batches-py", "batches"
    if fmt is None:
        raise DataError(f"{root}: neither official batches (data_batch_1..5, test_batch) nor train/ and test/ "
                        "class folders; point CIFAR10_DIR at one of those.")
    cache = cache_dir() / f"cifar10-{_fingerprint(root, fmt)}.npz"
    if use_cache and str(cache) in _LOADED:  # this process already loaded and checked it
        return _LOADED[str(cache)]
    if use_cache and cache.is_file():
        cached = _read_cache(cache, root)
        if cached is not None:
            _LOADED[str(cache)] = cached
            return cached  # a damaged or mislabelled cache is rebuilt below
    if fmt == "batches":
        train = _load_batches(root, [f"data_batch_{i}" for i in range(1, 6)])
        test = _load_batches(root, ["test_batch"])
    else:
        train = _load_folder_split(root / "train")
        test = _load_folder_split(root / "test")
    arrays = dict(x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    for split, y in (("train", train[1]), ("test", test[1])):
        check_labels(y, f"{root} ({split})")
    data = Cifar10(train[0], train[1], test[0], test[1], train[2], test[2], source=str(root),
                   digest=arrays_digest(arrays))
    if use_cache:
        _atomic_save_npz(cache, **arrays, train_files=data.train_files, test_files=data.test_files)
        meta = {"sha256": data.digest, "source": str(root), "format": fmt,
                "shapes": {k: list(v.shape) for k, v in arrays.items()}, "dtypes": {k: v.dtype.str for k, v in arrays.items()}}
        tmp = cache.with_suffix(f".tmp{os.getpid()}.json")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, cache.with_suffix(".json"))
        _LOADED[str(cache)] = data
    return data


def _download() -> Path:
    import keras
    path = keras.utils.get_file("cifar-10-batches-py", origin=DOWNLOAD_URL, untar=True, file_hash=DOWNLOAD_SHA256)
    return Path(path)


def load_cifar10(source=None, download: bool | None = None, use_cache: bool = True) -> Cifar10:
    """Load CIFAR-10 as uint8 NHWC images and int64 labels in canonical (label, file name) order.

    Looks in order at: ``source``, ``$CIFAR10_DIR``, the keras cache ``~/.keras/datasets/cifar-10-batches-py``,
    then downloads with keras' ``get_file`` (hash-checked) if ``download`` is true or ``CIFAR_AE_DOWNLOAD=1``.
    """
    looked = []
    for label, cand in (("source argument", source), ("$CIFAR10_DIR", os.environ.get("CIFAR10_DIR")),
                        ("keras cache", KERAS_CACHE)):
        if not cand:
            continue
        root = Path(cand).expanduser()
        if root.exists():
            return _load_from(root, use_cache)
        looked.append(f"{label} {root}")
    if download is None:
        download = os.environ.get("CIFAR_AE_DOWNLOAD") == "1"
    if download:
        return _load_from(_download(), use_cache)
    raise DataError("CIFAR-10 not found (looked at: " + "; ".join(looked or ["no CIFAR10_DIR set", f"keras cache {KERAS_CACHE}"])
                    + "). Fix: set CIFAR10_DIR to a folder with train/<class>/*.png and test/<class>/*.png or the official "
                    "data_batch_1..5 + test_batch, or allow a download with CIFAR_AE_DOWNLOAD=1 (or download=True).")


def array_digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# --------------------------------------------------------------------------- subsets

def class_index(name_or_index) -> int:
    if isinstance(name_or_index, (int, np.integer)):
        return int(name_or_index)
    if name_or_index not in CLASS_NAMES:
        raise DataError(f"unknown class '{name_or_index}'; valid names: {', '.join(CLASS_NAMES)}.")
    return CLASS_NAMES.index(name_or_index)


def _seeded_keep(y, per_class: dict, seed: int) -> np.ndarray:
    """Indices kept: for class c, a seeded random `per_class[c]` of its images (all if c is absent)."""
    kept = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = per_class.get(int(c), len(idx))
        if n > len(idx):
            raise DataError(f"class {CLASS_NAMES[c]} has {len(idx)} images, cannot keep {n}.")
        rng = np.random.default_rng([seed, int(c)])
        kept.append(np.sort(rng.choice(idx, size=n, replace=False)))
    return np.sort(np.concatenate(kept))


def _removed_from_file() -> set:
    return set(SUBSET_FILE.read_text().split())


def make_imbalanced(x, y, files=None, classes=STUDY_REDUCED_CLASSES, keep_fraction: float = 0.5, seed: int = 0):
    """The study's subset: `classes` keep `keep_fraction` of their training images -> (x, y, kept_indices).

    With the study's settings and `files` given, the versioned list in data/ decides, so the subset is the
    same on every machine and format; otherwise a seeded choice per class (which generated that list).
    """
    y = np.asarray(y).reshape(-1)
    reduced = {class_index(c) for c in classes}
    per_class = {c: int(round(np.sum(y == c) * keep_fraction)) for c in reduced}
    study = set(reduced) == {class_index(c) for c in STUDY_REDUCED_CLASSES} and keep_fraction == 0.5 and seed == 0
    if files is not None and study and SUBSET_FILE.is_file():
        removed = _removed_from_file()
        kept = np.flatnonzero([f not in removed for f in files])
        want = len(y) - sum(np.sum(y == c) - n for c, n in per_class.items())
        if len(kept) != want:
            raise DataError(f"{SUBSET_FILE}: matched {len(y) - len(kept)} of its file names in this training set, "
                            f"expected {len(y) - want}; is this the full CIFAR-10 training set?")
    else:
        kept = _seeded_keep(y, per_class, seed)
    return x[kept], y[kept], kept


def make_balanced(x, y, per_class: int = 2500, seed: int = 0):
    """Balanced control with as many images as the subset's smallest classes -> (x, y, kept_indices)."""
    y = np.asarray(y).reshape(-1)
    kept = _seeded_keep(y, {int(c): per_class for c in np.unique(y)}, seed)
    return x[kept], y[kept], kept


def write_subset_file(files, y, path=SUBSET_FILE):
    """Regenerate data/imbalanced_removed.txt from the seeded rule (run once; the file is versioned)."""
    kept = set(_seeded_keep(np.asarray(y), {class_index(c): int(np.sum(y == class_index(c)) // 2)
                                            for c in STUDY_REDUCED_CLASSES}, 0).tolist())
    removed = [f for i, f in enumerate(files) if i not in kept]
    tmp = Path(str(path) + ".tmp")
    tmp.write_text("\n".join(removed) + "\n")
    os.replace(tmp, path)
    return removed


def train_val_split(x, y, val_fraction: float = 0.3, seed: int = 0):
    """Stratified hold-out from the training data -> (x_train, y_train), (x_val, y_val)."""
    from sklearn.model_selection import train_test_split
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=val_fraction, stratify=y, random_state=seed)
    return (x_tr, y_tr), (x_val, y_val)


# --------------------------------------------------------------------------- scaling and weights

SCALINGS = ("unit", "mean", "zscore")


def check_images(x, where="images"):
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        shape = getattr(x, "shape", None)
        dtype = getattr(x, "dtype", type(x).__name__)
        raise DataError(f"{where}: expected uint8 array of shape (N, 32, 32, 3), got {dtype} {shape}; "
                        "pass raw CIFAR-10 images (scaling happens inside).")
    return x


def fit_scaling(x_train, mode: str = "unit"):
    """Statistics for `scale_images`, from training images only: (shift, scale) per channel."""
    if mode not in SCALINGS:
        raise DataError(f"unknown scaling '{mode}'; valid: {', '.join(SCALINGS)}.")
    x = check_images(x_train, "fit_scaling").astype(np.float64) / 255.0
    if mode == "unit":
        return np.zeros(3, np.float32), np.ones(3, np.float32)
    mean = x.mean(axis=(0, 1, 2)).astype(np.float32)
    std = x.std(axis=(0, 1, 2)).astype(np.float32) if mode == "zscore" else np.ones(3, np.float32)
    return mean, std


def scale_images(x, stats=None):
    """uint8 -> float32: /255, then (x - shift) / scale with `fit_scaling` statistics."""
    out = np.asarray(x, dtype=np.float32) / 255.0
    if stats is not None:
        shift, scale = stats
        out = (out - shift) / scale
    return out


def class_weights(y, method: str = "inverse", beta: float = 0.999) -> dict:
    """{class: weight}. 'inverse': scikit-learn 'balanced'; 'effective': Cui et al. 2019, (1-beta)/(1-beta^n)."""
    y = np.asarray(y).reshape(-1)
    classes = np.unique(y)
    if method == "inverse":
        from sklearn.utils.class_weight import compute_class_weight
        w = compute_class_weight("balanced", classes=classes, y=y)
    elif method == "effective":
        n = np.array([np.sum(y == c) for c in classes], dtype=np.float64)
        w = (1.0 - beta) / (1.0 - np.power(beta, n))
        w = w / w.sum() * len(classes)  # normalise so the mean weight is 1
    else:
        raise DataError(f"unknown class-weight method '{method}'; valid: inverse, effective.")
    return {int(c): float(v) for c, v in zip(classes, w)}
