"""The fast gradient sign method (Goodfellow et al., 2015): x + eps * sign(grad_x L(f(x), y))."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from keras_margin._validation import (
    as_float_inputs,
    check_logits_model,
    check_non_negative,
    probe_attack_inputs,
)
from keras_margin.jacobian import call_logits, input_gradient


def crossentropy_per_sample(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy on logits, or sigmoid cross-entropy for one logit ({0, 1} labels)."""
    if logits.shape[-1] == 1:
        target = tf.cast(tf.reshape(labels, [-1, 1]) > 0, logits.dtype)
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)[:, 0]
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.reshape(tf.cast(labels, tf.int32), [-1]), logits=logits)


def fgsm_direction(model: Callable, x: tf.Tensor, labels: tf.Tensor,
                   loss: Callable | None = None, training: bool = False) -> tf.Tensor:
    """sign(grad_x sum_b L(f(x_b), y_b)), graph-friendly (used by adversarial training)."""
    loss = loss or crossentropy_per_sample
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(loss(labels, call_logits(model, x, training=training)))
    return tf.stop_gradient(tf.sign(input_gradient(tape, total, x)))


def fgsm(model: Callable, x: Any, y: Any, eps: float = 0.2,
         clip: tuple[float, float] | None = None, loss: Callable | None = None,
         training: bool = False) -> tf.Tensor:
    """Adversarial examples by one signed gradient step on the loss (l_inf ball of radius eps).

    Args:
        model: a Keras model or callable returning logits.
        x: inputs (batch, ...); integer images are cast to float.
        y: labels (batch,): class indices, or {0, 1} / {-1, +1} for one logit.
        eps: step size (the paper: 0.2 on MNIST in [0, 1], 0.05 on CIFAR-10).
        clip: optional (min, max) box for the result.
        loss: per-sample loss `(labels, logits) -> (batch,)`; default cross-entropy.
        training: passed to the model's call.

    Returns:
        x + eps * sign(grad_x loss), clipped to `clip` when given.

    Example:
        >>> x_adv = fgsm(model, x_test, y_test, eps=0.2, clip=(0.0, 1.0))
    """
    eps = check_non_negative("eps", eps)
    check_logits_model(model)
    x = as_float_inputs(x)
    probe_attack_inputs(model, x, y)
    x_adv = x + eps * fgsm_direction(model, x, tf.convert_to_tensor(y), loss, training)
    if clip is not None:
        x_adv = tf.clip_by_value(x_adv, clip[0], clip[1])
    return x_adv
