"""Data losses on logits: the Crammer-Singer multiclass hinge and the binary hinge of eq. (14)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_margin._validation import check_choice

BUILTIN_LOSSES = ("hinge", "crossentropy")


@keras.saving.register_keras_serializable(package="keras_margin")
def multiclass_hinge(y_true: Any, logits: Any) -> tf.Tensor:
    """Crammer-Singer hinge `max_{j != y} (1 + f_j - f_y)_+` per sample (eq. 18's data term).

    The true class is masked out of the max, so a sample classified with margin >= 1 costs 0.
    This is not `keras.losses.categorical_hinge`: that one zeroes the true logit instead of
    masking it, so its rival term is max(0, max_{j != y} f_j) and differs whenever all rival
    logits are negative.

    Args:
        y_true: integer class indices, shape (batch,) or (batch, 1).
        logits: shape (batch, k), k >= 2.

    Returns:
        Per-sample losses, shape (batch,).

    Example:
        >>> float(multiclass_hinge([0], [[2.0, 0.5, -1.0]]))
        0.0
    """
    logits = tf.convert_to_tensor(logits)
    y = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    true_mask = tf.one_hot(y, tf.shape(logits)[-1]) > 0
    f_y = tf.reduce_max(tf.where(true_mask, logits, tf.cast(-1e30, logits.dtype)), axis=-1)
    rivals = tf.where(true_mask, tf.cast(-1e30, logits.dtype), logits)
    return tf.nn.relu(1.0 + tf.reduce_max(rivals, axis=-1) - f_y)


@keras.saving.register_keras_serializable(package="keras_margin")
def binary_hinge(y_true: Any, logits: Any) -> tf.Tensor:
    """Binary hinge `(1 - y f(x))_+` of eq. (14) for one logit; labels in {0, 1} or {-1, +1}.

    Returns:
        Per-sample losses, shape (batch,).

    Example:
        >>> float(binary_hinge([1], [[3.0]]))
        0.0
    """
    logits = tf.reshape(tf.convert_to_tensor(logits), [-1])
    y = tf.reshape(tf.cast(y_true, logits.dtype), [-1])
    y_pm = tf.where(y > 0, tf.ones_like(y), -tf.ones_like(y))
    return tf.nn.relu(1.0 - y_pm * logits)


def get(spec: Any, num_outputs: int) -> keras.losses.Loss:
    """Resolves a loss spec to a Keras `Loss` on logits for a model with `num_outputs` logits.

    Args:
        spec: "hinge" (multiclass Crammer-Singer, or binary for one logit), "crossentropy"
            (softmax or sigmoid cross-entropy from logits), a Keras loss name, a `Loss` or a
            callable `(y_true, logits) -> per-sample loss`.
        num_outputs: number of logits k; 1 means a binary model.
    """
    binary = num_outputs == 1
    if isinstance(spec, str):
        if spec == "hinge":
            return BinaryHinge() if binary else MulticlassHinge()
        if spec == "crossentropy":
            if binary:
                return keras.losses.BinaryCrossentropy(from_logits=True)
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        try:
            return _wrap(keras.losses.get(spec))
        except ValueError:
            check_choice("loss", spec, BUILTIN_LOSSES + ("<any Keras loss name>",))
    if isinstance(spec, dict):
        return _wrap(keras.losses.deserialize(spec))
    if callable(spec):
        return _wrap(spec)
    raise ValueError(
        f"Invalid value for argument loss: {spec!r}. Expected one of "
        f"{set(BUILTIN_LOSSES)}, a Keras loss or a callable (y_true, logits) -> loss."
    )


class _FunctionLoss(keras.losses.Loss):
    """A per-sample loss function as a Keras `Loss` (mean over the batch, sample weights)."""

    def __init__(self, fn: Any, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name or getattr(fn, "__name__", "loss"), **kwargs)
        self.fn = fn

    def call(self, y_true: Any, y_pred: Any) -> tf.Tensor:
        return self.fn(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "reduction": self.reduction}


@keras.saving.register_keras_serializable(package="keras_margin")
class MulticlassHinge(_FunctionLoss):
    """`multiclass_hinge` as a Keras `Loss` (sparse labels, logits)."""

    def __init__(self, name: str = "multiclass_hinge", **kwargs: Any) -> None:
        super().__init__(multiclass_hinge, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="keras_margin")
class BinaryHinge(_FunctionLoss):
    """`binary_hinge` as a Keras `Loss` (labels in {0, 1} or {-1, +1}, one logit)."""

    def __init__(self, name: str = "binary_hinge", **kwargs: Any) -> None:
        super().__init__(binary_hinge, name=name, **kwargs)


def _wrap(fn: Any) -> keras.losses.Loss:
    if isinstance(fn, keras.losses.Loss):
        return fn
    return _FunctionLoss(fn)
