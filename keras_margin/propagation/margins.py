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

* "lipschitz": a global Lipschitz margin, as GloRo nets (Leino et al., 2021) train it:
  m_j = f_y(x) - f_j(x) - eps ||W_last^T (e_y - e_j)||_* prod_l ||W_l||, the operator norms of
  the layers below the logits; l_inf's exactly (the largest absolute row sum), l2's by one step
  of power iteration per training step from vectors the trainer keeps (an estimate from below
  until they converge: `certify(method="lipschitz")` gives the proven radius).

The robust loss is the data loss on -m: cross-entropy gives log(1 + sum_{j != y} exp(-m_j))
(Wong & Kolter, 2018; Gowal et al.), the multiclass hinge max(0, 1 - min_{j != y} m_j).
"""

from __future__ import annotations

from typing import Any

from keras import ops

from keras_margin.propagation.bounds import Region, margin_rows, operator_norm, propagated_margins
from keras_margin.propagation.network import Add, Linear, ReLU, is_chain

TRAINING_METHODS = ("ibp", "crown-ibp", "lipschitz")


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


def power_iterated(operations: list) -> list[int]:
    """The indices of the operations whose l2 norm `lipschitz_margins` estimates by power
    iteration: the linear maps below the logits that are not pure reshapes."""
    return [i for i, op in enumerate(operations[:-1])
            if isinstance(op, Linear) and not op.reshape]


def lipschitz_margins(operations: list, logits: Any, labels: Any, eps: Any, norm: str,
                      vectors: list | None = None) -> tuple[Any, list]:
    """GloRo's margins (B, k) (m_y = 0) and the power iteration's next vectors.

    `logits` are the network's at x (B, k); `vectors` one (1, *in_shape) per index of
    `power_iterated` (l2 only; ignored for l_inf). Differentiable in the weights: a norm
    through the layer's own map at the iteration's (constant) unit vector."""
    last = operations[-1]
    if not is_chain(operations):
        joins = [op.name for op in operations if isinstance(op, Add)]
        raise ValueError("method='lipschitz' trains a chain of layers; this model joins "
                         f"branches at {joins}: use method='ibp' or 'crown-ibp'.")
    if not isinstance(last, Linear):
        raise ValueError("method='lipschitz' needs the logits to come from a Dense or Conv2D "
                         "layer without an activation.")
    product, updated = ops.cast(1.0, logits.dtype), []
    iterated = dict(zip(power_iterated(operations), vectors or []))
    for i, op in enumerate(operations[:-1]):
        if isinstance(op, ReLU) or (isinstance(op, Linear) and op.reshape):
            continue
        if not isinstance(op, Linear):  # max pooling: a constant
            product = product * operator_norm(op, norm)
        elif norm == "linf":
            product = product * ops.max(op.apply_abs(ops.ones((1,) + op.in_shape,
                                                               logits.dtype)))
        else:
            v = ops.stop_gradient(iterated[i])
            u = op.apply(v)
            step = op.transpose(ops.stop_gradient(u))
            v_next = step / ops.maximum(ops.sqrt(ops.sum(ops.square(step))), 1e-30)
            updated.append(ops.stop_gradient(v_next))
            product = product * ops.sqrt(ops.sum(ops.square(op.apply(updated[-1]))))
    k = last.out_shape[-1]
    rows = margin_rows(labels, k, logits.dtype)  # (B, k, k): e_y - e_j
    through = ops.reshape(last.transpose(ops.reshape(rows, (-1, k))),
                          (ops.shape(rows)[0], k, -1))
    dual = ops.sum(ops.abs(through), axis=-1) if norm == "linf" else \
        ops.sqrt(ops.maximum(ops.sum(ops.square(through), axis=-1), 1e-24))
    eps = ops.reshape(ops.cast(eps, logits.dtype), (-1, 1))
    margins = ops.sum(rows * logits[:, None], axis=-1) - eps * dual * product
    own = ops.one_hot(labels, k, dtype=margins.dtype) > 0
    return ops.where(own, ops.zeros_like(margins), margins), updated
