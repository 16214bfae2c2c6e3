"""The study's models, Keras 3 functional API. Sizes are arguments; defaults are the study's.

Output layers are named so losses, metrics and `model.summary()` read the same everywhere:
`reconstruction` (sigmoid image in [0, 1]) and `label` (softmax over 10 classes); encoders end in `features`.
"""
from __future__ import annotations

import inspect

import keras
from keras import layers, ops

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


# --------------------------------------------------------------------------- building blocks

@keras.saving.register_keras_serializable("cifar_ae")
class TiedConv2D(layers.Layer):
    """A 'same' conv whose kernel is reused, transposed, by the decoder (weight tying).

    Call it forward in the encoder and with ``transpose=True`` in the decoder: one layer used twice,
    so Keras saves and loads the tie like any shared layer. Each direction has its own bias.
    """

    def __init__(self, filters, kernel_size=3, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = int(filters), int(kernel_size)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        cin = input_shape[-1]
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(k, k, cin, self.filters), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        self.transpose_bias = self.add_weight(name="transpose_bias", shape=(cin,), initializer="zeros")

    def call(self, x, transpose=False, strides=1, activation=None):
        if not transpose:
            return self.activation(ops.conv(x, self.kernel, strides=1, padding="same") + self.bias)
        y = ops.conv_transpose(x, self.kernel, strides=strides, padding="same") + self.transpose_bias
        return keras.activations.get(activation)(y)

    def compute_output_spec(self, x, transpose=False, strides=1, activation=None):
        b, h, w, _ = x.shape
        if not transpose:
            return keras.KerasTensor((b, h, w, self.filters), dtype=self.compute_dtype)
        s = int(strides)
        return keras.KerasTensor((b, None if h is None else h * s, None if w is None else w * s,
                                  self.kernel.shape[2]), dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "activation": keras.activations.serialize(self.activation)}


def conv_bn_relu(x, filters, name, batchnorm=True, conv=None, bn_momentum=0.99, kernel_size=3):
    """Conv 'same' (3x3 by default) -> (BatchNorm) -> ReLU. `conv` lets a TiedConv2D stand in for the Conv2D."""
    conv = conv or layers.Conv2D(filters, kernel_size, padding="same", use_bias=not batchnorm, name=f"{name}_conv")
    x = conv(x)
    if batchnorm:
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def classifier_head(x, dense_units=(), dropout=0.5, name="label"):
    """Flatten -> [Dense -> Dropout]* -> Dense softmax named `label` (float32 even under mixed precision)."""
    x = layers.Flatten(name="head_flatten")(x)
    for i, units in enumerate(dense_units):
        x = layers.Dense(units, activation="relu", name=f"head_dense{i + 1}")(x)
        x = layers.Dropout(dropout, name=f"head_dropout{i + 1}")(x)
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name=name)(x)


def cnn_blocks(x, filters=(128, 128), convs_per_block=2, dropout=0.3, prefix="cls", kernel_size=3, bn_momentum=0.99):
    """VGG-style blocks: `convs_per_block` conv-BN-ReLU, then max-pool and dropout, per entry of `filters`."""
    for b, f in enumerate(filters):
        for c in range(convs_per_block):
            x = conv_bn_relu(x, f, name=f"{prefix}{b + 1}_{c + 1}", bn_momentum=bn_momentum, kernel_size=kernel_size)
        x = layers.MaxPooling2D(name=f"{prefix}{b + 1}_pool")(x)
        x = layers.Dropout(dropout, name=f"{prefix}{b + 1}_dropout")(x)
    return x


# --------------------------------------------------------------------------- v0: MLP autoencoder

def mlp_autoencoder(code_units=768, input_shape=IMAGE_SHAPE, hidden_units=()):
    """Flatten -> [Dense(h, relu) for h in hidden_units] -> Dense(768, relu) -> BatchNorm (= `features`) ->
    Dense(3072, sigmoid) -> image. hidden_units=(1536,) makes the study's "3 fully connected layers"."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(hidden_units):
        x = layers.Dense(units, activation="relu", name=f"hidden{i + 1}")(x)
    x = layers.Dense(code_units, activation="relu", name="code")(x)
    features = layers.BatchNormalization(name="features")(x)
    x = layers.Dense(int(input_shape[0] * input_shape[1] * input_shape[2]), activation="sigmoid", name="decoder_dense")(features)
    outputs = layers.Reshape(input_shape, dtype="float32", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="mlp_autoencoder")


def dense_classifier(encoder, units=(512,), dropout=0.5):
    """Dense layers on a frozen encoder's feature vector (v0)."""
    x = encoder.output
    for i, u in enumerate(units):
        x = layers.Dense(u, activation="relu", name=f"dense{i + 1}")(x)
        x = layers.Dropout(dropout, name=f"dropout{i + 1}")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="label")(x)
    return keras.Model(encoder.input, outputs, name="dense_classifier")


