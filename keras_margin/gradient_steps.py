"""The fast gradient step and what it is made of, in `keras.ops`: the loss gradient with respect
to the input, the step (sign or normalised gradient), the projection into an input box.

The one place shared by the attacks (FGSM, DDN, APGD, ...) and by adversarial training, so that
the trainers need not import the attacks: both stand on this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin.jacobian import call_logits
from keras_margin.norms import normalize


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


def project_box(x: Any, x_adv: Any, clip_min: float | None, clip_max: float | None):
    """x_adv clipped to the box (keras.ops); a no-op without one."""
    if clip_min is None and clip_max is None:
        return x_adv
    lo = -np.inf if clip_min is None else clip_min
    hi = np.inf if clip_max is None else clip_max
    return ops.clip(x_adv, lo, hi)


def fgsm_step(grad: Any, norm: str = "linf"):
    """The unit step of the fast gradient method: sign(grad) (l_inf) or grad / ||grad||_2."""
    return ops.sign(grad) if norm == "linf" else normalize(grad, "l2")


def fgsm_examples(model: Callable, x: Any, labels: Any, eps: Any, norm: str = "linf",
                  clip: tuple[float | None, float | None] = (None, None),
                  loss: Callable | None = None, training: bool = False):
    """(logits of x, x + eps * step) with the fast gradient step; no checks, no gradient
    through the step: the core that `FGSM`, `fgsm` and adversarial training share."""
    logits, grad = loss_gradient(model, x, labels, loss, training)
    return logits, project_box(x, x + eps * fgsm_step(grad, norm), *clip)
