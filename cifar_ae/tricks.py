"""Training tricks beyond the study, each named by a Trial field and off when that field is at its off value.

TRICKS lists them as data (field, what it does, off value): `python -m cifar_ae list` trials use them, the v3
notebook tables them for its trial, and experiments/v3_ablation.toml and v4_ablation.toml switch each off in turn (results/v3_ablation.md, v4_ablation.md).
"""
from __future__ import annotations

import math

import numpy as np
import keras
from keras import ops

TRICKS = (  # (Trial field, what it does, its off value)
    ("lr_schedule", "'onecycle': linear warm-up to the peak LR over `warmup` of training, then cosine decay", None),
    ("weight_decay", "decoupled (AdamW-style) weight decay", None),
    ("weight_decay_skip", "layers whose names start with these prefixes take no weight decay (v4: the decoder, "
     "which airbench94's decay was not tuned for)", ()),
    ("label_smoothing", "cross-entropy against (1 - eps) one-hot + eps uniform", 0.0),
    ("recon_weight", "(a, b): the reconstruction loss weight goes a -> b linearly over the epochs", None),
    ("batch_sizes", "(b1, b2, ..): the batch size grows, one size per equal stage of the epochs", None),
    ("tta_flip", "test predictions average the image and its mirror", False),
    ("tta_crops", "... and the image shifted 1 px up-left and down-right (airbench's multi-crop TTA)", False),
    ("logit_adjustment", "tau: test predictions divided by the training class prior ** tau (post-hoc logit "
     "adjustment, Menon et al. 2021): the imbalanced training set's prior taken out for the balanced test set", 0.0),
    ("drop_last", "training leaves out each epoch's partial last batch (airbench's loader): a few images' BatchNorm "
     "statistics would otherwise end every epoch", False),
    ("whitening", "a frozen 2x2 patch-whitening first conv, from the training images' patch eigenvectors", False),
    ("momentum", "SGD's Nesterov momentum (airbench: 0.85)", None),
    ("muon_learning_rate", "optimizer 'muon': each conv filter bank steps along its orthogonalised momentum (Muon, "
     "as airbench94_muon), norm reset first; the rest take Nesterov SGD at learning_rate", None),
    ("ema_momentum", "an EMA of the weights, written into the model every epoch (lookahead-like)", None),
    ("lookahead", "airbench94's lookahead: every 5 steps the weights and BatchNorm statistics move to a slow copy "
     "pulled toward them by 1 - d, d = lookahead x (step / total)^3; the run ends on the slow copy", None),
    ("precision", "'auto': bf16 compute, float32 variables, only where bf16 is native (cifar_ae.hardware)", "float32"),
)
MODEL_ARG_TRICKS = (  # the builder's own tricks, set through Trial.model_args: (key, what it does, its off value)
    ("bn_momentum", "BatchNorm moving-statistics momentum (Keras' convention; its default 0.99 lags in short runs)", 0.99),
    ("bn_scale", "a learnt BatchNorm scale (airbench has none)", True),
    ("bias_lr_scale", "BatchNorm biases at this multiple of the learning rate (airbench: 64)", 1.0),
    ("dirac", "convs start as partial identities (airbench's dirac_ init)", False),
    ("head_std", "the head's weights start at this sd (None: glorot, about airbench94's; sd 1 stalls v4)", None),
)


