"""Pieces of attack steps that several attacks share, in `keras.ops`.

The loss gradient (FGSM, DDN, adversarial training), the cosine schedules of FMN and DDN, the
largest perturbation a box allows, and the gradient without its box-blocked coordinates. No
attack imports another attack's module: what two of them share lives here or in `norms.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin.jacobian import call_logits, flat_norm


def crossentropy_per_sample(labels: Any, logits: Any):
    """Softmax cross-entropy on logits, or sigmoid cross-entropy for one logit ({0, 1} labels)."""
    if logits.shape[-1] == 1:
        target = ops.cast(ops.reshape(labels, (-1, 1)) > 0, logits.dtype)
        return ops.binary_crossentropy(target, logits, from_logits=True)[:, 0]
    return ops.sparse_categorical_crossentropy(ops.reshape(ops.cast(labels, "int32"), (-1,)),
                                               logits, from_logits=True)


def loss_gradient(model: Callable, x: Any, labels: Any, loss: Callable | None = None,
                  training: bool = False):
    """(logits, grad_x sum_b L(f(x_b), y_b)) from one forward and one backward pass."""
    loss = loss or crossentropy_per_sample

    def per_sample_loss(z):
        logits = call_logits(model, z, training=training)
        return loss(labels, logits), logits

    _, logits, grad = backend.value_and_grad(per_sample_loss, x, has_aux=True)
    return logits, ops.stop_gradient(grad)


def cosine_schedule(t: Any, steps: int, start: float, end: float):
    """end + (start - end) (1 + cos(pi t / steps)) / 2: start at t = 0, end at t = steps."""
    t = ops.cast(t, "float32")
    return end + (start - end) * (1.0 + ops.cos(math.pi * t / steps)) / 2.0


def free_directions(grad: Any, point: Any, clip: tuple[float | None, float | None]):
    """The gradient without the coordinates that the box blocks: pixels at its lower bound that
    the ascent would lower, or at its upper bound that it would raise. Step lengths and the
    linearised distance to the boundary are then those of the moves actually possible (MNIST
    digits have most pixels at 0 or 1, where a full-gradient step is mostly clipped away)."""
    lo, hi = clip
    blocked = ops.zeros_like(grad) > 0
    if lo is not None:
        blocked = ops.logical_or(blocked, ops.logical_and(point <= lo, grad < 0))
    if hi is not None:
        blocked = ops.logical_or(blocked, ops.logical_and(point >= hi, grad > 0))
    return ops.where(blocked, ops.zeros_like(grad), grad)


def worst_case_norm(x: Any, clip: tuple[float | None, float | None], norm: str):
    """The largest ||delta|| the box allows per sample (inf without a box)."""
    lo, hi = clip
    if lo is None or hi is None:
        return flat_norm(x, "linf") * 0 + np.inf
    return flat_norm(ops.maximum(x - lo, hi - x), norm)
