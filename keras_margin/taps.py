"""Gradients with respect to hidden layers' outputs ("taps"), for hidden-layer margins.

grad_h F at a layer's output h is d F / d delta at delta = 0 when the forward pass adds delta to h:
each tapped layer's `call` adds a zero tensor that is an input of the differentiated function, so
one backward pass gives the gradients at the input and at every tapped output together. This is
the one way that works on every backend (JAX cannot differentiate with respect to an
intermediate value otherwise), for Sequential, functional and subclassed models alike.

The input itself is the tap "input". The inputs and the zeros travel as one flat
(batch, n_input + sum n_layer) tensor, so `keras_margin.backend.vjp` takes one argument.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_margin.jacobian import at_least_float32, call_logits

INPUT = "input"


def resolve_taps(model: Any, layers: Any) -> tuple[Any, ...]:
    """`layers` as a tuple of `INPUT` and top-level layers of `model`, checked.

    Entries are layer names, layer objects, indices into `model.layers`, or "input" (the
    model's input). Refused, by name: an empty list, an unknown name, an index out of range, a
    layer that is not a top-level layer of `model` (a layer of a nested model), the layer that
    outputs the logits, a layer listed twice.
    """
    if isinstance(layers, (str, bytes, keras.layers.Layer)) or not isinstance(layers, Sequence):
        raise ValueError(f"Invalid value for argument layers: {layers!r}. Expected a list of "
                         f"layer names, layers or indices (and {INPUT!r} for the input), or "
                         "None for the input only.")
    if not layers:
        raise ValueError("Invalid value for argument layers: []. Give at least one layer name "
                         f"(or {INPUT!r}), or None for the input only.")
    top = list(getattr(model, "layers", []))
    taps: list[Any] = []
    for entry in layers:
        tap = _resolve_one(model, top, entry)
        if any(tap is seen for seen in taps):
            raise ValueError(f"Invalid value for argument layers: {_name(tap)!r} is listed "
                             "twice.")
        taps.append(tap)
    return tuple(taps)


def _resolve_one(model: Any, top: list, entry: Any) -> Any:
    if isinstance(entry, str) and entry == INPUT:
        return INPUT
    if isinstance(entry, (int, np.integer)) and not isinstance(entry, bool):
        if not -len(top) <= entry < len(top):
            raise ValueError(f"Invalid value for argument layers: index {entry} is out of "
                             f"range: the base model has {len(top)} layers.")
        entry = top[entry]
    if isinstance(entry, str):
        found = [layer for layer in top if layer.name == entry]
        if not found:
            names = [layer.name for layer in top if not _is_input_layer(layer)]
            raise ValueError(f"Invalid value for argument layers: no layer named {entry!r} in "
                             f"the base model (a layer of a nested model is not supported); "
                             f"its layers are {names}, and {INPUT!r} is its input.")
        entry = found[0]
    if not isinstance(entry, keras.layers.Layer):
        raise ValueError(f"Invalid value for argument layers: {entry!r}. Expected a layer "
                         f"name, a layer, an index into the base's layers, or {INPUT!r}.")
    if _is_input_layer(entry):
        return INPUT
    if all(entry is not layer for layer in top):
        raise ValueError(f"Invalid value for argument layers: layer {entry.name!r} is not a "
                         "top-level layer of the base model (a layer of a nested model, or of "
                         "another model, is not supported).")
    if _outputs_logits(model, entry):
        raise ValueError(f"Invalid value for argument layers: layer {entry.name!r} outputs the "
                         "logits; the margin is taken at the input or at a hidden layer before "
                         "them (at the logits the gradient of f_y - f_j is constant).")
    return entry


def _is_input_layer(layer: Any) -> bool:
    return type(layer).__name__ == "InputLayer"


def _outputs_logits(model: Any, layer: Any) -> bool:
    try:
        outputs = keras.tree.flatten(model.outputs)
        return any(out is t for out in keras.tree.flatten(layer.output) for t in outputs)
    except (AttributeError, ValueError):  # a subclassed model: no symbolic outputs
        return False


def _name(tap: Any) -> str:
    return INPUT if tap is INPUT else tap.name


def tap_names(taps: Sequence[Any]) -> list[str]:
    """The taps as names, as a config stores them."""
    return [_name(tap) for tap in taps]


def check_layer_weights(layer_weights: Any, taps: Sequence[Any],
                        name: str = "layer_weights") -> tuple[float, ...]:
    """One finite number >= 0 per tap (None: all 1); errors name the argument `name`."""
    if layer_weights is None:
        return (1.0,) * len(taps)
    if isinstance(layer_weights, (str, bytes)) or not isinstance(layer_weights, Sequence):
        raise ValueError(f"Invalid value for argument {name}: {layer_weights!r}. "
                         f"Expected a list of {len(taps)} non-negative numbers, one per layer.")
    if len(layer_weights) != len(taps):
        raise ValueError(f"Invalid value for argument {name}: {len(layer_weights)} "
                         f"numbers for {len(taps)} layers {tap_names(taps)}; give one per "
                         "layer.")
    weights = []
    for w in layer_weights:
        if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) \
                or not math.isfinite(float(w)) or float(w) < 0:
            raise ValueError(f"Invalid value for argument {name}: {layer_weights!r}. "
                             "Expected finite non-negative numbers.")
        weights.append(float(w))
    return tuple(weights)


@contextlib.contextmanager
def _adding(taps: Sequence[Any], values: Sequence[Any], calls: dict | None = None
            ) -> Iterator[None]:
    """Each tapped layer's output has `values[i]` (None: nothing) added inside the block;
    `calls` collects, per tap index, the output shape of each call. The layers' own `call`
    is restored after the block."""
    patched = [(i, tap, tap.__dict__.get("call")) for i, tap in enumerate(taps)
               if tap is not INPUT]
    for i, layer, _ in patched:
        original = layer.call

        def call(*args: Any, _original: Callable = original, _value: Any = values[i],
                 _i: int = i, _layer: Any = layer, **kwargs: Any) -> Any:
            out = _original(*args, **kwargs)
            if isinstance(out, (list, tuple, dict)) or not hasattr(out, "shape"):
                raise ValueError(f"Invalid value for argument layers: layer {_layer.name!r} "
                                 "returns several tensors; a hidden-layer margin needs a layer "
                                 "with one output.")
            if calls is not None:
                calls.setdefault(_i, []).append(tuple(out.shape[1:]))
            return out if _value is None else out + ops.cast(_value, out.dtype)

        object.__setattr__(layer, "call", call)
    try:
        yield
    finally:
        for _, layer, own in patched:
            if own is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)


def tap_shapes(model: Any, taps: Sequence[Any], input_shape: Sequence[Any]) -> list[tuple]:
    """Each tap's output shape without the batch axis, from one inference pass on a zero
    sample. Refused: a layer not called on the way to the logits, or called more than once."""
    calls: dict[int, list] = {}
    with _adding(taps, [None] * len(taps), calls):
        call_logits(model, ops.zeros((1,) + tuple(input_shape[1:]), dtype="float32"))
    shapes = []
    for i, tap in enumerate(taps):
        if tap is INPUT:
            shapes.append(tuple(input_shape[1:]))
        elif not calls.get(i):
            raise ValueError(f"Invalid value for argument layers: layer {tap.name!r} is not "
                             "on the path from the input to the logits (the forward pass never "
                             "calls it).")
        elif len(calls[i]) > 1:
            raise ValueError(f"Invalid value for argument layers: layer {tap.name!r} is "
                             f"called {len(calls[i])} times in one forward pass (a shared "
                             "layer); a hidden-layer margin needs a layer called once.")
        else:
            shapes.append(calls[i][0])
    return shapes


class Taps:
    """A model's listed layers and their output shapes, as the trainers hold them: resolved
    and checked at construction (`resolve_taps`); the shapes found then where the model's
    input is known, so that a layer off the path is refused at once, else at the first call.
    """

    def __init__(self, model: Any, layers: Any) -> None:
        self.model, self.layers = model, resolve_taps(model, layers)
        self._shapes = None
        if getattr(model, "inputs", None):
            self._shapes = tap_shapes(model, self.layers, model.inputs[0].shape)

    @property
    def names(self) -> list[str]:
        return tap_names(self.layers)

    def shapes(self, input_shape: Sequence[Any]) -> list[tuple]:
        """Each tap's output shape without the batch axis (found once)."""
        if self._shapes is None:
            self._shapes = tap_shapes(self.model, self.layers, input_shape)
        return self._shapes


def logits_and_tapped_pullback(model: Any, x: Any, taps: Sequence[Any],
                               shapes: Sequence[tuple], training: bool = False,
                               create_graph: bool = False) -> tuple[Any, Callable]:
    """One forward pass: the logits (batch, k) and a pullback cotangent -> [grad at each tap].

    The gradient at a tap has the tap's shape (batch, ...), x's dtype (at least float32);
    `create_graph=True` keeps them differentiable w.r.t. the weights (double backprop).
    """
    from keras_margin import backend

    batch = ops.shape(x)[0]
    sizes = [math.prod(shape) for shape in shapes]
    dtype = at_least_float32(x).dtype
    zeros = [ops.zeros((batch, size), dtype=dtype) for tap, size in zip(taps, sizes)
             if tap is not INPUT]
    flat = ops.concatenate([ops.reshape(ops.cast(x, dtype), (batch, -1))] + zeros, axis=1)
    input_size = math.prod(tuple(x.shape[1:]))
    layer_sizes = [size for tap, size in zip(taps, sizes) if tap is not INPUT]
    layer_shapes = [shape for tap, shape in zip(taps, shapes) if tap is not INPUT]

    def split(z: Any) -> list:
        bounds = np.cumsum([input_size] + layer_sizes).tolist()
        parts = [z[:, start:stop] for start, stop in zip([0] + bounds[:-1], bounds)]
        return [ops.reshape(part, (-1,) + tuple(shape))
                for part, shape in zip(parts, [tuple(x.shape[1:])] + layer_shapes)]

    def forward(z: Any) -> Any:
        inputs, *deltas = split(z)
        values, it = [], iter(deltas)
        for tap in taps:
            values.append(None if tap is INPUT else next(it))
        with _adding(taps, values):
            return call_logits(model, inputs, training=training)

    logits, pull = backend.vjp(forward, flat, create_graph=create_graph)

    def pullback(cotangent: Any) -> list:
        grad_input, *grad_layers = split(at_least_float32(pull(cotangent)))
        it = iter(grad_layers)
        return [grad_input if tap is INPUT else next(it) for tap in taps]

    return logits, pullback