def conv1d_classifier(encoder, filters=(32, 64), kernel_size=3, dense_units=128, dropout=0.5):
    """1D convolutions along the feature vector, treated as a 1-channel sequence (v0)."""
    x = layers.Reshape((-1, 1), name="as_sequence")(encoder.output)
    for i, f in enumerate(filters):
        x = layers.Conv1D(f, kernel_size, activation="relu", padding="same", name=f"conv1d_{i + 1}")(x)
        x = layers.MaxPooling1D(2, name=f"pool1d_{i + 1}")(x)
    x = layers.Flatten(name="flatten_seq")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense1")(x)
    x = layers.Dropout(dropout, name="dropout1")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="label")(x)
    return keras.Model(encoder.input, outputs, name="conv1d_classifier")


# --------------------------------------------------------------------------- v1/v2: conv encoder and decoder

def vgg_block(x, filters, name, convs=2, kernel_size=3, bn_momentum=0.99, batchnorm=True, tied=None):
    """`convs` conv-(BN)-ReLU at `filters` (the study's encoder blocks). `tied`: a list that collects TiedConv2D
    layers for the decoder to reuse (weight tying), or None."""
    for c in range(convs):
        cname = f"{name}_{c + 1}"
        conv = None
        if tied is not None:
            conv = TiedConv2D(filters, kernel_size, name=f"{cname}_conv")
            tied.append(conv)
        x = conv_bn_relu(x, filters, name=cname, batchnorm=batchnorm, conv=conv, bn_momentum=bn_momentum,
                         kernel_size=kernel_size)
    return x


def residual_stage_block(x, filters, name, convs=2, kernel_size=3, bn_momentum=0.99, **_):
    """He et al. 2016: `convs` conv-BN-ReLU at `filters` plus a 1x1 projection shortcut, added (the parameters of
    a VGG block of as many convs, plus the 1x1)."""
    shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
    y = x
    for c in range(convs):
        y = conv_bn_relu(y, filters, name=f"{name}_{c + 1}", bn_momentum=bn_momentum, kernel_size=kernel_size)
    return layers.Add(name=f"{name}_add")([shortcut, y])


