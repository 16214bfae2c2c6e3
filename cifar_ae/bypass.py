"""What a joint model's decoder reads: the study's question needs a decoder that sees the image only through the
code its classifier reads. `pixel_bypass` walks a Keras functional graph for the two ways around that: a skip from
the image to the reconstruction, or a linear copy of the pixels inside the code (v3/v4's `patch_code`)."""
from __future__ import annotations

# Layers that pass pixels on linearly (an affine map of their input): a path of only these from the image into the
# code carries a linear copy of the pixels. Conv and Dense count only without an activation.
LINEAR_LAYERS = ("InputLayer", "Concatenate", "Add", "Reshape", "Flatten", "Rescaling", "Cropping2D", "ZeroPadding2D",
                 "BatchNormalization", "Dropout", "Identity", "Permute")
AFFINE_LAYERS = ("Conv2D", "Conv2DTranspose", "Dense", "DepthwiseConv2D", "Conv1D", "TiedConv2D")


def _inbound(tensor):
    """The layer that made `tensor` and the tensors it read."""
    operation, node_index, _ = tensor._keras_history
    return operation, list(operation._inbound_nodes[node_index].input_tensors)


def _is_linear(layer) -> bool:
    kind = type(layer).__name__
    if kind == "Activation" or kind in AFFINE_LAYERS:
        activation = getattr(layer, "activation", None)
        return activation is None or getattr(activation, "__name__", "") == "linear"
    return kind in LINEAR_LAYERS


def pixel_bypass(model, code_layer="features", output="reconstruction") -> bool:
    """Whether a joint model's reconstruction can read the pixels other than through the nonlinear code its
    classifier reads: a path from the image to `output` that avoids `code_layer`'s output (a skip), or a path of
    only linear layers from the image into the code (a linear copy, e.g. v3/v4's `patch_code`). A joint model
    with none answers the study's question; one with a bypass is a control."""
    code = model.get_layer(code_layer).output
    outputs = model.outputs if not isinstance(model.output, dict) else [model.output[output]]
    target = next(t for t in outputs if t._keras_history[0].name == output) if len(outputs) > 1 else outputs[0]
    inputs = {id(t) for t in model.inputs}

    def reaches_input(start, stop, linear_only):
        stack, seen = [start], set()
        while stack:
            tensor = stack.pop()
            if id(tensor) in seen or (stop is not None and tensor is stop):
                continue
            seen.add(id(tensor))
            if id(tensor) in inputs:
                return True
            layer, parents = _inbound(tensor)
            if linear_only and not _is_linear(layer):
                continue
            stack.extend(parents)
        return False

    return reaches_input(target, code, False) or reaches_input(code, None, True)
