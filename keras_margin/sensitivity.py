"""Margin sensitivity eps(x, y) = ||grad_x f_y(x) - grad_x f_j*(x)||: the functional core (eq. 18).

For one logit (binary, eq. 14) it is ||grad_x f(x)||. The rival j* is chosen without a gradient
through the choice; the returned value is differentiable w.r.t. the model's weights (the gradient
is taken on a tape nested in the caller's, i.e. double backprop), never stop-gradiented.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from keras_margin._validation import as_float_inputs, check_choice, sparse_labels
from keras_margin.jacobian import (
    call_logits,
    flat_norm,
    input_gradient,
    margin_gradients,
    rival_classes,
)

NORMS = ("l2", "l1")
RIVALS = ("jacobian", "logit")


def resolve_squared(norm: str, squared: bool | None) -> bool:
    """The reference code's choice when `squared` is None: squared for l2, plain for l1."""
    return norm == "l2" if squared is None else bool(squared)


def select_rival(tape: tf.GradientTape, logits: tf.Tensor, x: tf.Tensor, labels: tf.Tensor,
                 rival: str = "jacobian", norm: str = "l2",
                 candidates: int | None = None) -> tf.Tensor:
    """The rival class j* != y of each sample, int32 (batch,), with no gradient.

    "jacobian" (reference code): j* = argmax_j ||grad f_j - grad f_y|| from the input Jacobian
    (k - 1 backward passes on a persistent `tape` that watched `x`), over all classes or, with
    `candidates`, over the top-`candidates` rival logits. "logit": j* = argmax_{j != y} f_j.
    """
    if rival == "logit":
        return rival_classes(tf.stop_gradient(logits), labels, candidates=1)[:, 0]
    rivals = rival_classes(tf.stop_gradient(logits), labels, candidates)
    directions = tf.stop_gradient(margin_gradients(tape, logits, x, labels, rivals))
    best = tf.argmax(flat_norm(directions, norm, start_axis=2), axis=1, output_type=tf.int32)
    return tf.gather(rivals, best, axis=1, batch_dims=1)


def logits_and_sensitivity(model: Callable, x: Any, y: Any, norm: str = "l2",
                           rival: str = "jacobian", squared: bool | None = None,
                           training: bool = False,
                           candidates: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """One forward pass giving the logits (batch, k) and eps(x, y) (batch,); see module doc."""
    check_choice("norm", norm, NORMS)
    check_choice("rival", rival, RIVALS)
    check_candidates(candidates)
    x = as_float_inputs(x)
    with tf.GradientTape(persistent=rival == "jacobian") as tape:
        tape.watch(x)
        logits = call_logits(model, x, training=training)
    k = logits.shape[-1]
    labels = sparse_labels(y, k)
    if k == 1:
        cotangent = tf.ones_like(logits)
    else:
        j_star = select_rival(tape, logits, x, labels, rival=rival, norm=norm,
                              candidates=candidates)
        # d/dx sum_b (f_y - f_j*)(x_b): one backward pass with this cotangent.
        cotangent = tf.one_hot(labels, k, dtype=logits.dtype) - tf.one_hot(
            j_star, k, dtype=logits.dtype)
    grad = input_gradient(tape, logits, x, cotangent)
    del tape
    if norm == "l2":
        sq = tf.reduce_sum(tf.square(grad), axis=list(range(1, grad.shape.rank)))
        # sqrt has an infinite slope at 0; the floor keeps the double backprop finite.
        eps = sq if resolve_squared(norm, squared) else tf.sqrt(tf.maximum(sq, 1e-24))
    else:
        eps = flat_norm(grad, "l1")
        if resolve_squared(norm, squared):
            eps = tf.square(eps)
    return logits, eps


def margin_sensitivity(model: Callable, x: Any, y: Any, norm: str = "l2",
                       rival: str = "jacobian", squared: bool | None = None,
                       training: bool = False, candidates: int | None = None) -> tf.Tensor:
    """Margin sensitivity eps(x, y) per sample (eq. 18; eq. 14 for one logit).

    Args:
        model: a Keras model or callable returning logits (batch, k); k == 1 for binary.
        x: inputs (batch, ...); integer images are cast to float.
        y: class indices (batch,) in [0, k); for k == 1, labels in {0, 1} or {-1, +1}.
        norm: "l2", or "l1" (the dual norm of l_inf: defends l_inf perturbations).
        rival: "jacobian" (reference: argmax_j ||grad f_j - grad f_y|| over the full input
            Jacobian) or "logit" (argmax_{j != y} f_j; one input gradient, cheaper).
        squared: None for the reference code's choice (squared l2, plain l1).
        training: passed to the model's call (dropout, batch norm).
        candidates: with rival="jacobian", search j* among the top-`candidates` rival logits
            only (that many backward passes instead of k - 1); None searches all classes.

    Returns:
        Tensor (batch,) of the logits dtype (at least float32), differentiable w.r.t. the
        model's weights.

    Example:
        >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> margin_sensitivity(base, np.ones((2, 4)), [0, 2]).shape
        TensorShape([2])
    """
    return logits_and_sensitivity(model, x, y, norm=norm, rival=rival, squared=squared,
                                  training=training, candidates=candidates)[1]


def check_candidates(candidates: int | None) -> int | None:
    """None or an integer >= 1 (the number of rival classes searched)."""
    if candidates is not None and (isinstance(candidates, bool) or int(candidates) != candidates
                                   or candidates < 1):
        raise ValueError(f"Invalid value for argument candidates: {candidates!r}. Expected "
                         "None or an integer >= 1.")
    return candidates
