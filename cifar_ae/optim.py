"""Registries of what a Trial names by string: optimizers and learning-rate schedules.

trials.FIELDS validates `optimizer` and `lr_schedule` against these keys when a Trial is built; training and
tuning build from the same factories. Keras is imported only when a factory is called.
"""
from __future__ import annotations


def _extra(weight_decay, ema_momentum, ema_every):
    kw = {"weight_decay": weight_decay} if weight_decay else {}
    if ema_momentum:  # Keras keeps the EMA and writes it into the model every `ema_every` steps (lookahead-like)
        kw.update(use_ema=True, ema_momentum=ema_momentum, ema_overwrite_frequency=ema_every)
    return kw


def _adam(learning_rate, weight_decay=None, momentum=None, ema_momentum=None, ema_every=None):
    import keras
    return keras.optimizers.Adam(learning_rate, **_extra(weight_decay, ema_momentum, ema_every))


def _adamw(learning_rate, weight_decay=None, momentum=None, ema_momentum=None, ema_every=None):
    import keras
    return keras.optimizers.AdamW(learning_rate, **_extra(weight_decay, ema_momentum, ema_every))


def _sgd(learning_rate, weight_decay=None, momentum=None, ema_momentum=None, ema_every=None):
    import keras
    return keras.optimizers.SGD(learning_rate, momentum=0.9 if momentum is None else momentum, nesterov=True,
                                **_extra(weight_decay, ema_momentum, ema_every))


# Trial.optimizer -> factory(learning_rate, weight_decay, momentum, ema_momentum, ema_every) -> keras optimizer.
# momentum: SGD's (Nesterov; None -> 0.9); Adam's betas stay Keras' defaults.
OPTIMIZERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}


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
