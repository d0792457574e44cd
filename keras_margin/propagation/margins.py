"""Certified margins as a training loss: IBP (Gowal et al., 2018) and CROWN-IBP (Zhang et al.,
2020).

The proven counterpart of the paper's margin: m_j, a lower bound of f_y(x') - f_j(x') over every
x' in the ball ||x' - x||_p <= eps (l_inf inside the input box), from the bound code of
`bounds.py`, here as training needs it: differentiable in the weights on every backend, m_y = 0,
and without the rounding allowance `certify` adds (a training signal, not a certificate).

* "ibp": intervals layer by layer, the last layer folded into the margins (elision).
* "crown-ibp": the margins back-substituted through the network by CROWN's relaxation on the
  intervals' intermediate bounds, mixed with IBP's as (1 - beta) m_IBP + beta m_CROWN-IBP (a
  convex combination of two lower bounds: a lower bound too). Zhang et al. ramp beta from 1
  to 0 with eps.

The robust loss is the data loss on -m: cross-entropy gives log(1 + sum_{j != y} exp(-m_j))
(Wong & Kolter, 2018; Gowal et al.), the multiclass hinge max(0, 1 - min_{j != y} m_j).
"""

from __future__ import annotations

from typing import Any

from keras import ops

from keras_margin.propagation.bounds import Region, margin_rows, propagated_margins

TRAINING_METHODS = ("ibp", "crown-ibp")


def training_margins(operations: list, x0: Any, labels: Any, eps: Any, norm: str, method: str,
                     box: tuple[float | None, float | None], beta: Any = 1.0) -> Any:
    """Lower bounds m (B, k) of f_y - f_j over the ball of radius eps (a scalar or one per
    sample) around x0, by `method` ("ibp" or "crown-ibp", the latter mixed with IBP's by
    `beta`); m_y = 0. Differentiable in the weights the operations read."""
    region = Region(x0, eps, norm, box)
    k = operations[-1].out_shape[-1]
    rows = margin_rows(labels, k, x0.dtype)
    (margins, _), crown_of = propagated_margins(operations, region, rows, method)
    if method == "crown-ibp":
        ibp = margins

        def mixed():
            weight = ops.cast(beta, ibp.dtype)
            return (1.0 - weight) * ibp + weight * crown_of()[0]

        # beta 0 (the end of Zhang et al.'s schedule): IBP's alone, without CROWN's pass
        if isinstance(beta, (int, float)):
            margins = mixed() if beta > 0 else ibp
        else:
            margins = ops.cond(ops.all(beta > 0), mixed, lambda: ibp)
    own = ops.one_hot(labels, k, dtype=margins.dtype) > 0
    return ops.where(own, ops.zeros_like(margins), margins)
