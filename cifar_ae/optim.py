"""Registries of what a Trial names by string: optimizers and learning-rate schedules.

trials.FIELDS validates `optimizer` and `lr_schedule` against these keys when a Trial is built; training and
tuning build from the same factories. Keras is imported only when a factory is called.
"""
from __future__ import annotations


def _weight_decay(wd):
    return {"weight_decay": wd} if wd else {}


def _adam(learning_rate, weight_decay=None):
    import keras
    return keras.optimizers.Adam(learning_rate, **_weight_decay(weight_decay))


def _adamw(learning_rate, weight_decay=None):
    import keras
    return keras.optimizers.AdamW(learning_rate, **_weight_decay(weight_decay))


def _sgd(learning_rate, weight_decay=None):
    import keras
    return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, **_weight_decay(weight_decay))


# Trial.optimizer -> factory(learning_rate, weight_decay=None) -> keras optimizer
OPTIMIZERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}  # sgd: momentum 0.9, Nesterov


def _plateau(trial, settings, monitor, mode):
    import keras
    return keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=0.5, patience=3, min_lr=1e-5)


def _onecycle(trial, settings, monitor, mode):
    from .tricks import OneCycleLR
    return OneCycleLR(trial.learning_rate, settings["epochs"], trial.warmup)


# Trial.lr_schedule -> factory(trial, settings, monitor, mode) -> keras callback.
# None: constant LR halved when validation stalls 3 epochs (the study's "decay on plateau").
LR_SCHEDULES = {None: _plateau, "onecycle": _onecycle}


def make_optimizer(name, learning_rate, weight_decay=None):
    return OPTIMIZERS[name](learning_rate, weight_decay)
