"""DeepFool (Moosavi-Dezfooli et al., 2016), batched, with a per-sample early exit.

Follows the reference code of the paper (aam-at/margin_maximization, mnist/deepfool.py): the
linearisation is taken at x + r, success is checked at x + (1 + overshoot) r, each step's length
is clipped at `step_clip`, and the result is x + (1 + overshoot) r. One `tf.while_loop` runs until
every sample is fooled, stuck (all gradients zero) or at `max_iter`; there is no Python loop over
samples or iterations, and the loop compiles with XLA (`jit_compile=True`).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from keras_margin._validation import (
    as_float_inputs,
    check_choice,
    check_logits_model,
    check_non_negative,
    probe_attack_inputs,
)
from keras_margin.jacobian import call_logits, flat_norm, margin_gradients, rival_classes

NORMS = ("l2", "linf")
TARGETS = ("label", "prediction")


@dataclasses.dataclass(frozen=True)
class DeepFoolResult:
    """What `deepfool` found, per sample.

    Attributes:
        perturbation: same shape as x: the final perturbation, overshoot included (and clipped to
            the input box when one is given); 0 where the sample is already misclassified.
        success: bool (batch,): x + perturbation is misclassified.
        iterations: int32 (batch,): DeepFool steps taken.
    """

    perturbation: tf.Tensor
    success: tf.Tensor
    iterations: tf.Tensor


def _deepfool_loop(model: Callable, x: tf.Tensor, labels: tf.Tensor, *, norm: str,
                   max_iter: int, overshoot: float, step_clip: float | None,
                   candidates: int | None, clip_min: float | None, clip_max: float | None):
    logits0 = call_logits(model, x)
    # The label plus `candidates - 1` rivals by clean logit, as Foolbox's candidates.
    rivals = rival_classes(logits0, labels, None if candidates is None else candidates - 1)
    dual = "l2" if norm == "l2" else "l1"
    expand = [-1] + [1] * (x.shape.rank - 1)

    def project(r):
        if clip_min is None and clip_max is None:
            return r
        lo = -np.inf if clip_min is None else clip_min
        hi = np.inf if clip_max is None else clip_max
        return tf.clip_by_value(x + r, lo, hi) - x

    def fooled(r):
        logits = call_logits(model, x + project((1.0 + overshoot) * r))
        return tf.argmax(logits, axis=1, output_type=tf.int32) != labels

    def body(i, r, done, stuck, iters):
        active = ~(done | stuck)
        x_r = x + r
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x_r)
            logits = call_logits(model, x_r)
        w = margin_gradients(tape, logits, x_r, labels, rivals)  # (batch, m, ...)
        del tape
        f_label = tf.gather(logits, labels, axis=1, batch_dims=1)
        f = tf.gather(logits, rivals, axis=1, batch_dims=1) - f_label[:, None]
        w_norm = flat_norm(w, dual, start_axis=2)
        blocked = w_norm <= 0
        dist = tf.where(blocked, tf.constant(np.inf, f.dtype), tf.abs(f) / tf.where(
            blocked, tf.ones_like(w_norm), w_norm))
        best = tf.argmin(dist, axis=1, output_type=tf.int32)
        d = tf.gather(dist, best, axis=1, batch_dims=1)
        can_move = tf.math.is_finite(d)
        d = tf.where(can_move, d, tf.zeros_like(d))
        if step_clip is not None:
            d = tf.minimum(d, step_clip)
        w_best = tf.gather(w, best, axis=1, batch_dims=1)
        if norm == "l2":
            length = tf.reshape(flat_norm(w_best, "l2"), expand)
            direction = w_best / tf.where(length > 0, length, tf.ones_like(length))
        else:
            direction = tf.sign(w_best)
        move = active & can_move
        r = tf.where(tf.reshape(move, expand), project(r + tf.reshape(d, expand) * direction), r)
        iters += tf.cast(active, tf.int32)
        stuck = stuck | (active & ~can_move)
        done = done | (move & fooled(r))
        return i + 1, r, done, stuck, iters

    done0 = tf.argmax(logits0, axis=1, output_type=tf.int32) != labels
    state = (tf.constant(0), tf.zeros_like(x), done0, tf.zeros_like(done0),
             tf.zeros_like(labels))
    _, r, _, _, iters = tf.while_loop(
        lambda i, r, done, stuck, it: (i < max_iter) & tf.reduce_any(~(done | stuck)),
        body, state, maximum_iterations=max_iter)
    perturbation = project((1.0 + overshoot) * r)
    success = tf.argmax(call_logits(model, x + perturbation), axis=1,
                        output_type=tf.int32) != labels
    return perturbation, success, iters


_COMPILED: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


def _compiled(model: Callable, settings: tuple, jit_compile: bool) -> Callable:
    """One tf.function per model and settings, so repeated calls do not retrace."""
    try:
        cache = _COMPILED.setdefault(model, {})
    except TypeError:  # not weak-referenceable: compile without caching
        cache = {}
    key = settings + (jit_compile,)
    if key not in cache:
        kwargs = dict(zip(("norm", "max_iter", "overshoot", "step_clip", "candidates",
                           "clip_min", "clip_max"), settings))
        cache[key] = tf.function(
            lambda x, labels: _deepfool_loop(model, x, labels, **kwargs),
            jit_compile=jit_compile, reduce_retracing=True)
    return cache[key]


def deepfool(model: Callable, x: Any, y: Any = None, norm: str = "l2", max_iter: int = 50,
             overshoot: float = 0.02, step_clip: float | None = 0.5,
             candidates: int | None = None, target: str = "label",
             clip_min: float | None = None, clip_max: float | None = None,
             jit_compile: bool = False) -> DeepFoolResult:
    """Minimal adversarial perturbations by DeepFool, for a whole batch at once.

    Args:
        model: a Keras model or callable returning logits (batch, k), k >= 2.
        x: inputs (batch, ...).
        y: true labels (batch,); needed for `target="label"`.
        norm: "l2", or "linf" (steps along sign(w), distances in the dual l1 norm).
        max_iter: at most this many steps per sample (the paper: 50).
        overshoot: the result is x + (1 + overshoot) r (the paper: 0.02).
        step_clip: each step's length is clipped at this value (the paper: 0.5); None disables.
        candidates: only the top-`candidates` classes by clean logits (label included); None for
            all classes, as the paper.
        target: "label" attacks the true label, "prediction" the predicted one.
        clip_min, clip_max: optional input box; every iterate is projected onto it.
        jit_compile: compile the loop with XLA.

    Returns:
        A `DeepFoolResult` of tensors: `perturbation`, `success`, `iterations`.

    Example:
        >>> res = deepfool(model, x_test[:100], y_test[:100])
        >>> rho = np.linalg.norm(res.perturbation.numpy().reshape(100, -1), axis=1)
    """
    check_choice("norm", norm, NORMS)
    check_choice("target", target, TARGETS)
    if int(max_iter) < 1:
        raise ValueError(f"Invalid value for argument max_iter: {max_iter!r}. Expected >= 1.")
    overshoot = check_non_negative("overshoot", overshoot)
    if step_clip is not None:
        step_clip = check_non_negative("step_clip", step_clip)
    if candidates is not None and int(candidates) < 2:
        raise ValueError(f"Invalid value for argument candidates: {candidates!r}. Expected "
                         "None or an integer >= 2.")
    check_logits_model(model)
    x = as_float_inputs(x)
    if target == "label" and y is None:
        raise ValueError('deepfool(target="label") needs the labels y.')
    k = probe_attack_inputs(model, x, y)
    if k is not None and k < 2:
        raise ValueError("DeepFool needs a model with k >= 2 logits; for one logit use "
                         "margin_sensitivity or fgsm.")
    if target == "prediction":
        labels = tf.argmax(call_logits(model, x), axis=1, output_type=tf.int32)
    else:
        labels = tf.reshape(tf.cast(y, tf.int32), [-1])
    settings = (norm, int(max_iter), overshoot, step_clip,
                None if candidates is None else int(candidates), clip_min, clip_max)
    perturbation, success, iterations = _compiled(model, settings, jit_compile)(x, labels)
    return DeepFoolResult(perturbation, success, iterations)
