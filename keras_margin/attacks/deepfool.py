"""DeepFool (Moosavi-Dezfooli et al., 2016), batched in lanes, with a per-sample early exit.

Follows the reference code of the paper (aam-at/margin_maximization, mnist/deepfool.py): the
linearisation is taken at x + r, success is checked at x + (1 + overshoot) r, each step's length
is clipped at `step_clip`, and the result is x + (1 + overshoot) r. A sample stops when it is
fooled, stuck (all gradients zero) or at `max_iter`; its lane is then refilled (`lanes.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

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
from keras_margin.jacobian import (
    call_logits,
    flat_norm,
    logits_and_pullback,
    margin_gradients,
    per_sample,
    rival_classes,
)
from keras_margin.threat import ThreatModel

NORMS = ("l2", "linf")
TARGETS = ("label", "prediction")


@base.register
@dataclasses.dataclass(frozen=True)
class DeepFool(base.MinimumNormAttack):
    """DeepFool's settings (the paper's defaults); call it as `DeepFool(...)(model, x, y)`.

    See `deepfool` for the arguments.
    """

    norm: str = "l2"
    max_iter: int = 50
    overshoot: float = 0.02
    step_clip: float | None = 0.5
    candidates: int | None = None

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        object.__setattr__(self, "max_iter", check_integer("max_iter", self.max_iter))
        object.__setattr__(self, "overshoot", check_non_negative("overshoot", self.overshoot))
        if self.step_clip is not None:
            object.__setattr__(self, "step_clip",
                               check_positive("step_clip", self.step_clip, resolved=True))
        if self.candidates is not None:
            object.__setattr__(self, "candidates",
                               check_integer("candidates", self.candidates, minimum=2))

    @property
    def name(self) -> str:
        return "deepfool"

    positional: ClassVar[tuple[str, ...]] = ("target", "clip_min", "clip_max") + base.EXECUTION
    options: ClassVar[dict[str, Any]] = {"target": "label"}

    def attack(self, model: Callable, x: Any, y: Any, threat: ThreatModel,
               batch_size: int | None, jit_compile: bool | str, verbose: int,
               target: str = "label") -> base.AttackResult:
        """`target`: "label" (the paper's: away from y) or "prediction" (away from the
        model's own prediction; y is not needed)."""
        check_choice("target", target, TARGETS)
        if target == "label":
            return super().attack(model, x, y, threat, batch_size, jit_compile, verbose)
        self.refuse_budget(threat)
        inputs = base.check_inputs(model, x, np.zeros(len(x), np.int32), threat.clip_min,
                                   threat.clip_max, self.name)
        lanes = base.check_lanes(batch_size, len(inputs.x))
        inputs = dataclasses.replace(inputs, labels=base.predictions(model, inputs.x, lanes))
        return self.run(model, inputs, lanes, jit_compile, verbose)

    def run(self, model: Callable, inputs: base.Inputs, lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0,
            init_result: base.AttackResult | None = None) -> base.AttackResult:
        del init_result  # DeepFool starts from x
        out = self.run_kernel(model, inputs, lanes, lambda dtype: _Kernel(model, self, inputs,
                                                                          dtype),
                              ("r", "stuck", "iterations"),
                              gather_samples(inputs.x, inputs.labels), 4, jit_compile, verbose)
        perturbation, success = base.verify(model, inputs, (1.0 + self.overshoot) * out["r"],
                                            lanes)
        return base.AttackResult(perturbation, success, out["iterations"].astype(np.int32),
                                 out["stuck"])


class _Kernel:
    """One DeepFool step for every lane (see `lanes.Kernel`)."""

    def __init__(self, model: Callable, config: DeepFool, inputs: base.Inputs, dtype: str):
        self.model, self.config, self.dtype = model, config, dtype
        self.k, self.clip = inputs.num_classes, (inputs.clip_min, inputs.clip_max)

    def project(self, x: Any, r: Any):
        return base.project_box(x, x + r, *self.clip) - x

    def predicted(self, x: Any):
        return ops.cast(ops.argmax(call_logits(self.model, x, dtype=self.dtype), axis=1), "int32")

    def init(self, inputs: dict[str, Any]) -> dict[str, Any]:
        x, labels = inputs["x"], ops.cast(inputs["label"], "int32")
        logits = call_logits(self.model, x, dtype=self.dtype)
        candidates = self.config.candidates
        # The label plus `candidates - 1` rivals by clean logit, as Foolbox's candidates.
        rivals = rival_classes(logits, labels, None if candidates is None else candidates - 1)
        fooled = ops.cast(ops.argmax(logits, axis=1), "int32") != labels
        zeros = ops.zeros_like(labels)
        return {"x": x, "label": labels, "rivals": rivals, "r": ops.zeros_like(x),
                "stuck": zeros > 0, "iterations": zeros,
                "active": ops.logical_and(ops.convert_to_tensor(inputs["valid"]),
                                          ops.logical_not(fooled))}

    def step(self, s: dict[str, Any]) -> dict[str, Any]:
        config, x, labels, r = self.config, s["x"], s["label"], s["r"]
        logits, pullback = logits_and_pullback(self.model, x + r, dtype=self.dtype)
        w = margin_gradients(pullback, labels, s["rivals"], self.k)  # (lanes, m, ...)
        f_label = ops.take_along_axis(logits, labels[:, None], axis=1)
        f = ops.take_along_axis(logits, s["rivals"], axis=1) - f_label
        w_norm = flat_norm(w, "l2" if config.norm == "l2" else "l1", start_axis=2)
        blocked = w_norm <= 0
        dist = ops.where(blocked, ops.cast(np.inf, f.dtype),
                         ops.abs(f) / ops.where(blocked, ops.ones_like(w_norm), w_norm))
        best = ops.cast(ops.argmin(dist, axis=1), "int32")
        d = ops.take_along_axis(dist, best[:, None], axis=1)[:, 0]
        can_move = ops.isfinite(d)
        d = ops.where(can_move, d, ops.zeros_like(d))
        if config.step_clip is not None:
            d = ops.minimum(d, config.step_clip)
        w_best = ops.take_along_axis(w, ops.reshape(best, (-1, 1) + (1,) * (len(x.shape) - 1)),
                                     axis=1)[:, 0]
        if config.norm == "l2":
            direction = w_best / per_sample(ops.where(can_move, flat_norm(w_best, "l2"),
                                                      ops.ones_like(d)), x)
        else:
            direction = ops.sign(w_best)
        r = ops.where(per_sample(can_move, x), self.project(x, r + per_sample(d, x) * direction),
                      r)
        fooled = self.predicted(x + self.project(x, (1.0 + config.overshoot) * r)) != labels
        iterations = s["iterations"] + 1
        stuck = ops.logical_not(can_move)
        done = ops.logical_and(can_move, fooled)
        active = ops.logical_and(ops.logical_not(ops.logical_or(done, stuck)),
                                 iterations < config.max_iter)
        return {**s, "r": r, "stuck": stuck, "iterations": iterations, "active": active}


def deepfool(model: Callable, x: Any, y: Any = None, norm: str = "l2", max_iter: int = 50,
             overshoot: float = 0.02, step_clip: float | None = 0.5,
             candidates: int | None = None, target: str = "label",
             clip_min: float | None = None, clip_max: float | None = None,
             batch_size: int | None = None, jit_compile: bool | str = "auto",
             verbose: int = 0) -> base.AttackResult:
    """Minimal adversarial perturbations by DeepFool, for any number of samples.

    Args:
        model: a Keras model or callable returning logits (batch, k), k >= 2.
        x: inputs (n, ...); float64 inputs are attacked in float64.
        y: true labels (n,); needed for `target="label"`.
        norm: the threat model's norm, "l2", or "linf" (steps along sign(w), distances in
            the dual l1 norm).
        max_iter: at most this many steps per sample (the paper: 50).
        overshoot: the result is x + (1 + overshoot) r (the paper: 0.02).
        step_clip: each step's length is clipped at this value (the paper: 0.5); None disables.
        candidates: only the top-`candidates` classes by clean logits (label included); None for
            all classes, as the paper.
        target: "label" attacks the true label, "prediction" the predicted one.
        clip_min, clip_max: optional input box; every iterate is projected onto it. x must lie
            inside it.
        batch_size: samples attacked side by side (lanes, default 256); a finished sample's
            lane takes the next sample, so any n runs at the throughput of a full batch.
        jit_compile: "auto" (TensorFlow graph without XLA, jax.jit on JAX), True for XLA on
            TensorFlow, False for eager JAX.
        verbose: 1 shows a progress bar.

    Returns:
        An `AttackResult` of numpy arrays: `perturbation`, `success` (verified), `iterations`,
        `stuck` (zero gradients: the sample could not be moved).

    Example:
        >>> res = deepfool(model, x_test[:100], y_test[:100])
        >>> rho = np.linalg.norm(res.perturbation.reshape(100, -1), axis=1)
    """
    return DeepFool(norm=norm, max_iter=max_iter, overshoot=overshoot, step_clip=step_clip,
                    candidates=candidates)(model, x, y, target=target, clip_min=clip_min,
                                           clip_max=clip_max, batch_size=batch_size,
                                           jit_compile=jit_compile, verbose=verbose)

