"""Rows of the input Jacobian: input gradients of chosen logits, for whole batches.

Both the rival selection of the method (sensitivity.py) and DeepFool (attacks/deepfool.py) need
grad_x f_j(x) for several classes j per sample. One forward pass is shared; each class costs one
backward pass with a one-hot cotangent, batched over samples (samples are independent, so the
gradient of sum_b f_{c_b}(x_b) w.r.t. x_b is grad f_{c_b}(x_b)). Written in `keras.ops` around
`keras_margin.backend.vjp`, the one place that takes gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from keras_margin import backend

HALF_PRECISION = ("float16", "bfloat16")


def call_logits(model: Callable, x: Any, training: bool = False, dtype: str | None = None):
    """`model(x)` as logits of shape (batch, k), at least float32; also for plain callables.

    `dtype` casts the logits (the attacks compute in their inputs' dtype); by default half
    precision (mixed precision) becomes float32 and float64 stays float64.
    """
    if isinstance(model, keras.layers.Layer):
        logits = model(x, training=training)
    else:
        logits = model(x)
    logits = ops.convert_to_tensor(logits)
    if len(logits.shape) == 1:
        logits = logits[:, None]
    if len(logits.shape) != 2:
        raise ValueError(
            f"The model must return logits of shape (batch, k); received shape {logits.shape}."
        )
    if dtype is not None:
        return ops.cast(logits, dtype)
    return at_least_float32(logits)


def at_least_float32(t: Any) -> Any:
    """Casts half-precision tensors (mixed precision) to float32; float64 stays float64."""
    return ops.cast(t, "float32") if keras.backend.standardize_dtype(t.dtype) in HALF_PRECISION \
        else t


def logits_and_pullback(model: Callable, x: Any, training: bool = False,
                        create_graph: bool = False, dtype: str | None = None):
    """One forward pass: the logits (batch, k) and their pullback cotangent -> grad_x.

    The pullback's gradients have x's dtype (at least float32) and may be called once per
    class; `create_graph=True` keeps them differentiable w.r.t. the weights (double backprop).
    """
    logits, pullback = backend.vjp(lambda z: call_logits(model, z, training, dtype), x,
                                   create_graph=create_graph)
    return logits, lambda cotangent: at_least_float32(pullback(cotangent))


def margin_gradients(pullback: Callable, labels: Any, rivals: Any, k: int):
    """w_bi = grad_x (f_{rivals[b, i]} - f_{labels[b]})(x_b) for every sample b and column i.

    One backward pass per column, with the cotangent e_rival - e_label, so the label's own
    gradient is never computed separately: k - 1 passes give all the rival directions.

    Args:
        pullback: from `logits_and_pullback`.
        labels: int32 (batch,).
        rivals: int32 (batch, m), m known statically.
        k: the number of logits.

    Returns:
        (batch, m, ...), the dtype of the gradients.
    """
    label_hot = ops.one_hot(labels, k)
    grads = [pullback(ops.one_hot(rivals[:, i], k) - label_hot)
             for i in range(rivals.shape[1])]
    return ops.stack(grads, axis=1)


def rival_classes(logits: Any, labels: Any, candidates: int | None = None):
    """int32 (batch, m) of classes other than the label.

    All k - 1 of them (column i holds (y + 1 + i) mod k), or with `candidates` the top
    `candidates` by logit.
    """
    k = logits.shape[-1]
    labels = ops.cast(labels, "int32")
    if candidates is None or candidates >= k - 1:
        return (labels[:, None] + 1 + ops.arange(k - 1, dtype="int32")[None]) % k
    masked = ops.where(ops.one_hot(labels, k) > 0, ops.cast(-float("inf"), logits.dtype),
                       logits)
    return ops.cast(ops.top_k(masked, k=candidates)[1], "int32")


def runner_up(logits: Any, labels: Any):
    """int32 (batch,): the largest logit's class among the classes other than the label."""
    return rival_classes(logits, labels, candidates=1)[:, 0]


def flat_norm(v: Any, norm: str, start_axis: int = 1):
    """l2, l1 or linf norm over all axes from `start_axis` on."""
    axes = tuple(range(start_axis, len(v.shape)))
    if norm == "l2":
        return ops.sqrt(ops.sum(ops.square(v), axis=axes))
    if norm == "l1":
        return ops.sum(ops.abs(v), axis=axes)
    return ops.max(ops.abs(v), axis=axes)


def per_sample(values: Any, like: Any):
    """(batch,) values shaped (batch, 1, ..., 1) to broadcast against `like`."""
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))
