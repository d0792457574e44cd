"""The fast gradient sign method (Goodfellow et al., 2015): x + eps * sign(grad_x L(f(x), y))."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin._validation import check_non_negative
from keras_margin.attacks import base
from keras_margin.attacks.norms import normalize
from keras_margin.jacobian import call_logits


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


def fgsm_step(grad: Any, norm: str = "linf"):
    """The unit step of the fast gradient method: sign(grad) (l_inf) or grad / ||grad||_2."""
    return ops.sign(grad) if norm == "linf" else normalize(grad, "l2")


def fgsm_examples(model: Callable, x: Any, labels: Any, eps: float, norm: str = "linf",
                  clip: tuple[float | None, float | None] = (None, None),
                  loss: Callable | None = None, training: bool = False):
    """(logits of x, x + eps * step) with the fast gradient step; no checks, no gradient
    through the step: the core that `fgsm`, the evaluation and adversarial training share."""
    logits, grad = loss_gradient(model, x, labels, loss, training)
    return logits, base.project_box(x, x + eps * fgsm_step(grad, norm), *clip)


def fgsm(model: Callable, x: Any, y: Any, eps: float = 0.2,
         clip: tuple[float, float] | None = None, loss: Callable | None = None,
         training: bool = False):
    """Adversarial examples by one signed gradient step on the loss (l_inf ball of radius eps).

    Args:
        model: a Keras model or callable returning logits.
        x: inputs (batch, ...); integer images are cast to float.
        y: labels (batch,): class indices, or {0, 1} / {-1, +1} for one logit.
        eps: step size (the paper: 0.2 on MNIST in [0, 1], 0.05 on CIFAR-10).
        clip: optional (min, max) box for the result; x must lie inside it.
        loss: per-sample loss `(labels, logits) -> (batch,)`; default cross-entropy.
        training: passed to the model's call.

    Returns:
        x + eps * sign(grad_x loss), clipped to `clip` when given (a backend tensor).

    Example:
        >>> x_adv = fgsm(model, x_test, y_test, eps=0.2, clip=(0.0, 1.0))
    """
    eps = check_non_negative("eps", eps)
    lo, hi = (None, None) if clip is None else clip
    inputs = base.check_inputs(model, x, y, lo, hi, "fgsm", min_classes=1)
    x = ops.convert_to_tensor(inputs.x)
    labels = ops.convert_to_tensor(_binary_or_class(inputs.labels, inputs.num_classes))
    return fgsm_examples(model, x, labels, eps, clip=(inputs.clip_min, inputs.clip_max),
                         loss=loss, training=training)[1]


def _binary_or_class(labels: np.ndarray, k: int) -> np.ndarray:
    """{-1, +1} binary labels as {0, 1}; class indices unchanged."""
    return (labels > 0).astype(np.int32) if k == 1 else labels
