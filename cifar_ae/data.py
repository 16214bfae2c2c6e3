"""CIFAR-10 loading, the study's imbalanced subset, scaling, validation splits and class weights.

Canonical order everywhere is (label, original file name): the official python batches carry
the file names, the PNG export keeps them, so both formats decode to identical arrays.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_atomic
from .batchfile import check_labels, read_batch
from .errors import DataError

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


def _load_batches(root: Path, files):
    parts = [read_batch(root / f) for f in files]
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


def _walk_error(e: OSError):
    if isinstance(e, FileNotFoundError):
        return  # a missing split or class folder is named, with its fix, when the split is listed
    raise DataError(f"{e.filename}: {e.strerror or e} while listing the CIFAR-10 tree; fix or remove that entry.")


def _fingerprint(root: Path, fmt: str) -> str:
    """Cache key: names, sizes and mtimes of every source file (cheap, changes when any file does)."""
    h = hashlib.sha256(f"{fmt}:{root.resolve()}".encode())
    if fmt == "folders":
        for split in ("train", "test"):
            seen = set()
            for dirpath, dirnames, filenames in os.walk(root / split, followlinks=True, onerror=_walk_error):
                real = os.path.realpath(dirpath)  # symlinked class folders are followed, a loop of links is not
                if real in seen:
                    raise DataError(f"{dirpath}: a symbolic link loops back to {real}; remove that link from the "
                                    "CIFAR-10 tree.")
                seen.add(real)
                dirnames.sort()
                rel = os.path.relpath(dirpath, root)  # once per folder: relpath per file was 2/3 of the time
                for f in sorted(filenames):
                    st = os.stat(os.path.join(dirpath, f))
                    h.update(f"{rel}{os.sep}{f}:{st.st_size}:{st.st_mtime_ns};".encode())
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
    """np.savez to a temp file, then rename; on any failure (a full disk) the temp file goes too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def _write_cache(cache: Path, data, arrays, root: Path, fmt: str) -> None:
    """The decoded arrays and their sidecar; a cache that cannot be written (read-only, full, a file in the way)
    is a warning, and this run goes on without it."""
    try:
        _atomic_save_npz(cache, **arrays, train_files=data.train_files, test_files=data.test_files)
        meta = {"sha256": data.digest, "source": str(root), "format": fmt,
                "shapes": {k: list(v.shape) for k, v in arrays.items()}, "dtypes": {k: v.dtype.str for k, v in arrays.items()}}
        write_atomic(cache.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    except OSError as e:
        import warnings
        warnings.warn(f"CIFAR-10 cache not written to {cache.parent} ({e.strerror or e}); running without it. Set "
                      "CIFAR_AE_CACHE to a writable folder with 200 MB free to decode the images once.", stacklevel=2)


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
    """_read_tree, with any filesystem error (a link loop, permissions, a vanished file) as one DataError line."""
    try:
        return _read_tree(root, use_cache)
    except OSError as e:
        raise DataError(f"{e.filename or root}: {e.strerror or e} while reading CIFAR-10; fix that entry or point "
                        "CIFAR10_DIR at a readable copy.") from None


def _read_tree(root: Path, use_cache: bool) -> Cifar10:
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
        _write_cache(cache, data, arrays, root, fmt)
        _LOADED[str(cache)] = data
    return data


DOWNLOAD_MB = 163  # the size of cifar-10-python.tar.gz


def _download() -> Path:
    import keras
    print(f"CIFAR-10 not found locally: downloading {DOWNLOAD_MB} MB from {DOWNLOAD_URL} (sha256-checked) into "
          f"{KERAS_CACHE.parent}, once; set CIFAR10_DIR to use a copy you have, or CIFAR_AE_DOWNLOAD=0 to never "
          "download.", flush=True)
    try:
        path = keras.utils.get_file("cifar-10-batches-py", origin=DOWNLOAD_URL, untar=True, file_hash=DOWNLOAD_SHA256)
    except Exception as e:  # get_file raises a bare Exception for a failed fetch, ValueError for a bad hash
        raise DataError(f"CIFAR-10 download from {DOWNLOAD_URL} failed ({str(e).splitlines()[0][:200]}); set "
                        "CIFAR10_DIR to a copy you have (train/<class>/*.png or the python batches).") from None
    return Path(path)


def load_cifar10(source=None, download: bool | None = None, use_cache: bool = True) -> Cifar10:
    """Load CIFAR-10 as uint8 NHWC images and int64 labels in canonical (label, file name) order.

    Looks in order at: ``source``, ``$CIFAR10_DIR``, the keras cache ``~/.keras/datasets/cifar-10-batches-py``,
    then downloads with keras' ``get_file`` (hash-checked), as ``keras.datasets.cifar10`` does on first use, unless
    ``download`` is false or ``CIFAR_AE_DOWNLOAD=0`` (the tests set it: they never download).
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
        download = os.environ.get("CIFAR_AE_DOWNLOAD", "1") != "0"
    if download:
        return _load_from(_download(), use_cache)
    raise DataError("CIFAR-10 not found (looked at: " + "; ".join(looked or ["no CIFAR10_DIR set", f"keras cache {KERAS_CACHE}"])
                    + "). Fix: set CIFAR10_DIR to a folder with train/<class>/*.png and test/<class>/*.png or the official "
                    "data_batch_1..5 + test_batch, or allow the download (unset CIFAR_AE_DOWNLOAD=0, or download=True).")


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
    write_atomic(path, lambda tmp: tmp.write_text("\n".join(removed) + "\n"))
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


def sample_weights(y, method: str = "inverse") -> np.ndarray:
    """Each image's weight, its class's `class_weights` (Keras 3 takes per-sample weights for one output of many)."""
    y = np.asarray(y).reshape(-1)
    cw = class_weights(y, method)
    return np.array([cw[int(c)] for c in y], np.float32)
