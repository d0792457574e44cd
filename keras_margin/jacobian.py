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


def class_gradients(tape: tf.GradientTape, logits: tf.Tensor, x: tf.Tensor,
                    classes: tf.Tensor) -> tf.Tensor:
    """grad_x logits[b, classes[b, i]] for every sample b and column i.

    Args:
        tape: a *persistent* tape that watched `x` while `logits` were computed.
        logits: (batch, k).
        x: the watched inputs, (batch, ...).
        classes: int32 (batch, m), m known statically.

    Returns:
        (batch, m, ...), the dtype of the gradients (at least float32).
    """
    k = logits.shape[-1] or tf.shape(logits)[-1]
    grads = [
        input_gradient(tape, logits, x, tf.one_hot(classes[:, i], k, dtype=logits.dtype))
        for i in range(classes.shape[1])
    ]
    return tf.stack(grads, axis=1)


def all_classes(batch_size: tf.Tensor, num_classes: int) -> tf.Tensor:
    """int32 (batch, k) with every row 0..k-1."""
    return tf.tile(tf.range(num_classes, dtype=tf.int32)[None], [batch_size, 1])


def flat_norm(v: tf.Tensor, norm: str, start_axis: int = 1) -> tf.Tensor:
    """l2 or l1 norm over all axes from `start_axis` on ("linf" attacks use the dual l1 norm)."""
    axes = list(range(start_axis, v.shape.rank))
    if norm == "l2":
        return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes))
    return tf.reduce_sum(tf.abs(v), axis=axes)
