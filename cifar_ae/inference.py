"""Prediction in fixed-size batches through the model's own predict step: one trace per model (the last batch is
padded, so no shape retraces) and no tf.data pipeline (whose MapDataset logs a C++ error line on TF 2.21)."""
from __future__ import annotations

import numpy as np


def predict(model, x, batch_size=256):
    """model.predict(x) for arrays: a dict of arrays for a multi-output model, else an array."""
    x = np.asarray(x)
    n = len(x)
    if n == 0:
        raise ValueError("predict got no images; pass at least one.")
    size = min(batch_size, n)
    parts = []
    for start in range(0, n, size):
        batch = x[start:start + size]
        if len(batch) < size:  # pad to the traced shape; the padding's outputs are dropped below
            batch = np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)])
        out = model.predict_on_batch(batch)
        parts.append({k: np.asarray(v) for k, v in out.items()} if isinstance(out, dict) else np.asarray(out))
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
    return np.concatenate(parts)[:n]