@keras.saving.register_keras_serializable("cifar_ae")
class SmoothedSparseCE(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing (Keras' sparse loss has none)."""

    def __init__(self, smoothing=0.1, name="smoothed_sparse_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        y_pred = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0)
        logp = ops.log(y_pred)
        nll = -ops.take_along_axis(logp, ops.expand_dims(ops.cast(ops.reshape(y_true, (-1,)), "int32"), -1), axis=-1)[:, 0]
        return (1.0 - self.smoothing) * nll - self.smoothing * ops.mean(logp, axis=-1)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing}


@keras.saving.register_keras_serializable("cifar_ae")
class WeightedMSE(keras.losses.Loss):
    """MSE times a weight held in a variable, so a callback can schedule it during training."""

    def __init__(self, weight=1.0, name="weighted_mse", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight = keras.Variable(float(weight), trainable=False, name="recon_weight")

    def call(self, y_true, y_pred):
        return self.weight * ops.mean(ops.square(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32")), axis=-1)

    def get_config(self):
        return {**super().get_config(), "weight": float(self.weight.numpy())}


class ReconWeightSchedule(keras.callbacks.Callback):
    """Sets the reconstruction loss weight linearly from `start` (first epoch) to `end` (last epoch)."""

    def __init__(self, loss: WeightedMSE, start: float, end: float, epochs: int):
        super().__init__()
        self.loss, self.start, self.end, self.epochs = loss, float(start), float(end), int(epochs)

    def value(self, epoch):
        t = epoch / max(1, self.epochs - 1)
        return self.start + (self.end - self.start) * t

    def on_epoch_begin(self, epoch, logs=None):
        self.loss.weight.assign(self.value(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["recon_weight"] = float(self.loss.weight.numpy())


class OneCycleLR(keras.callbacks.Callback):
    """Per-batch LR: linear warm-up from peak/25 to `peak` over the first `warmup` of training, cosine to ~0."""

    def __init__(self, peak: float, epochs: int, warmup: float = 0.2):
        super().__init__()
        self.peak, self.epochs, self.warmup = float(peak), int(epochs), float(warmup)
        self.epoch = 0

    def lr_at(self, progress):
        if progress < self.warmup:
            return self.peak * (0.04 + 0.96 * progress / self.warmup)
        t = (progress - self.warmup) / max(1e-9, 1 - self.warmup)
        return self.peak * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps") or 1
        self.model.optimizer.learning_rate.assign(self.lr_at((self.epoch + batch / steps) / self.epochs))


LOOKAHEAD_EVERY = 5  # airbench94's: steps between pulls


class Lookahead(keras.callbacks.Callback):
    """airbench94's lookahead. Every `every` optimizer steps, each float model variable (weights and BatchNorm
    moving statistics alike, so the statistics match the weights) is pulled: slow += (1 - d) (fast - slow), then
    fast = slow. d = decay * (step / total_steps)^3 is ~0 early (no averaging while the LR is high) and `decay` at
    the end (airbench: 0.95^5); the last step ends on the slow copy. The slow copy is `variables`: the run's
    checkpoints carry it (cifar_ae.resume), so a resumed run pulls toward the same weights."""

    def __init__(self, model, decay: float, total_steps: int, every: int = LOOKAHEAD_EVERY):
        super().__init__()
        self.decay, self.total_steps, self.every = float(decay), int(total_steps), int(every)
        self.fast = [v for v in model.variables if "float" in str(v.dtype)]
        self.variables = [keras.Variable(v.numpy(), dtype=v.dtype, trainable=False, name=f"lookahead_{i}")
                          for i, v in enumerate(self.fast)]

    def decay_at(self, step: int) -> float:
        return self.decay * min(1.0, step / self.total_steps) ** 3

    def pull(self, decay: float):
        for fast, slow in zip(self.fast, self.variables):
            slow.assign(slow + (1.0 - decay) * (fast - slow))
            fast.assign(slow)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every == 0 or step == self.total_steps:
            self.pull(self.decay_at(step))


def batch_stages(batch_sizes, epochs):
    """[(first_epoch, end_epoch, batch_size)]: `epochs` split into len(batch_sizes) near-equal stages."""
    bounds = np.linspace(0, epochs, len(batch_sizes) + 1).round().astype(int)
    return [(int(a), int(b), int(bs)) for a, b, bs in zip(bounds[:-1], bounds[1:], batch_sizes) if b > a]


def shift(x, dy, dx):
    """Images moved by (dy, dx) pixels, the uncovered edge filled by reflection."""
    p = max(abs(dy), abs(dx))
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    h, w = x.shape[1:3]
    return padded[:, p - dy:p - dy + h, p - dx:p - dx + w]


def adjust_for_prior(probs, train_labels, tau):
    """Post-hoc logit adjustment (Menon et al. 2021, arXiv 2007.07314): softmax(logits - tau * log prior), computed
    on probabilities as probs / prior ** tau, renormalised. A net trained on an imbalanced set predicts its prior;
    tau = 1 is the Bayes-optimal correction for a balanced test set (CIFAR-10's). No training compute."""
    probs = np.asarray(probs, dtype=np.float64)
    counts = np.bincount(np.asarray(train_labels).ravel(), minlength=probs.shape[-1])
    if counts.shape[0] != probs.shape[-1] or (counts == 0).any():
        raise ValueError(f"logit adjustment needs every one of the {probs.shape[-1]} classes in the training labels; "
                         f"got counts {counts.tolist()} (set logit_adjustment=0 for a subset of classes).")
    adjusted = probs / (counts / counts.sum()) ** tau
    return (adjusted / adjusted.sum(axis=-1, keepdims=True)).astype(np.float32)


def predict_tta(model, x, batch_size=256, flip=True, crops=False):
    """Label probabilities averaged over test-time views: the image and its mirror (flip); with crops also the
    image shifted 1 px up-left and down-right (airbench's weights: 1/2 centre, 1/4 each shift). Other outputs
    (the reconstruction) come from the plain image."""
    from .inference import predict

    def probs(v):
        out = predict(model, v, batch_size)
        p = out["label"] if isinstance(out, dict) else out
        if flip:
            q = predict(model, v[:, :, ::-1, :], batch_size)
            p = (p + (q["label"] if isinstance(q, dict) else q)) / 2
        return out, p
    out, p = probs(x)
    if crops:
        p = 0.5 * p + 0.25 * probs(shift(x, -1, -1))[1] + 0.25 * probs(shift(x, 1, 1))[1]
    return {**out, "label": p} if isinstance(out, dict) else p
