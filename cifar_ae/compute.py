"""Compute accounting: training FLOPs per image of a Keras model, counted from its layers, not timed.

Seconds change with the CPU model; FLOPs do not, so models and runs are compared by FLOPs (and a run's speed
as a fraction of the machine's measured peak, benchmarks/peak_flops.py).

Per image, each Conv2D / Conv2DTranspose / Conv1D / Dense / depthwise or separable conv (and TiedConv2D, in
both directions) costs its multiply-adds (MACs), read from the layer's input and output shapes at every call.
A training step costs 6 FLOPs per MAC where the layer trains (2 forward, 2 for the input gradient, 2 for the
weight gradient; Kaplan et al. 2020's 6N rule) and 2 where it is frozen (forward only: a frozen encoder at the
input needs no backward pass). Normalisation, pooling, activations and the loss are left out: at these sizes
they are a few percent.
"""
from __future__ import annotations

import math

FORWARD_FLOPS_PER_MAC = 2
TRAIN_FLOPS_PER_MAC = 6


def _shape(t):
    return tuple(t.shape)


def _prod(dims):
    return math.prod(int(d) for d in dims)


def node_macs(layer, inputs, outputs) -> int:
    """Multiply-adds of one call of `layer`, per image (batch dimension left out)."""
    kind = type(layer).__name__
    if not inputs or not outputs:
        return 0
    x, y = _shape(inputs[0]), _shape(outputs[0])
    if kind in ("Conv2D", "Conv1D", "Conv3D"):
        k = _prod(layer.kernel_size)
        return _prod(y[1:]) * k * (x[-1] // max(1, getattr(layer, "groups", 1)))
    if kind in ("Conv2DTranspose", "Conv1DTranspose"):
        return _prod(x[1:]) * _prod(layer.kernel_size) * y[-1]  # every input pixel scatters a kernel
    if kind == "DepthwiseConv2D":
        return _prod(y[1:]) * _prod(layer.kernel_size)
    if kind == "SeparableConv2D":
        depthwise = _prod(y[1:-1]) * x[-1] * layer.depth_multiplier * _prod(layer.kernel_size)
        return depthwise + _prod(y[1:-1]) * x[-1] * layer.depth_multiplier * y[-1]
    if kind == "Dense":
        return _prod(x[1:]) * y[-1]
    if kind == "TiedConv2D":  # encoder direction: a 'same' conv; decoder direction: its transpose
        k = layer.kernel_size ** 2
        if y[-1] == layer.filters:
            return _prod(y[1:]) * k * x[-1]
        return _prod(x[1:]) * k * y[-1]
    return 0


def _calls(layer):
    for node in getattr(layer, "_inbound_nodes", []):
        ins = [t for t in getattr(node, "input_tensors", []) if hasattr(t, "shape")]
        outs = [t for t in getattr(node, "output_tensors", []) if hasattr(t, "shape")]
        yield ins, outs


def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and getattr(layer, "_inbound_nodes", None) and type(layer).__name__ in (
                "Functional", "Sequential", "Model"):
            yield from _layers(layer)  # a nested model: count its own layers
        else:
            yield layer


def model_macs(model) -> dict:
    """{"trainable": MACs, "frozen": MACs} per image, over every call of every layer."""
    out = {"trainable": 0, "frozen": 0}
    for layer in _layers(model):
        macs = sum(node_macs(layer, ins, outs) for ins, outs in _calls(layer))
        out["trainable" if layer.trainable else "frozen"] += macs
    return out


def train_flops_per_image(model) -> int:
    """FLOPs of one training step per image: 6 per trainable MAC, 2 per frozen one (see the module docstring)."""
    m = model_macs(model)
    return TRAIN_FLOPS_PER_MAC * m["trainable"] + FORWARD_FLOPS_PER_MAC * m["frozen"]


def forward_flops_per_image(model) -> int:
    m = model_macs(model)
    return FORWARD_FLOPS_PER_MAC * (m["trainable"] + m["frozen"])
