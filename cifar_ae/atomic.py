"""Files written whole or not at all: a temp file beside the target, then os.replace. On any failure (a full disk,
an interrupt) the temp file goes too, so a failed write leaves neither half a file nor a stray temp file."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path, write, suffix="") -> Path:
    """Call write(temp_path), then rename it onto `path`. suffix: the temp file's extension where the writer
    needs one (Keras' .keras, numpy's .npz)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name.removesuffix(suffix)}.tmp{os.getpid()}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
