"""The fast gradient sign method (Goodfellow et al., 2015): x + eps * sign(grad_x L(f(x), y)).

`FGSM` is the budgeted attack (an `AttackResult` per budget, successes verified); `fgsm` the
paper's function that returns the adversarial examples themselves; `fgsm_examples` the core that
both and adversarial training share (no checks, no gradient through the step).
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin._validation import check_box_pair, check_choice, check_positive
from keras_margin.attacks import base
from keras_margin.gradient_steps import fgsm_examples, fgsm_step, loss_gradient  # noqa: F401
from keras_margin.jacobian import flat_norm

NORMS = ("linf", "l2")


_PROGRAMS: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


@base.register
@dataclasses.dataclass(frozen=True)
class FGSM(base.BudgetAttack):
    """One signed (l_inf) or normalised (l2) gradient step of the cross-entropy, of length eps.

    Call it as `FGSM()(model, x, y, eps=eps)`; `success` is "misclassified after the step", for
    every point (the paper's FGSM error counts the points misclassified before it too).
    """

    norm: str = "linf"

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)

    @property
    def name(self) -> str:
        return "fgsm" if self.norm == "linf" else "fgm_l2"

    def run(self, model: Callable, inputs: base.Inputs, budgets: Sequence[float], lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0) -> dict[float, base.AttackResult]:
        step = self._program(model, inputs, jit_compile)
        bar = base.progress_bar(len(inputs.x) * len(budgets), verbose, self.name)
        results = {}
        for i, eps in enumerate(budgets):
            perturbation = np.empty_like(inputs.x)
            stuck = np.empty(len(inputs.x), bool)
            for start in range(0, len(inputs.x), lanes):
                part = slice(start, start + lanes)
                delta, flat = step(ops.convert_to_tensor(inputs.x[part]),
                                   ops.convert_to_tensor(inputs.labels[part]),
                                   ops.convert_to_tensor(eps, inputs.x.dtype))
                perturbation[part] = ops.convert_to_numpy(delta)
                stuck[part] = ops.convert_to_numpy(flat)
                if bar is not None:
                    bar(i * len(inputs.x) + min(start + lanes, len(inputs.x)))
            perturbation, success = base.verify(model, inputs, perturbation, lanes)
            results[float(eps)] = base.AttackResult(perturbation, success,
                                                    np.ones(len(inputs.x), np.int32), stuck)
        return results

    def _program(self, model: Callable, inputs: base.Inputs, jit_compile: bool | str):
        """The compiled step (x, labels, eps) -> (x_adv - x, zero gradient), built once per
        model and setting."""
        key = (self, inputs.clip_min, inputs.clip_max, str(inputs.x.dtype), jit_compile)
        try:
            cache = _PROGRAMS.setdefault(model, {})
        except TypeError:  # not weak-referenceable: build without caching
            cache = {}
        if key not in cache:
            clip = (inputs.clip_min, inputs.clip_max)

            def step(x, labels, eps):
                logits, grad = loss_gradient(model, x, labels)
                x_adv = base.project_box(x, x + eps * fgsm_step(grad, self.norm), *clip)
                return x_adv - x, flat_norm(grad, "linf") <= 0

            cache[key] = backend.compile_fn(step, model, jit_compile)
        return cache[key]


def fgsm(model: Callable, x: Any, y: Any, eps: float = 0.2,
         clip: tuple[float, float] | None = None, loss: Callable | None = None,
         training: bool = False, clip_min: float | None = None,
         clip_max: float | None = None):
    """Adversarial examples by one signed gradient step on the loss (l_inf ball of radius eps).

    Args:
        model: a Keras model or callable returning logits.
        x: inputs (batch, ...); integer images are cast to float.
        y: labels (batch,): class indices, or {0, 1} / {-1, +1} for one logit.
        eps: step size (the paper: 0.2 on MNIST in [0, 1], 0.05 on CIFAR-10).
        clip_min, clip_max: optional input box for the result; x must lie inside it.
            (`clip=(min, max)`, the older spelling, still works.)
        loss: per-sample loss `(labels, logits) -> (batch,)`; default cross-entropy.
        training: passed to the model's call.

    Returns:
        x + eps * sign(grad_x loss), clipped to the box when given (a backend tensor). For
        verified successes per sample, call `attacks.FGSM()(model, x, y, eps=eps)`.

    Example:
        >>> x_adv = fgsm(model, x_test, y_test, eps=0.2, clip_min=0.0, clip_max=1.0)
    """
    eps = check_positive("eps", eps, resolved=True)
    if clip is not None:
        if clip_min is not None or clip_max is not None:
            raise ValueError("Pass the input box either as clip=(min, max) or as "
                             "clip_min/clip_max, not both.")
        warnings.warn("fgsm(clip=(min, max)) is deprecated: pass clip_min=, clip_max= as the "
                      "other attacks take them.", DeprecationWarning, stacklevel=2)
        clip_min, clip_max = check_box_pair("clip", clip)
    inputs = base.check_inputs(model, x, y, clip_min, clip_max, "fgsm", min_classes=1)
    x = ops.convert_to_tensor(inputs.x)
    labels = ops.convert_to_tensor(_binary_or_class(inputs.labels, inputs.num_classes))
    return fgsm_examples(model, x, labels, eps, clip=(inputs.clip_min, inputs.clip_max),
                         loss=loss, training=training)[1]


def _binary_or_class(labels: np.ndarray, k: int) -> np.ndarray:
    """{-1, +1} binary labels as {0, 1}; class indices unchanged."""
    return (labels > 0).astype(np.int32) if k == 1 else labels
