"""Checks shared by the functional core and the Keras wrappers.

Every check either passes silently or raises an error that names the bad value and what is allowed.
Checks on tensor *values* (label ranges, finiteness) are graph ops so they also run inside `fit`;
XLA drops graph assertions, so the wrappers repeat the value checks on array data before compiling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_margin.jacobian import call_logits

PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid", "log_softmax")


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Raises `ValueError` unless `value` is one of `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"Invalid value for argument {name}: {value!r}. Expected one of {set(allowed)}."
        )
    return value


def check_non_negative(name: str, value: Any) -> float:
    """Raises `ValueError` unless `value` is a finite number >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"Invalid value for argument {name}: {value!r}. Expected a number >= 0."
        ) from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(
            f"Invalid value for argument {name}: {value!r}. Expected a finite number >= 0."
        )
    return number


def _activation_name(activation: Any) -> str | None:
    if activation is None:
        return None
    if isinstance(activation, str):
        return activation
    return getattr(activation, "__name__", None)


def output_layer(model: Any) -> Any:
    """The layer that produces a Sequential or functional model's output, else None."""
    if isinstance(model, keras.Sequential) and model.layers:
        return model.layers[-1]
    outputs = getattr(model, "_outputs", None) or getattr(model, "outputs", None)
    if isinstance(model, keras.Model) and outputs and len(outputs) == 1:
        history = getattr(outputs[0], "_keras_history", None)
        if history is not None:
            return history[0]
    return None


def check_logits_model(model: Any) -> None:
    """Raises `ValueError` if `model` visibly ends in a softmax or sigmoid (probabilities).

    The method and the attacks need logits: the margin f_y - f_j is measured before any
    normalisation. Nested Sequential/functional models are followed to their last layer.
    """
    layer = output_layer(model)
    seen = 0
    while layer is not None and seen < 16:
        name = _activation_name(getattr(layer, "activation", None))
        if isinstance(layer, keras.layers.Softmax):
            name = "softmax"
        if name in PROBABILITY_ACTIVATIONS:
            raise ValueError(
                f"The model's output layer {layer.name!r} applies {name!r}: keras_margin needs "
                "a model that outputs logits. Remove the final activation (use "
                "activation=None) and use losses with from_logits=True."
            )
        inner = output_layer(layer) if isinstance(layer, keras.Model) else None
        layer, seen = inner, seen + 1


def check_probability_outputs(logits: np.ndarray) -> None:
    """Raises `ValueError` when a batch of outputs looks like softmax probabilities.

    Used by the attacks on their first batch, for models whose last layer cannot be inspected
    (subclassed models, plain callables). Rows of k >= 2 values in [0, 1] that sum to 1 are
    practically never logits.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2 or logits.shape[0] == 0:
        return
    in_unit = np.all((logits >= 0) & (logits <= 1))
    if in_unit and np.allclose(logits.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(
            "The model's outputs are in [0, 1] and every row sums to 1: these are probabilities "
            "(softmax), but keras_margin needs logits. Remove the final softmax."
        )


def check_batch(x: Any, y: Any | None = None) -> None:
    """Raises `ValueError` on an empty batch or on x and y of different lengths (eager only)."""
    n = x.shape[0]
    if n is not None and n == 0:
        raise ValueError("Received an empty batch: x has 0 samples.")
    if y is not None and y.shape[0] is not None and n is not None and y.shape[0] != n:
        raise ValueError(
            f"x and y have different lengths: x has {n} samples, y has {y.shape[0]} labels."
        )


def as_float_inputs(x: Any) -> tf.Tensor:
    """Converts inputs to a float tensor; integer images (uint8) are cast, not rescaled."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, keras.backend.floatx())
    return x


def check_finite_inputs(x: tf.Tensor) -> tf.Tensor:
    """Raises `InvalidArgumentError` (graph op) when the batch holds NaN or Inf."""
    return tf.debugging.check_numerics(
        x, "keras_margin: the input batch contains NaN or Inf; refusing to train on it"
    )


def sparse_labels(y: Any, num_classes: int) -> tf.Tensor:
    """Labels as an int32 vector of class indices in [0, num_classes), checked in the graph.

    Accepts shapes (batch,) and (batch, 1). For one logit (binary, eq. 14) the labels must be in
    {0, 1} or {-1, +1} and are returned as {0, 1}.
    """
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2 and y.shape[1] == 1:
        y = tf.squeeze(y, axis=1)
    if y.shape.rank != 1:
        raise ValueError(
            f"Labels must be class indices of shape (batch,) or (batch, 1); received shape "
            f"{tuple(y.shape)}. One-hot labels are not accepted: pass argmax(y, axis=-1)."
        )
    if num_classes == 1:
        ok = tf.reduce_all((y == tf.cast(0, y.dtype)) | (y == tf.cast(1, y.dtype))
                           | (y == tf.cast(-1, y.dtype)))
        check = tf.debugging.Assert(
            ok, ["keras_margin: binary labels must be in {0, 1} or {-1, +1}; received", y],
            summarize=10,
        )
        with tf.control_dependencies([check]):
            return tf.cast(y > tf.cast(0, y.dtype), tf.int32)
    if y.dtype.is_floating:
        check_int = tf.debugging.Assert(
            tf.reduce_all(tf.equal(y, tf.round(y))),
            ["keras_margin: labels must be whole numbers (class indices); received", y],
            summarize=10,
        )
        with tf.control_dependencies([check_int]):
            y = tf.cast(y, tf.int32)
    y = tf.cast(y, tf.int32)
    check = tf.debugging.Assert(
        tf.reduce_all((y >= 0) & (y < num_classes)),
        [f"keras_margin: labels must be in [0, {num_classes}); received", y],
        summarize=10,
    )
    with tf.control_dependencies([check]):
        return tf.identity(y)


def check_label_array(y: Any, num_classes: int) -> None:
    """Eager counterpart of `sparse_labels` for numpy data (runs also when XLA drops asserts)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"Labels must be class indices of shape (batch,) or (batch, 1); received shape "
            f"{y.shape}. One-hot labels are not accepted: pass argmax(y, axis=-1)."
        )
    if y.size == 0:
        return
    if num_classes == 1:
        bad = ~np.isin(y, (-1, 0, 1))
        if bad.any():
            raise ValueError(
                f"Binary labels must be in {{0, 1}} or {{-1, +1}}; found {np.unique(y[bad])[:10]}."
            )
        return
    bad = (y < 0) | (y >= num_classes) | (y != np.round(y))
    if bad.any():
        raise ValueError(
            f"Labels must be integers in [0, {num_classes}); found {np.unique(y[bad])[:10]}."
        )


def probe_attack_inputs(model: Callable, x: tf.Tensor, y: Any | None) -> int | None:
    """Eager checks shared by the attacks; returns the number of logits (None in a graph).

    Lengths of x and y, probabilities instead of logits (on the first 32 samples), and labels
    in range. Inside a tf.function the values are unknown, so nothing is checked there.
    """
    if not tf.executing_eagerly():
        return None
    y = None if y is None else tf.convert_to_tensor(y)
    check_batch(x, y)
    probe = call_logits(model, x[:32]).numpy()
    check_probability_outputs(probe)
    if y is not None:
        check_label_array(y.numpy(), probe.shape[1])
    return probe.shape[1]
