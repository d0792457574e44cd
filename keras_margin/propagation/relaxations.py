"""CROWN's linear relaxations of the nonlinearities, on rows of any layout.

Each takes the rows lam (lower and upper) and the layer's bounds already aligned with them
(broadcastable: `bounds.py` passes dense rows (B, m, *shape), `patches.py` patches), and
returns the rows through the layer and the bias terms their relaxation adds, summed over
`axes` (the rows' entries).
"""

from __future__ import annotations

from typing import Any

from keras import ops

from keras_margin import backend


def relax_relu(lam_lo: Any, lam_up: Any, lower: Any, upper: Any, axes: tuple) -> tuple:
    """CROWN's ReLU relaxation on rows lam and input bounds aligned with them (broadcast):
    (lower rows, upper rows, lower bias, upper bias), the biases summed over `axes`."""
    unstable = ops.logical_and(lower < 0, upper > 0)
    width = ops.where(unstable, upper - lower, ops.ones_like(upper))
    up_slope = ops.where(upper <= 0, 0.0, ops.where(lower >= 0, 1.0, upper / width))
    up_bias = ops.where(unstable, -lower * up_slope, 0.0)
    low_slope = ops.where(lower >= 0, 1.0, ops.where(upper <= 0, 0.0,
                                                     ops.cast(upper > -lower, lower.dtype)))
    bias_lo = ops.sum(backend.minimum(lam_lo, 0.0) * up_bias, axis=axes)
    bias_up = ops.sum(ops.relu(lam_up) * up_bias, axis=axes)
    new_lo = ops.relu(lam_lo) * low_slope + backend.minimum(lam_lo, 0.0) * up_slope
    new_up = ops.relu(lam_up) * up_slope + backend.minimum(lam_up, 0.0) * low_slope
    return new_lo, new_up, bias_lo, bias_up


def relax_maxpool(lam_lo: Any, lam_up: Any, decided: Any, pooled_up: Any, axes: tuple) -> tuple:
    """Max pooling's relaxation on rows over its output, `decided` and the windows' largest
    upper bound aligned with them: (lower rows, upper rows, lower bias, upper bias) over the
    output; each row then goes to its window's chosen input (the caller spreads it)."""
    neg_lo, pos_up = backend.minimum(lam_lo, 0.0), ops.relu(lam_up)
    bias_lo = ops.sum(ops.where(decided, 0.0, neg_lo) * pooled_up, axis=axes)
    bias_up = ops.sum(ops.where(decided, 0.0, pos_up) * pooled_up, axis=axes)
    through_lo = ops.relu(lam_lo) + ops.where(decided, neg_lo, 0.0)
    through_up = backend.minimum(lam_up, 0.0) + ops.where(decided, pos_up, 0.0)
    return through_lo, through_up, bias_lo, bias_up
