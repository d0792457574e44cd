"""Per-sample norms, normalisations and projections onto l_p balls, in `keras.ops`.

The threat model's norm p is the attacks' `norm` ("l2", "linf", "l1"); distances to a linearised
boundary are measured with the dual norm of the gradient (l2 <-> l2, linf <-> l1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from keras_margin.jacobian import flat_norm, per_sample

DUAL = {"l2": "l2", "linf": "l1", "l1": "linf"}


def normalize(v: Any, norm: str = "l2"):
    """v / ||v|| per sample; zero rows stay zero.

    Divides by the largest |v_i| first (as Miyato et al.'s VAT code), so that tiny vectors,
    such as a finite difference's, do not underflow when squared.
    """
    scale = per_sample(flat_norm(v, "linf"), v)
    v = v / ops.where(scale > 0, scale, ops.ones_like(scale))
    length = per_sample(flat_norm(v, norm), v)
    return v / ops.where(length > 0, length, ops.ones_like(length))


def project_l1_ball(delta: Any, radius: Any):
    """Euclidean projection of each sample onto the l1 ball of its `radius` (Duchi et al., 2008).

    Sorts |delta| once per sample: O(d log d). Samples already inside stay as they are.
    """
    shape = (-1,) + tuple(delta.shape[1:])
    flat = ops.reshape(delta, (-1, int(np.prod(delta.shape[1:]))))
    magnitude = ops.abs(flat)
    radius = ops.cast(radius, flat.dtype)
    inside = ops.sum(magnitude, axis=1) <= radius
    mu = ops.flip(ops.sort(magnitude, axis=1), axis=1)
    cumulative = ops.cumsum(mu, axis=1)
    ranks = ops.cast(ops.arange(1, flat.shape[1] + 1), flat.dtype)[None]
    positive = mu * ranks > cumulative - radius[:, None]
    rho = ops.cast(ops.max(ops.where(positive, ranks, ops.zeros_like(ranks)), axis=1), "int32") - 1
    rho = ops.maximum(rho, 0)
    theta = (ops.take_along_axis(cumulative, rho[:, None], axis=1)[:, 0] - radius) \
        / ops.cast(rho + 1, flat.dtype)
    projected = ops.sign(flat) * ops.relu(magnitude - theta[:, None])
    return ops.reshape(ops.where(inside[:, None], flat, projected), shape)


def project_ball(delta: Any, radius: Any, norm: str):
    """delta projected onto the l_p ball of per-sample `radius` (inf radius: unchanged)."""
    radius = ops.cast(radius, delta.dtype)
    if norm == "linf":
        bound = per_sample(radius, delta)
        return ops.minimum(ops.maximum(delta, -bound), bound)
    if norm == "l2":
        length = flat_norm(delta, "l2")
        scale = ops.where(length > radius, radius / ops.where(length > 0, length,
                                                                ops.ones_like(length)),
                          ops.ones_like(length))
        return delta * per_sample(scale, delta)
    finite = ops.isfinite(radius)
    safe = ops.where(finite, radius, ops.zeros_like(radius))
    return ops.where(per_sample(finite, delta), project_l1_ball(delta, safe), delta)
