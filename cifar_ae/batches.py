"""Training input as a keras.utils.PyDataset: shuffled uint8 batches, optional augmentation, scaled on the fly.

Why not `model.fit(x_numpy)`: on TF 2.21 CPU it stalls 7-35 s at many epoch starts (tf.data autotune).
A PyDataset also lets augmentation run in worker processes, so it never starves the model.
"""
from __future__ import annotations

import numpy as np
import keras

TARGETS = ("label", "reconstruction", "joint")


def steps_per_epoch(images, batch_size, drop_last=False) -> int:
    """Batches in one epoch: the partial last batch counts unless it is dropped."""
    return images // batch_size if drop_last else -(-images // batch_size)


class ArrayBatches(keras.utils.PyDataset):
    """Batches of uint8 images -> float32 inputs and the targets a model wants.

    targets: 'label' -> (x, y); 'reconstruction' -> (x, x); 'joint' -> (x, {"reconstruction": x, "label": y}).
    transform: optional picklable callable ``(uint8 batch, numpy Generator) -> uint8 batch`` (augmentation).
    sample_weight: per-image weights (class weights); for 'joint' they apply to the label output only.
    drop_last: leave out each epoch's partial last batch (a new permutation each epoch, so a different few images).
    Batch ``i`` of epoch ``e`` depends only on (seed, e, i), so workers and reruns reproduce it.
    """

    def __init__(self, x, y, batch_size=128, targets="label", shuffle=True, transform=None,
                 sample_weight=None, scaling=None, seed=0, epoch=0, drop_last=False, **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        if targets not in TARGETS:
            raise ValueError(f"unknown targets '{targets}'; valid: {', '.join(TARGETS)}.")
        self.x, self.y = x, (None if y is None else np.asarray(y).reshape(-1))
        self.batch_size, self.targets, self.shuffle = int(batch_size), targets, shuffle
        self.transform, self.scaling, self.seed, self.drop_last = transform, scaling, seed, bool(drop_last)
        if self.drop_last and len(x) < self.batch_size:
            raise ValueError(f"drop_last needs at least one full batch: got {len(x)} images at batch size "
                             f"{self.batch_size} (lower the batch size, or drop_last=False).")
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight, np.float32)
        self.set_epoch(epoch)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        n = len(self.x)
        self.order = (np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle
                      else np.arange(n))

    def __len__(self):
        return steps_per_epoch(len(self.x), self.batch_size, self.drop_last)

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def __getitem__(self, i):
        idx = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])
        xb = self.x[idx]
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i, 1])
            if getattr(self.transform, "wants_indices", False):  # e.g. the alternating flip
                xb = self.transform(xb, rng, indices=idx, epoch=self.epoch)
            else:
                xb = self.transform(xb, rng)
        inputs = xb.astype(np.float32) / 255.0
        if self.scaling is not None:  # classifier input may be mean/z-scaled; reconstruction target stays in [0, 1]
            shift, scale = self.scaling
            model_in = (inputs - shift) / scale
        else:
            model_in = inputs
        sw = None if self.sample_weight is None else self.sample_weight[idx]
        if self.targets == "reconstruction":
            return (model_in, inputs) if sw is None else (model_in, inputs, sw)
        yb = self.y[idx]
        if self.targets == "label":
            return (model_in, yb) if sw is None else (model_in, yb, sw)
        out = {"reconstruction": inputs, "label": yb}
        if sw is None:
            return model_in, out
        # Keras needs a weight per output; (B, 1, 1) broadcasts over the per-pixel MSE map
        return model_in, out, {"reconstruction": np.ones((len(idx), 1, 1), np.float32), "label": sw}
