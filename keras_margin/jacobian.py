"""Rows of the input Jacobian: input gradients of chosen logits, for whole batches.

Both the rival selection of the method (sensitivity.py) and DeepFool (attacks/deepfool.py) need
grad_x f_j(x) for several classes j per sample. One forward pass is shared; each class costs one
backward pass with a one-hot cotangent, batched over samples (samples are independent, so the
gradient of sum_b f_{c_b}(x_b) w.r.t. x_b is grad f_{c_b}(x_b)). The loop over classes is unrolled
in the graph, which XLA compiles quickly, unlike the `pfor` behind `batch_jacobian`.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from keras_margin._backend import require_tensorflow

require_tensorflow()


def call_logits(model: Callable, x: tf.Tensor, training: bool = False) -> tf.Tensor:
    """`model(x)` as logits of shape (batch, k), at least float32; also for plain callables."""
    if isinstance(model, keras.layers.Layer):
        logits = model(x, training=training)
    else:
        logits = model(x)
    logits = tf.convert_to_tensor(logits)
    if logits.shape.rank == 1:
        logits = logits[:, None]
    if logits.shape.rank != 2:
        raise ValueError(
            f"The model must return logits of shape (batch, k); received shape {logits.shape}."
        )
    return at_least_float32(logits)


def at_least_float32(t: tf.Tensor) -> tf.Tensor:
    """Casts half-precision tensors (mixed precision) to float32; float64 stays float64."""
    return tf.cast(t, tf.float32) if t.dtype in (tf.float16, tf.bfloat16) else t


def input_gradient(tape: tf.GradientTape, target: tf.Tensor, x: tf.Tensor,
                   output_gradients: tf.Tensor | None = None) -> tf.Tensor:
    """`tape.gradient(target, x)`, with zeros instead of None when target ignores x."""
    grad = tape.gradient(target, x, output_gradients=output_gradients,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return at_least_float32(grad)


def margin_gradients(tape: tf.GradientTape, logits: tf.Tensor, x: tf.Tensor,
                     labels: tf.Tensor, rivals: tf.Tensor) -> tf.Tensor:
    """w_bi = grad_x (f_{rivals[b, i]} - f_{labels[b]})(x_b) for every sample b and column i.

    One backward pass per column, with the cotangent e_rival - e_label, so the label's own
    gradient is never computed separately: k - 1 passes give all the rival directions.

    Args:
        tape: a *persistent* tape that watched `x` while `logits` were computed.
        logits: (batch, k).
        x: the watched inputs, (batch, ...).
        labels: int32 (batch,).
        rivals: int32 (batch, m), m known statically.

    Returns:
        (batch, m, ...), the dtype of the gradients (at least float32).
    """
    k = logits.shape[-1]
    label_hot = tf.one_hot(labels, k, dtype=logits.dtype)
    grads = [
        input_gradient(tape, logits, x,
                       tf.one_hot(rivals[:, i], k, dtype=logits.dtype) - label_hot)
        for i in range(rivals.shape[1])
    ]
    return tf.stack(grads, axis=1)


def rival_classes(logits: tf.Tensor, labels: tf.Tensor,
                  candidates: int | None = None) -> tf.Tensor:
    """int32 (batch, m) of classes other than the label.

    All k - 1 of them (column i holds (y + 1 + i) mod k), or with `candidates` the top
    `candidates` by logit.
    """
    k = logits.shape[-1]
    if candidates is None or candidates >= k - 1:
        return (labels[:, None] + 1 + tf.range(k - 1, dtype=tf.int32)[None]) % k
    masked = tf.where(tf.one_hot(labels, k) > 0, tf.constant(-float("inf"), logits.dtype),
                      logits)
    return tf.math.top_k(masked, k=candidates).indices


def flat_norm(v: tf.Tensor, norm: str, start_axis: int = 1) -> tf.Tensor:
    """l2 or l1 norm over all axes from `start_axis` on ("linf" attacks use the dual l1 norm)."""
    axes = list(range(start_axis, v.shape.rank))
    if norm == "l2":
        return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes))
    return tf.reduce_sum(tf.abs(v), axis=axes)