def inception_block(x, filters, name, convs=2, bn_momentum=0.99, **_):
    """Szegedy et al. 2015 (GoogLeNet's module, with the 5x5 branch as two 3x3 as in Szegedy et al. 2016): parallel
    1x1 / 1x1-3x3 / 1x1-3x3-3x3 / 3x3 max-pool-1x1 branches, concatenated to `filters` channels, `convs` // 2
    modules deep (at least one). The reduce convs make it cheap, so each branch is 3/4 of `filters` wide (then a
    1x1 back to `filters`): the encoder's parameters come within ~12% of the VGG encoder's."""
    b = max(8, filters * 3 // 4)
    for m in range(max(1, convs // 2)):
        n = f"{name}_m{m + 1}"
        b1 = conv_bn_relu_k(x, b, 1, f"{n}_b1", bn_momentum)
        b2 = conv_bn_relu_k(conv_bn_relu_k(x, b // 2, 1, f"{n}_b2r", bn_momentum), b, 3, f"{n}_b2", bn_momentum)
        b3 = conv_bn_relu_k(x, b // 2, 1, f"{n}_b3r", bn_momentum)
        b3 = conv_bn_relu_k(conv_bn_relu_k(b3, b, 3, f"{n}_b3a", bn_momentum), b, 3, f"{n}_b3b", bn_momentum)
        b4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{n}_b4pool")(x)
        b4 = conv_bn_relu_k(b4, b, 1, f"{n}_b4", bn_momentum)
        x = layers.Concatenate(name=f"{n}_concat")([b1, b2, b3, b4])
        x = conv_bn_relu_k(x, filters, 1, f"{n}_out", bn_momentum)
    return x


def nasnet_block(x, filters, name, convs=2, bn_momentum=0.99, **_):
    """Zoph et al. 2018, the NASNet-A normal cell, reduced to one input (h = h_prev, as in a first cell): five
    pairwise combinations of separable 3x3 / 5x5 convs, 3x3 average pools and identities, concatenated and mapped
    back to `filters` by a 1x1; `convs` // 2 cells deep (at least one). Nodes `filters` wide: the encoder's
    parameters come within ~5% of the VGG encoder's."""
    c = max(8, filters)
    for m in range(max(1, convs // 2)):
        n = f"{name}_c{m + 1}"
        h = conv_bn_relu_k(x, c, 1, f"{n}_in", bn_momentum)

        def sep(t, k, tag):  # NASNet's ReLU -> separable conv -> BN
            t = layers.Activation("relu", name=f"{n}_{tag}_relu")(t)
            t = layers.SeparableConv2D(c, k, padding="same", use_bias=False, name=f"{n}_{tag}_sep")(t)
            return layers.BatchNormalization(momentum=bn_momentum, name=f"{n}_{tag}_bn")(t)

        def avg(t, tag):
            return layers.AveragePooling2D(3, strides=1, padding="same", name=f"{n}_{tag}_avg")(t)

        nodes = [layers.Add(name=f"{n}_n1")([sep(h, 3, "n1a"), h]),
                 layers.Add(name=f"{n}_n2")([sep(h, 3, "n2a"), sep(h, 5, "n2b")]),
                 layers.Add(name=f"{n}_n3")([avg(h, "n3a"), h]),
                 layers.Add(name=f"{n}_n4")([avg(h, "n4a"), avg(h, "n4b")]),
                 layers.Add(name=f"{n}_n5")([sep(h, 5, "n5a"), sep(h, 3, "n5b")])]
        x = conv_bn_relu_k(layers.Concatenate(name=f"{n}_concat")([h, *nodes]), filters, 1, f"{n}_out", bn_momentum)
    return x


def conv_bn_relu_k(x, filters, kernel_size, name, bn_momentum=0.99):
    return conv_bn_relu(x, filters, name, bn_momentum=bn_momentum, kernel_size=kernel_size)


ENCODER_BLOCKS = {"vgg": vgg_block, "residual": residual_stage_block, "inception": inception_block,
                  "nasnet": nasnet_block}


def conv_encoder(inputs, filters=(32, 64), convs_per_block=1, batchnorm=False, tie=False, kernel_size=3,
                 bn_momentum=0.99, block="vgg"):
    """Encoder blocks each ending in 2x2 max-pooling: 32x32x3 -> (8, 8, filters[-1]) code named `features`.

    block: "vgg" (the study's: `convs_per_block` conv-BN-ReLU), "residual", "inception" or "nasnet"
    (ENCODER_BLOCKS). Returns (code, tied_convs): with `tie` (VGG blocks only) the convs are TiedConv2D layers for
    the decoder to reuse.
    """
    if block not in ENCODER_BLOCKS:
        raise ValueError(f"unknown block '{block}'; valid blocks: {', '.join(ENCODER_BLOCKS)}.")
    if tie and block != "vgg":
        raise ValueError("tie_weights needs block='vgg' (the decoder mirrors the encoder's convolutions).")
    x, tied = inputs, ([] if tie else None)
    for b, f in enumerate(filters):
        x = ENCODER_BLOCKS[block](x, f, name=f"enc{b + 1}", convs=convs_per_block, kernel_size=kernel_size,
                                  bn_momentum=bn_momentum, batchnorm=batchnorm, tied=tied)
        pool_name = "features" if b == len(filters) - 1 else f"enc{b + 1}_pool"
        x = layers.MaxPooling2D(name=pool_name)(x)
    return x, (tied or [])


def conv_decoder(code, filters=(32, 64), convs_per_block=1, upsampling="transpose", tied=None, kernel_size=3):
    """Mirror of `conv_encoder` back to a 32x32x3 sigmoid image named `reconstruction`.

    upsampling='transpose': Conv2DTranspose(stride 2) learns the upsampling (the study's choice);
    'upsampling': UpSampling2D + Conv2D, the alternative the study compared. `tied` reuses encoder kernels.
    """
    if upsampling not in ("transpose", "upsampling"):
        raise ValueError(f"unknown upsampling '{upsampling}'; valid: transpose, upsampling.")
    x = code
    # walk the encoder's convs backwards; each block's first transposed conv also undoes its pooling
    plan = [(b, c) for b in range(len(filters)) for c in range(convs_per_block)][::-1]
    for i, (b, c) in enumerate(plan):
        target = 3 if i == len(plan) - 1 else (filters[b] if c > 0 else filters[b - 1])
        last = i == len(plan) - 1
        stride = 2 if c == convs_per_block - 1 else 1
        name = f"dec{b + 1}_{c + 1}"
        act = "sigmoid" if last else "relu"
        if tied:
            x = tied[b * convs_per_block + c](x, transpose=True, strides=stride, activation=act)
        elif upsampling == "transpose":
            x = layers.Conv2DTranspose(target, kernel_size, strides=stride, padding="same", activation=act,
                                       name=f"{name}_convt")(x)
        else:
            if stride == 2:
                x = layers.UpSampling2D(name=f"{name}_up")(x)
            x = layers.Conv2D(target, kernel_size, padding="same", activation=act, name=f"{name}_conv")(x)
    # a final 'same' conv would break the tie's symmetry, so the last mirrored layer emits the image itself
    return layers.Activation("linear", dtype="float32", name="reconstruction")(x)


def conv_autoencoder(filters=(32, 64), convs_per_block=1, upsampling="transpose", batchnorm=False, tie_weights=False):
    """v1: conv encoder to an (8, 8, 64) code, Conv2DTranspose (or UpSampling2D) decoder."""
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    code, tied = conv_encoder(inputs, filters, convs_per_block, batchnorm, tie=tie_weights)
    outputs = conv_decoder(code, filters, convs_per_block, upsampling, tied if tie_weights else None)
    return keras.Model(inputs, outputs, name="conv_autoencoder")


def encoder_of(model, layer="features"):
    """The sub-model from the image to the named feature layer (frozen copy not needed: same weights)."""
    return keras.Model(model.input, model.get_layer(layer).output, name="encoder")


def feature_classifier(encoder, filters=(128, 128), convs_per_block=2, dense_units=(), dropout=0.3, bn_momentum=0.99):
    """v1: a CNN on the frozen encoder's (8, 8, 64) features; only the head trains."""
    encoder.trainable = False
    x = cnn_blocks(encoder.output, filters, convs_per_block, dropout, prefix="cls", bn_momentum=bn_momentum)
    outputs = classifier_head(x, dense_units, dropout=0.5)
    return keras.Model(encoder.input, outputs, name="feature_classifier")


def joint_model(filters=(32, 64), convs_per_block=2, head_filters=(128, 128), dense_units=(),
                dropout=0.3, upsampling="transpose", tie_weights=False, kernel_size=3, bn_momentum=0.99, block="vgg"):
    """v2: one encoder feeding a decoder (`reconstruction`) and a classifier (`label`), trained together.

    Head variants as in the study: dense_units=() is the one-Dense head (used with Adam),
    dense_units=(512, 256) the two-Dense head (used with SGD). kernel_size is the encoder's and decoder's;
    bn_momentum every BatchNorm's (the search uses 0.9: its trials are too short for Keras' 0.99). block: the
    encoder's block type (ENCODER_BLOCKS: the study's "vgg", or "residual", "inception", "nasnet").
    """
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    code, tied = conv_encoder(inputs, tuple(filters), int(convs_per_block), batchnorm=True, tie=tie_weights,
                              kernel_size=int(kernel_size), bn_momentum=bn_momentum, block=block)
    reconstruction = conv_decoder(code, tuple(filters), int(convs_per_block), upsampling, tied if tie_weights else None,
                                  kernel_size=int(kernel_size))
    x = cnn_blocks(code, tuple(head_filters), 2, dropout, prefix="cls", bn_momentum=bn_momentum)
    label = classifier_head(x, dense_units, dropout=0.5)
    return keras.Model(inputs, {"reconstruction": reconstruction, "label": label}, name="joint_model")


# --------------------------------------------------------------------------- v3: residual joint model

def residual_block(x, filters, name, bn_momentum=0.9):
    """Two conv-BN-ReLU with an identity shortcut (ResNet-9 style: no downsampling inside the block)."""
    y = conv_bn_relu(x, filters, f"{name}_a", bn_momentum=bn_momentum)
    y = conv_bn_relu(y, filters, f"{name}_b", bn_momentum=bn_momentum)
    return layers.Add(name=f"{name}_add")([x, y])


def resnet_stage(x, filters, name, residual=True, bn_momentum=0.9):
    """conv-BN-ReLU to `filters`, 2x2 max-pool, then (optionally) a residual block at the new size."""
    x = conv_bn_relu(x, filters, f"{name}_conv", bn_momentum=bn_momentum)
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    return residual_block(x, filters, f"{name}_res", bn_momentum) if residual else x


def resnet_joint(width=32, head_depth=1, bn_momentum=0.9, decoder="convt", patch_channels=0):
    """v3: a ResNet-9-style encoder to an (8, 8, 4*width) code feeding a decoder and a deeper classifier.

    Same shape as the study's joint model (one encoder, `reconstruction` + `label`), with BatchNorm'd
    residual stages: stem(w) @32 -> stage(2w) @16 (+res) -> conv(4w) + pool @8 = `features`;
    head: residual block(s) @8 -> stage(8w) @4 (+res) -> global max-pool -> Dense.
    BatchNorm momentum 0.9 (Keras' default is 0.99): with ~160 steps an epoch the slower moving
    statistics lag the weights in short runs and inference-mode BatchNorm uses stale statistics (the
    ablation's bn-momentum-0.99 row, results/ablation.md).
    decoder: "convt" (the study's two Conv2DTranspose layers) or "residual" (a residual block @8, then
    v3-cnn-ae's linear 4x4 'unpatchify'), which reconstructs finer detail for little compute at 8x8;
    patch_channels: a linear patch path in the code (see resnet_encoder), for reconstruction.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder '{decoder}'; valid decoders: {', '.join(DECODERS)}.")
    m = bn_momentum
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    code = resnet_encoder(inputs, width, m, patch_channels=patch_channels)
    reconstruction = DECODERS[decoder](code, width, m)
    label = resnet_head(code, 4 * width, head_depth, m)
    return keras.Model(inputs, {"reconstruction": reconstruction, "label": label}, name="resnet_joint")


def resnet_encoder(inputs, width, bn_momentum=0.9, prefix="", patch_channels=0):
    """stem(w) @32 -> stage(2w) @16 (+res) -> conv(4w) + max-pool @8: the (8, 8, 4w) `features` code.

    patch_channels > 0 concatenates a linear stride-4 'patchify' conv of the input onto the code (v3-cnn-ae's
    path): the max-pooled ReLU features keep what the label needs, the patch path what the pixels need.
    """
    x = conv_bn_relu(inputs, width, f"{prefix}stem", bn_momentum=bn_momentum)
    x = resnet_stage(x, 2 * width, f"{prefix}enc1", bn_momentum=bn_momentum)
    x = conv_bn_relu(x, 4 * width, f"{prefix}enc2_conv", bn_momentum=bn_momentum)
    if not patch_channels:
        return layers.MaxPooling2D(name=f"{prefix}features")(x)
    pooled = layers.MaxPooling2D(name=f"{prefix}enc2_pool")(x)
    patches = layers.Conv2D(patch_channels, 4, strides=4, name=f"{prefix}patch_code")(inputs)
    return layers.Concatenate(name=f"{prefix}features")([pooled, patches])


def convt_decoder(code, width, bn_momentum=0.9):
    """The study's decoder shape: Conv2DTranspose @16 and @32, then a sigmoid conv to RGB."""
    r = layers.Conv2DTranspose(2 * width, 3, strides=2, padding="same", activation="relu", name="dec1_convt")(code)
    r = layers.Conv2DTranspose(width, 3, strides=2, padding="same", activation="relu", name="dec2_convt")(r)
    r = layers.Conv2D(3, 3, padding="same", activation="sigmoid", name="dec_out")(r)
    return layers.Activation("linear", dtype="float32", name="reconstruction")(r)


def residual_decoder(code, width, bn_momentum=0.9):
    """conv-BN-ReLU to 4*width, a residual block @8, then a linear 4x4 stride-4 'unpatchify' to RGB (as v3-cnn-ae)."""
    r = conv_bn_relu(code, 4 * width, "dec_in", bn_momentum=bn_momentum)
    r = residual_block(r, 4 * width, "dec1_res", bn_momentum)
    r = layers.Conv2DTranspose(3, 4, strides=4, activation="sigmoid", name="dec_unpatchify")(r)
    return layers.Activation("linear", dtype="float32", name="reconstruction")(r)


DECODERS = {"convt": convt_decoder, "residual": residual_decoder}


def resnet_head(code, width, depth=1, bn_momentum=0.9):
    """Classifier on an (8, 8, C) code: (conv to `width` if C differs) -> `depth` residual blocks @8
    -> stage(2 * width) @4 (+res) -> global max-pool -> Dense softmax `label` (float32 under mixed precision)."""
    h = code if code.shape[-1] == width else conv_bn_relu(code, width, "head_in", bn_momentum=bn_momentum)
    for i in range(depth):
        h = residual_block(h, width, f"head{i + 1}_res", bn_momentum)
    h = resnet_stage(h, 2 * width, "head_stage", bn_momentum=bn_momentum)
    h = layers.GlobalMaxPooling2D(name="head_pool")(h)
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="label")(h)


def patch_autoencoder(code_channels=64, width=96, blocks=1, bn_momentum=0.9):
    """v3 conv autoencoder: 4x4 patches -> (8, 8, code_channels) code -> 4x4 patches, residual blocks between.

    The study's (8, 8, 64) code holds 4,096 numbers for a 3,072-number image, so nothing forces it to lose
    information. A stride-4 'patchify' conv and its transpose keep a linear path from pixels to code and back,
    which the study's conv + max-pool stack had to learn its way around; the residual blocks add the rest.
    """
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = layers.Conv2D(width, 4, strides=4, name="patchify")(inputs)
    for i in range(blocks):
        x = residual_block(x, width, f"enc{i + 1}", bn_momentum)
    code = layers.Conv2D(code_channels, 1, name="features")(x)  # linear (8, 8, 64) code
    y = layers.Conv2D(width, 1, name="dec_in")(code)
    for i in range(blocks):
        y = residual_block(y, width, f"dec{i + 1}", bn_momentum)
    y = layers.Conv2DTranspose(3, 4, strides=4, activation="sigmoid", name="unpatchify")(y)
    outputs = layers.Activation("linear", dtype="float32", name="reconstruction")(y)
    return keras.Model(inputs, outputs, name="patch_autoencoder")


def resnet_feature_classifier(encoder, width=128, depth=1, bn_momentum=0.9, render_channels=0):
    """v3: the residual head of resnet_joint on a frozen encoder's features; only the classifier trains.

    render_channels > 0 first maps the code back to a (32, 32, render_channels) map with a learned linear
    4x4 stride-4 Conv2DTranspose (the shape of v3-cnn-ae's decoder, but trained for the label), then runs
    resnet_joint's encoder (width // 4) on it: a near-lossless code keeps the image's information, but
    at 8x8 the head has too little resolution left to find it in a few epochs.
    Features at image resolution (feature_layer="reconstruction": the code through the frozen decoder) go
    straight into that encoder.
    """
    encoder.trainable = False
    code = encoder.output
    if render_channels:
        code = layers.Conv2DTranspose(render_channels, 4, strides=4, name="render")(code)
    if code.shape[1] != 8:
        code = resnet_encoder(code, width // 4, bn_momentum, prefix="cls_")
    return keras.Model(encoder.input, resnet_head(code, width, depth, bn_momentum),
                       name="resnet_feature_classifier")


BUILDERS = {
    "resnet_joint": resnet_joint,
    "patch_autoencoder": patch_autoencoder,
    "resnet_feature_classifier": resnet_feature_classifier,
    "mlp_autoencoder": mlp_autoencoder,
    "dense_classifier": dense_classifier,
    "conv1d_classifier": conv1d_classifier,
    "conv_autoencoder": conv_autoencoder,
    "feature_classifier": feature_classifier,
    "joint_model": joint_model,
}


# --------------------------------------------------------------------------- v4: the airbench-style joint model

@keras.saving.register_keras_serializable("cifar_ae")
class ScaledBias(layers.Layer):
    """A per-channel bias stored as b / s and used as s * (b / s): with SGD its effective learning rate is s^2 times
    the optimizer's (airbench's "bias learning-rate scale" for BatchNorm biases, without a second optimizer)."""

    def __init__(self, lr_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.lr_scale = float(lr_scale)

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return x + ops.cast(self.bias * (self.lr_scale ** 0.5), x.dtype)

    def get_config(self):
        return {**super().get_config(), "lr_scale": self.lr_scale}


def bn_gelu(x, name, bn_momentum=0.6, bn_scale=False, bias_lr_scale=1.0):
    """BatchNorm (no learnt scale, as airbench; its bias through ScaledBias) -> GELU."""
    x = layers.BatchNormalization(momentum=bn_momentum, scale=bn_scale, center=False, epsilon=1e-5,
                                  name=f"{name}_bn")(x)
    x = ScaledBias(bias_lr_scale, name=f"{name}_bias")(x)
    return layers.Activation("gelu", name=f"{name}_gelu")(x)


@keras.saving.register_keras_serializable("cifar_ae")
class PartialDirac(keras.initializers.Initializer):
    """airbench's conv init: PyTorch's default uniform(+-1/sqrt(fan_in)), then the first min(in, out) filters set
    to the identity (torch.nn.init.dirac_ on w[:in]), so at step 0 each block passes its input through."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        w = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform", seed=self.seed)(shape, dtype)
        n = min(cin, cout)
        eye = ops.pad(ops.eye(n, dtype=w.dtype)[None, None], [[kh // 2, kh - kh // 2 - 1], [kw // 2, kw - kw // 2 - 1],
                                                              [0, cin - n], [0, 0]])
        return ops.concatenate([eye, w[..., n:]], axis=-1)

    def get_config(self):
        return {"seed": self.seed}


def airbench_block(x, filters, name, dirac=True, **bn):
    """airbench94's block: conv 3x3 -> 2x2 max-pool -> BN-GELU -> conv 3x3 -> BN-GELU; convs start as identities
    (PartialDirac) unless dirac=False (Keras' glorot)."""
    init = PartialDirac if dirac else (lambda: "glorot_uniform")
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init(), name=f"{name}_conv1")(x)
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    x = bn_gelu(x, f"{name}_1", **bn)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init(), name=f"{name}_conv2")(x)
    return bn_gelu(x, f"{name}_2", **bn)


def fast_joint(widths=(64, 256, 256), whiten_channels=24, patch_channels=48, decoder_width=64, decoder_blocks=1,
               bn_momentum=0.6, bn_scale=False, bias_lr_scale=64.0, logit_scale=1 / 9, dirac=True, head_std=None,
               whiten_padding="same", decoder=True):
    """v4: airbench94's network (Jordan 2024, arXiv 2404.00498) as a joint model: a frozen 2x2 whitening conv
    (Trial.whitening; padding "valid" is airbench94's, "same" keeps 32x32), GELU, airbench's blocks at widths[0] and
    widths[1] (with an optional linear 4x4 patch path of the pixels, a bypass) make the `features` code; the head is
    airbench's third block, a global max-pool and a bias-free Dense scaled by `logit_scale`; the decoder a 1x1 conv,
    `decoder_blocks` residual blocks and a linear unpatchify (`decoder=False`: the classifier alone, task "classifier").
    BatchNorm as airbench's (momentum 0.6 in Keras' convention, no scale, biases at `bias_lr_scale` x the LR)."""
    if not isinstance(decoder_blocks, int) or isinstance(decoder_blocks, bool) or decoder_blocks < 0:
        raise ValueError(f"decoder_blocks must be a whole number >= 0 (0: no residual block); got {decoder_blocks!r}.")
    if whiten_padding not in ("same", "valid"):
        raise ValueError(f"whiten_padding must be 'same' or 'valid' (airbench94's); got {whiten_padding!r}.")
    bn = dict(bn_momentum=bn_momentum, bn_scale=bn_scale, bias_lr_scale=bias_lr_scale, dirac=dirac)
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = inputs
    if whiten_channels:
        x = layers.Conv2D(whiten_channels, 2, padding=whiten_padding, use_bias=False, name="whiten")(x)
        x = layers.Activation("gelu", name="whiten_gelu")(x)
    x = airbench_block(x, widths[0], "enc1", **bn)
    x = airbench_block(x, widths[1], "enc2", **bn)
    if patch_channels:
        patches = layers.Conv2D(patch_channels, 4, strides=4, name="patch_code")(inputs)
        code = layers.Concatenate(name="features")([x, patches])
    else:
        code = layers.Activation("linear", name="features")(x)
    h = airbench_block(code, widths[2], "head", **bn)
    h = layers.GlobalMaxPooling2D(name="head_global_pool")(h)
    head_init = "glorot_uniform" if head_std is None else keras.initializers.RandomUniform(-3 ** 0.5 * head_std,
                                                                                           3 ** 0.5 * head_std)
    h = layers.Dense(NUM_CLASSES, use_bias=False, kernel_initializer=head_init, name="head_dense")(h)
    h = layers.Rescaling(logit_scale, name="head_scale")(h)
    label = layers.Activation("softmax", dtype="float32", name="label")(h)
    if not decoder:
        return keras.Model(inputs, label, name="fast_classifier")
    r = conv_bn_relu(code, decoder_width, "dec_in", kernel_size=1, bn_momentum=0.9)
    for i in range(decoder_blocks):
        r = residual_block(r, decoder_width, f"dec{i + 1}_res", 0.9)
    r = layers.Conv2DTranspose(3, 4, strides=4, activation="sigmoid", name="dec_unpatchify")(r)
    reconstruction = layers.Activation("linear", dtype="float32", name="reconstruction")(r)
    return keras.Model(inputs, {"reconstruction": reconstruction, "label": label}, name="fast_joint")


def whitening_kernel(x_uint8, kernel_size=2, eps_scale=5e-4, max_images=5000):
    """airbench's whitening init: the eigenvectors of the training images' kernel_size^2 x 3 patch second moments,
    each divided by sqrt(eigenvalue + eps), as + and - filters -> a (k, k, 3, 2 * k*k*3) kernel."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view
    x = np.asarray(x_uint8[:max_images], np.float32) / 255.0
    windows = sliding_window_view(x, (kernel_size, kernel_size), axis=(1, 2))  # (n, H-k+1, W-k+1, 3, k, k)
    patches = np.moveaxis(windows, 3, -1).reshape(-1, kernel_size * kernel_size * 3)  # (h, w, c) order, as Keras
    cov = patches.T.astype(np.float64) @ patches / len(patches)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    scaled = vectors / np.sqrt(values + eps_scale * float(np.var(x)))
    kernel = scaled.T.reshape(-1, kernel_size, kernel_size, 3).transpose(1, 2, 3, 0)
    return np.concatenate([kernel, -kernel], axis=-1).astype(np.float32)


def init_whitening(model, x_uint8):
    """Set the `whiten` layer's kernel from the training images and freeze it; False if the model has none."""
    try:
        layer = model.get_layer("whiten")
    except ValueError:
        return False
    layer.kernel.assign(whitening_kernel(x_uint8, layer.kernel_size[0]))
    layer.trainable = False
    return True


BUILDERS["fast_joint"] = fast_joint


def _same_kind(value, default) -> bool:
    """Whether `value` can stand where the builder's `default` does: None takes anything; numbers, strings,
    booleans and sequences must match in kind (and a sequence's items the kind of the default's first item)."""
    if default is None or default is inspect.Parameter.empty:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str) or value is None
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and (not default or all(_same_kind(v, default[0]) for v in value))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def check_arg(model: str, arg: str, value, default) -> None:
    """A model_args value of the kind the builder's default has (checked before any data loads)."""
    if not _same_kind(value, default):
        from .trials import TrialError
        raise TrialError(f"model_args {arg}={value!r} for {model}: expected a value like its default {default!r} "
                         f"({type(default).__name__}); got {type(value).__name__}.")


def builder_defaults(model: str) -> dict:
    """A builder's keyword arguments and their defaults (model_args equal to these name the same model)."""
    import inspect
    return {n: p.default for n, p in inspect.signature(BUILDERS[model]).parameters.items()
            if p.default is not inspect.Parameter.empty}
