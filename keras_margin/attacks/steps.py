"""Pieces of attack steps that several attacks share, in `keras.ops`.

The cosine schedules of FMN and DDN, the largest perturbation a box allows, and the gradient
without its box-blocked coordinates (the loss gradient, which adversarial training shares too,
lives below the attacks in `keras_margin.gradient_steps`). No attack imports another attack's
module: what two of them share lives here, in `gradient_steps.py` or in `norms.py`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from keras import ops

from keras_margin.gradient_steps import crossentropy_per_sample, loss_gradient  # noqa: F401
from keras_margin.jacobian import flat_norm


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
