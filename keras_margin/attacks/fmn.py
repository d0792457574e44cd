"""Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021), l2, linf and l1, batched in lanes.

Each step takes the input gradient of the logit difference f_j - f_y (j the runner-up class),
moves delta by an l2-normalised gradient step of size alpha_t, and projects delta onto the l_p
ball of radius epsilon_t. epsilon adapts: it shrinks by (1 - gamma_t) while the point is
adversarial (never above the best adversarial norm found), grows by (1 + gamma_t) once an
adversarial was found but the point is not, and before any is found jumps to ||delta|| plus the
linearised distance to the boundary, |f_y - f_j| / ||grad||_dual (here at least a (1 + gamma_t)
growth, so that a point resting on the boundary, as on a linear model, still crosses it).
alpha_t and gamma_t follow
cosine schedules (alpha from `max_stepsize` to `min_stepsize`, gamma from `gamma` to 0.001).
The result is the smallest adversarial delta seen. Unlike Foolbox 3.3.4's `L2FMNAttack`, whose
l2 projection is a no-op (`norms / norms`), the l2 ball projection here is the paper's. With an
input box, the gradient's blocked coordinates (pixels at a bound, pushed outwards) are left out
of the step and of the distance estimate (`free_directions`), so no step is wasted on clipping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops

from keras_margin._validation import (
    check_choice,
    check_integer,
    check_non_negative,
    check_positive,
)
from keras_margin.attacks import base
from keras_margin.attacks.lanes import gather_samples
from keras_margin.attacks.steps import cosine_schedule, free_directions, worst_case_norm
from keras_margin.jacobian import flat_norm, logits_and_pullback, per_sample, runner_up
from keras_margin.norms import DUAL, normalize, project_ball


@base.register
@dataclasses.dataclass(frozen=True)
class FMN(base.MinimumNormAttack):
    """Fast Minimum-Norm's settings (the paper's defaults); see `fmn`.

    `init` is another minimum-norm attack whose adversarials FMN starts from (pulled back to
    the decision boundary), or None to start from x; "deepfool" is accepted for
    `DeepFool(norm="l2")` (`"linf"` for the l_inf and l1 threats).
    """

    norm: str = "l2"
    steps: int = 100
    max_stepsize: float = 1.0
    min_stepsize: float | None = None
    gamma: float = 0.05
    init: base.MinimumNormAttack | None = None

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, base.THREAT_NORMS)
        object.__setattr__(self, "steps", check_integer("steps", self.steps))
        object.__setattr__(self, "max_stepsize",
                           check_positive("max_stepsize", self.max_stepsize, resolved=True))
        if self.min_stepsize is None:
            object.__setattr__(self, "min_stepsize", self.max_stepsize / 100)
        object.__setattr__(self, "min_stepsize",
                           check_non_negative("min_stepsize", self.min_stepsize,
                                              maximum=self.max_stepsize))
        object.__setattr__(self, "gamma", check_non_negative("gamma", self.gamma, maximum=1))
        object.__setattr__(self, "init", self._start_attack(self.init))

    def _start_attack(self, init: Any) -> base.MinimumNormAttack | None:
        if init == "deepfool":  # the name this option had before it took an attack
            return base.attack_class("DeepFool")(norm="l2" if self.norm == "l2" else "linf")
        if init is None or isinstance(init, base.MinimumNormAttack):
            return init
        raise ValueError(f"Invalid value for argument init: {init!r}. Expected None, "
                         "'deepfool' or a minimum-norm attack object (e.g. attacks.DeepFool()).")

    @property
    def name(self) -> str:
        return f"fmn_{self.norm}"

    def run(self, model: Callable, inputs: base.Inputs, lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0,
            init_result: base.AttackResult | None = None) -> base.AttackResult:
        start = self._starting_points(model, inputs, lanes, jit_compile, init_result)
        gather = gather_samples(inputs.x, inputs.labels)
        out = self.run_kernel(model, inputs, lanes,
                              lambda dtype: _Kernel(model, self, inputs, dtype),
                              ("best_delta", "adv_found", "stuck", "t"),
                              lambda p: {**gather(p), "start": start[p["index"]]},
                              min(self.steps, 25), jit_compile, verbose)
        perturbation, success = base.verify_minimum_norm(model, inputs, out["best_delta"],
                                                         out["adv_found"], lanes)
        return base.AttackResult(perturbation, success, out["t"].astype(np.int32),
                                 out["stuck"])

    def _starting_points(self, model: Callable, inputs: base.Inputs, lanes: int,
                         jit_compile: bool | str,
                         found: base.AttackResult | None = None) -> np.ndarray:
        """Zeros (the paper's default), or the `init` attack's adversarials pulled back to the
        decision boundary by a 10-step bisection along the segment from x, as FMN's
        init_attack option does."""
        if self.init is None:
            return np.zeros_like(inputs.x)
        if found is None:
            found = self.init.run(model, inputs, lanes, jit_compile)
        low, high = np.zeros(len(inputs.x)), np.ones(len(inputs.x))
        for _ in range(10):
            middle = (low + high) / 2
            trial = base.per_sample_mask(middle, inputs.x) * found.perturbation
            fooled = base.strict_flips(model, inputs.x + trial, inputs.labels, lanes)
            low, high = np.where(fooled, low, middle), np.where(fooled, middle, high)
        start = base.per_sample_mask(high, inputs.x) * found.perturbation
        return np.where(base.per_sample_mask(found.success, start), start, 0).astype(
            inputs.x.dtype)


class _Kernel:
    """One FMN step for every lane (see `lanes.Kernel`)."""

    def __init__(self, model: Callable, config: FMN, inputs: base.Inputs, dtype: str):
        self.model, self.config, self.dtype = model, config, dtype
        self.k, self.clip = inputs.num_classes, (inputs.clip_min, inputs.clip_max)

    def init(self, inputs: dict[str, Any]) -> dict[str, Any]:
        x, labels, start = inputs["x"], ops.cast(inputs["label"], "int32"), inputs["start"]
        worst = worst_case_norm(x, self.clip, self.config.norm)
        size = flat_norm(start, self.config.norm)
        found = size > 0  # a starting point is adversarial (zero: start from x)
        zeros = ops.zeros_like(labels)
        return {"x": x, "label": labels, "delta": start, "best_delta": start,
                "best_norm": ops.where(found, size, worst), "worst_norm": worst,
                "epsilon": ops.where(found, size, ops.full_like(worst, np.inf)),
                "adv_found": found, "stuck": zeros > 0, "t": zeros,
                "active": ops.convert_to_tensor(inputs["valid"])}

    def step(self, s: dict[str, Any]) -> dict[str, Any]:
        config, norm = self.config, self.config.norm
        x, labels, delta = s["x"], s["label"], s["delta"]
        alpha = ops.cast(cosine_schedule(s["t"], config.steps, config.max_stepsize,
                                         config.min_stepsize), x.dtype)
        gamma = ops.cast(cosine_schedule(s["t"], config.steps, config.gamma, 0.001), x.dtype)
        logits, pullback = logits_and_pullback(self.model, x + delta, dtype=self.dtype)
        rival = runner_up(logits, labels)
        # d/dx (f_rival - f_y): the direction that crosses the boundary.
        grad = pullback(ops.one_hot(rival, self.k) - ops.one_hot(labels, self.k))
        grad = free_directions(grad, x + delta, self.clip)
        margin = ops.take_along_axis(logits, labels[:, None], axis=1)[:, 0] \
            - ops.take_along_axis(logits, rival[:, None], axis=1)[:, 0]
        adversarial = ops.cast(ops.argmax(logits, axis=1), "int32") != labels
        size = flat_norm(delta, norm)
        better = ops.logical_and(adversarial, size <= s["best_norm"])
        best_norm = ops.where(better, size, s["best_norm"])
        best_delta = ops.where(per_sample(better, x), delta, s["best_delta"])
        adv_found = ops.logical_or(s["adv_found"], adversarial)
        grad_dual = flat_norm(grad, DUAL[norm])
        stuck = grad_dual <= 0
        to_boundary = ops.abs(margin) / ops.where(stuck, ops.ones_like(grad_dual), grad_dual)
        # Before any adversarial is found: the linearised distance, but at least a (1 + gamma)
        # growth, or a point resting on the boundary on the wrong side of a tie never crosses.
        epsilon = ops.where(
            adversarial, ops.minimum(s["epsilon"] * (1 - gamma), best_norm),
            ops.where(adv_found, s["epsilon"] * (1 + gamma),
                      ops.maximum(size + to_boundary, size * (1 + gamma))))
        epsilon = ops.minimum(epsilon, s["worst_norm"])
        delta = project_ball(delta + per_sample(alpha, x) * normalize(grad, "l2"), epsilon, norm)
        delta = base.project_box(x, x + delta, *self.clip) - x
        t = s["t"] + 1
        return {**s, "delta": delta, "best_delta": best_delta, "best_norm": best_norm,
                "epsilon": epsilon, "adv_found": adv_found,
                "stuck": ops.logical_or(s["stuck"], stuck), "t": t,
                "active": t < config.steps}


def fmn(model: Callable, x: Any, y: Any, norm: str = "l2", steps: int = 100,
        max_stepsize: float = 1.0, min_stepsize: float | None = None, gamma: float = 0.05,
        init: Any = None, clip_min: float | None = None, clip_max: float | None = None,
        batch_size: int | None = None, jit_compile: bool | str = "auto",
        verbose: int = 0) -> base.AttackResult:
    """The smallest l_p perturbation that flips each prediction, by Fast Minimum-Norm.

    Args:
        model: a Keras model or callable returning logits (batch, k), k >= 2.
        x, y: inputs (n, ...) and their true labels (n,).
        norm: the threat model's norm: "l2", "linf" or "l1".
        steps: iterations per sample (the paper: 100 to 1000).
        max_stepsize, min_stepsize: the cosine schedule of the gradient step (the paper: 1.0 to
            1.0 / 100).
        gamma: the initial rate of the epsilon update, annealed to 0.001 (the paper: 0.05).
        init: None (the paper's default: start from x), or a minimum-norm attack whose
            adversarials (pulled back to the boundary) FMN starts from, as FMN's init_attack
            option; "deepfool" for `attacks.DeepFool()`. FMN follows the runner-up logit's
            boundary, which can be a farther one than DeepFool's (the nearest linearised one):
            from DeepFool's start it refines the nearer boundary.
        clip_min, clip_max: optional input box; x must lie inside it.
        batch_size: samples attacked side by side (lanes, default 256).
        jit_compile: as for `deepfool`.
        verbose: 1 shows a progress bar.

    Returns:
        An `AttackResult`: the smallest verified adversarial perturbation per sample (zeros
        where none was found), `success`, `iterations` (= steps) and `stuck`.

    Example:
        >>> res = fmn(model, x_test[:500], y_test[:500], norm="linf", clip_min=0, clip_max=1)
        >>> np.median(res.distances("linf"))
    """
    return FMN(norm=norm, steps=steps, max_stepsize=max_stepsize, min_stepsize=min_stepsize,
               gamma=gamma, init=init)(model, x, y, clip_min=clip_min, clip_max=clip_max,
                            batch_size=batch_size, jit_compile=jit_compile, verbose=verbose)
