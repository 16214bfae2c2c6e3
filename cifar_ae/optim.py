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


def _adam(learning_rate, weight_decay=None, momentum=None, ema_momentum=None, ema_every=None, muon_learning_rate=None):
    import keras
    return keras.optimizers.Adam(learning_rate, **_extra(weight_decay, ema_momentum, ema_every))


def _adamw(learning_rate, weight_decay=None, momentum=None, ema_momentum=None, ema_every=None, muon_learning_rate=None):
    import keras
    return keras.optimizers.AdamW(learning_rate, **_extra(weight_decay, ema_momentum, ema_every))


def _sgd(learning_rate, weight_decay=None, momentum=None, ema_momentum=None, ema_every=None, muon_learning_rate=None):
    import keras
    return keras.optimizers.SGD(learning_rate, momentum=0.9 if momentum is None else momentum, nesterov=True,
                                **_extra(weight_decay, ema_momentum, ema_every))


def _muon(learning_rate, weight_decay=None, momentum=None, ema_momentum=None, ema_every=None, muon_learning_rate=None):
    if not muon_learning_rate:
        raise ValueError("optimizer 'muon' needs muon_learning_rate, the conv filters' step (airbench94_muon: 0.24).")
    return conv_muon_class()(learning_rate, muon_learning_rate / learning_rate, 0.9 if momentum is None else momentum,
                             **_extra(weight_decay, ema_momentum, ema_every))


def batchnormed_convs(model) -> list:
    """The Conv2D layers whose every output goes into a BatchNormalization, directly or through a max-pool: the filter
    banks whose scale BatchNorm undoes, so only their direction counts (airbench94_muon's Muon parameters)."""
    import keras

    def into_batchnorm(layer):
        consumers = [node.operation for node in layer._outbound_nodes]
        return bool(consumers) and all(isinstance(c, keras.layers.BatchNormalization)
                                       or (isinstance(c, keras.layers.MaxPooling2D) and into_batchnorm(c))
                                       for c in consumers)
    return [layer for layer in model.layers if type(layer) is keras.layers.Conv2D and layer.trainable
            and into_batchnorm(layer)]


_CONV_MUON = []


def conv_muon_class():
    """ConvMuon, built on first use (Keras is imported only when a factory is called).

    Muon (Jordan et al. 2024) as airbench94_muon uses it: each conv filter bank that BatchNorm follows
    (batchnormed_convs, given by `use_muon_for(model)` before training) steps along the orthogonalised Nesterov
    momentum of its gradient (3 Newton-Schulz iterations on the kernel read as a (kh*kw*in, out) matrix), its norm
    first reset to sqrt(out); every other variable (biases, the head, the decoder's output layer) takes Nesterov
    SGD. Weight decay does nothing to a Muon kernel (the reset undoes it). keras.optimizers.Muon (3.15) steps only
    2-D variables with Muon and the rest with AdamW, so conv filters would not get Muon there."""
    if _CONV_MUON:
        return _CONV_MUON[0]
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="cifar_ae")
    class ConvMuon(keras.optimizers.Optimizer):
        def __init__(self, learning_rate=0.01, muon_lr_ratio=1.0, momentum=0.9, muon_momentum=0.6, ns_steps=3,
                     name="conv_muon", **kwargs):
            super().__init__(learning_rate=learning_rate, name=name, **kwargs)
            self.muon_lr_ratio, self.momentum, self.muon_momentum = float(muon_lr_ratio), momentum, muon_momentum
            self.ns_steps, self.muon_paths = int(ns_steps), frozenset()

        def use_muon_for(self, model):
            """Muon for the model's batch-normalised conv kernels; an error if it has none."""
            convs = batchnormed_convs(model)
            if not convs:
                raise ValueError(f"optimizer 'muon': model {model.name!r} has no conv layer followed by BatchNorm "
                                 "for Muon to step; use optimizer 'sgd'.")
            self.muon_paths = frozenset(layer.kernel.path for layer in convs)
            return self

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self.momentums = [self.add_variable_from_reference(v, "momentum") for v in var_list]
            # by index: under TensorFlow update_step may get the backend's variable, which has no Keras path
            self.muon_indices = frozenset(i for i, v in enumerate(var_list) if v.path in self.muon_paths)

        @staticmethod
        def orthogonalise(matrix, steps):
            a, b, c = 3.4445, -4.7750, 2.0315  # the quintic whose slope at zero is largest (Muon's)
            tall = matrix.shape[0] > matrix.shape[1]
            x = ops.transpose(matrix) if tall else matrix
            x = x / (ops.sqrt(ops.sum(ops.square(x))) + 1e-7)  # top singular value <= 1
            for _ in range(steps):
                gram = x @ ops.transpose(x)
                x = a * x + (b * gram + c * gram @ gram) @ x
            return ops.transpose(x) if tall else x

        def update_step(self, gradient, variable, learning_rate):
            index = self._get_variable_index(variable)
            buffer = self.momentums[index]
            gradient = ops.cast(gradient, variable.dtype)
            learning_rate = ops.cast(learning_rate, variable.dtype)
            if index in self.muon_indices:  # a batch-normalised conv filter bank: Muon
                self.assign(buffer, buffer * self.muon_momentum + gradient)
                step = gradient + self.muon_momentum * buffer  # Nesterov
                out = variable.shape[-1]
                self.assign(variable, variable * (out ** 0.5) / (ops.sqrt(ops.sum(ops.square(variable))) + 1e-12))
                update = self.orthogonalise(ops.reshape(step, (-1, out)), self.ns_steps)
                self.assign_sub(variable, learning_rate * self.muon_lr_ratio * ops.reshape(update, variable.shape))
            else:  # Nesterov SGD, as keras.optimizers.SGD
                self.assign(buffer, buffer * self.momentum - gradient * learning_rate)
                self.assign_add(variable, buffer * self.momentum - gradient * learning_rate)

        def get_config(self):
            return {**super().get_config(), "muon_lr_ratio": self.muon_lr_ratio, "momentum": self.momentum,
                    "muon_momentum": self.muon_momentum, "ns_steps": self.ns_steps}

    _CONV_MUON.append(ConvMuon)
    return ConvMuon


# Trial.optimizer -> factory(learning_rate, weight_decay, momentum, ema_momentum, ema_every, muon_learning_rate) ->
# keras optimizer. momentum: SGD's (Nesterov; None -> 0.9); Adam's betas stay Keras' defaults; muon: the conv
# filters take ConvMuon's step at muon_learning_rate (scheduled with the LR), the rest SGD's at learning_rate.
OPTIMIZERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd, "muon": _muon}


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
