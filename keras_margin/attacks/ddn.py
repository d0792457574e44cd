"""Decoupled Direction and Norm attack (Rony et al., CVPR 2019), l2, batched in lanes.

Each step ascends the cross-entropy by an l2-normalised gradient step of size alpha_t (cosine
annealed from 1 to 0.01), then rescales delta to the norm epsilon, which shrinks by (1 - gamma)
while the point is adversarial and grows by (1 + gamma) while it is not. The result is the
smallest adversarial delta seen. Where the gradient is zero (a saturated softmax: p_y rounds to
1), the step takes a fixed random direction instead, as Foolbox does; such samples are also
reported as `stuck`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops

from keras_margin._validation import check_integer, check_non_negative, check_positive
from keras_margin.attacks import base
from keras_margin.attacks.lanes import gather_samples
from keras_margin.attacks.steps import cosine_schedule, loss_gradient, worst_case_norm
from keras_margin.jacobian import flat_norm, per_sample
from keras_margin.norms import normalize


@base.register
@dataclasses.dataclass(frozen=True)
class DDN(base.MinimumNormAttack):
    """DDN's settings (the paper's defaults); an l2 attack. See `ddn`."""

    steps: int = 100
    init_epsilon: float = 1.0
    gamma: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check_integer("steps", self.steps))
        object.__setattr__(self, "init_epsilon", check_positive(
            "init_epsilon", self.init_epsilon, resolved=True))
        object.__setattr__(self, "gamma", check_non_negative("gamma", self.gamma, maximum=1))
        object.__setattr__(self, "seed", check_integer("seed", self.seed, minimum=0))

    @property
    def name(self) -> str:
        return "ddn"

    @property
    def norm(self) -> str:
        """The threat model's norm: DDN is an l2 attack."""
        return "l2"

    def run(self, model: Callable, inputs: base.Inputs, lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0,
            init_result: base.AttackResult | None = None) -> base.AttackResult:
        del init_result  # DDN starts from x
        out = self.run_kernel(model, inputs, lanes,
                              lambda dtype: _Kernel(model, self, inputs, dtype),
                              ("best_delta", "adv_found", "stuck", "t"), self._load(inputs),
                              min(self.steps, 25), jit_compile, verbose)
        perturbation, success = base.verify_minimum_norm(model, inputs, out["best_delta"],
                                                         out["adv_found"], lanes)
        return base.AttackResult(perturbation, success, out["t"].astype(np.int32),
                                 out["stuck"])

    def _load(self, inputs: base.Inputs):
        """Each job's sample and its fallback direction, reproducible from the sample index."""
        gather = gather_samples(inputs.x, inputs.labels)

        def load(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            noise = np.stack([np.random.default_rng([self.seed, int(i)]).normal(
                size=inputs.x.shape[1:]) for i in params["index"]]).astype(inputs.x.dtype)
            return {**gather(params), "noise": noise}

        return load


class _Kernel:
    """One DDN step for every lane (see `lanes.Kernel`)."""

    def __init__(self, model: Callable, config: DDN, inputs: base.Inputs, dtype: str):
        self.model, self.config, self.dtype = model, config, dtype
        self.clip = (inputs.clip_min, inputs.clip_max)

    def init(self, inputs: dict[str, Any]) -> dict[str, Any]:
        x, labels = inputs["x"], ops.cast(inputs["label"], "int32")
        worst = worst_case_norm(x, self.clip, "l2")
        zeros = ops.zeros_like(labels)
        return {"x": x, "label": labels, "noise": inputs["noise"], "delta": ops.zeros_like(x),
                "best_delta": ops.zeros_like(x), "best_norm": worst, "worst_norm": worst,
                "epsilon": ops.full_like(worst, self.config.init_epsilon),
                "adv_found": zeros > 0, "stuck": zeros > 0, "t": zeros,
                "active": ops.convert_to_tensor(inputs["valid"])}

    def step(self, s: dict[str, Any]) -> dict[str, Any]:
        config, x, labels, delta = self.config, s["x"], s["label"], s["delta"]
        alpha = ops.cast(cosine_schedule(s["t"], config.steps, 1.0, 0.01), x.dtype)
        logits, grad = loss_gradient(self.model, x + delta, labels)
        grad = ops.cast(grad, x.dtype)
        adversarial = ops.cast(ops.argmax(logits, axis=1), "int32") != labels
        size = flat_norm(delta, "l2")
        better = ops.logical_and(adversarial, size <= s["best_norm"])
        best_norm = ops.where(better, size, s["best_norm"])
        best_delta = ops.where(per_sample(better, x), delta, s["best_delta"])
        stuck = flat_norm(grad, "l2") <= 0
        grad = ops.where(per_sample(stuck, x), s["noise"], grad)
        delta = delta + per_sample(alpha, x) * normalize(grad, "l2")
        rate = ops.where(adversarial, 1.0 - config.gamma, 1.0 + config.gamma)  # float32
        epsilon = ops.minimum(s["epsilon"] * ops.cast(rate, x.dtype), s["worst_norm"])
        length = flat_norm(delta, "l2")
        delta = delta * per_sample(epsilon / ops.where(length > 0, length,
                                                       ops.ones_like(length)), x)
        delta = base.project_box(x, x + delta, *self.clip) - x
        t = s["t"] + 1
        return {**s, "delta": delta, "best_delta": best_delta, "best_norm": best_norm,
                "epsilon": epsilon, "adv_found": ops.logical_or(s["adv_found"], adversarial),
                "stuck": ops.logical_or(s["stuck"], stuck), "t": t,
                "active": t < config.steps}


def ddn(model: Callable, x: Any, y: Any, steps: int = 100, init_epsilon: float = 1.0,
        gamma: float = 0.05, clip_min: float | None = None, clip_max: float | None = None,
        batch_size: int | None = None, jit_compile: bool | str = "auto",
        verbose: int = 0) -> base.AttackResult:
    """The smallest l2 perturbation that flips each prediction, by DDN.

    Args:
        model: a Keras model or callable returning logits (batch, k), k >= 2.
        x, y: inputs (n, ...) and their true labels (n,).
        steps: iterations per sample (the paper: 100 to 1000).
        init_epsilon: the first norm of delta (the paper: 1).
        gamma: the rate of the norm update (the paper: 0.05).
        clip_min, clip_max: optional input box; x must lie inside it.
        batch_size: samples attacked side by side (lanes, default 256).
        jit_compile: as for `deepfool`.
        verbose: 1 shows a progress bar.

    Returns:
        An `AttackResult` as `fmn`'s.

    Example:
        >>> np.median(ddn(model, x_test[:500], y_test[:500]).distances("l2"))
    """
    return DDN(steps=steps, init_epsilon=init_epsilon, gamma=gamma)(
        model, x, y, clip_min=clip_min, clip_max=clip_max, batch_size=batch_size,
        jit_compile=jit_compile, verbose=verbose)
