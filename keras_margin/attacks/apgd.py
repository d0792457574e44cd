"""Auto-PGD (Croce & Hein, ICML 2020): budgeted l_inf / l2 attacks, the core of AutoAttack.

Projected gradient ascent with momentum 0.75 from a random start in the eps-ball, on the
cross-entropy ("ce") or the difference-of-logits ratio ("dlr"). The step size starts at 2 eps and
is halved at checkpoints (the first after 22 % of the steps, then every 3 % fewer, at least 6 %)
where the loss rose in at most `rho` of the steps since the last one, or where the best loss did
not improve and the step was not halved last time; a halving restarts from the best point.
`targeted=True` with "dlr" is AutoAttack's APGD-T: one run per target class, the 2nd to
(n_target_classes + 1)-th largest clean logits, on the targeted DLR loss. A sample stops as soon
as it is misclassified (its lane takes the next job). Every success is verified afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin._validation import (
    check_choice,
    check_integer,
    check_non_negative,
)
from keras_margin.attacks import base
from keras_margin.jacobian import call_logits, flat_norm, per_sample
from keras_margin.norms import normalize, project_ball

NORMS = ("linf", "l2")
LOSSES = ("ce", "dlr")
# Loss kinds of a lane: untargeted CE, untargeted DLR, targeted DLR, targeted CE.
CE, DLR, DLR_TARGETED, CE_TARGETED = 0, 1, 2, 3
# Steps per compiled round: a lane whose sample is fooled waits at most this many for its next.
ROUND_STEPS = 10


@base.register
@dataclasses.dataclass(frozen=True)
class APGD(base.BudgetAttack):
    """Auto-PGD's settings (the paper's defaults); see `apgd`."""

    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    steps: int = 100
    restarts: int = 1
    n_target_classes: int = 9
    rho: float = 0.75
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        check_choice("loss", self.loss, LOSSES)
        check_choice("targeted", self.targeted, (True, False))
        for name in ("steps", "restarts", "n_target_classes"):
            object.__setattr__(self, name, check_integer(name, getattr(self, name)))
        object.__setattr__(self, "rho", check_non_negative("rho", self.rho, maximum=1))
        object.__setattr__(self, "seed", check_integer("seed", self.seed, minimum=0))

    @property
    def name(self) -> str:
        return f"apgd_{'t_' if self.targeted else ''}{self.loss}_{self.norm}"

    def run(self, model: Callable, inputs: base.Inputs, budgets: Sequence[float], lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0) -> dict[float, base.AttackResult]:
        return run_schedule(model, inputs, [self], budgets, lanes, jit_compile, verbose)

    def job_kinds(self, num_classes: int) -> list[tuple[int, int]]:
        """(loss kind, target rank) of this attack's runs on one sample, in order: one per
        restart, and for a targeted attack one per target class and restart. Rank r targets
        the (r + 1)-th largest clean logit."""
        if not self.targeted:
            return [(CE if self.loss == "ce" else DLR, 0)] * self.restarts
        kind = DLR_TARGETED if self.loss == "dlr" else CE_TARGETED
        ranks = range(1, min(self.n_target_classes, num_classes - 1) + 1)
        return [(kind, rank) for rank in ranks for _ in range(self.restarts)]


def ensemble(apgd: APGD, norm: str, num_classes: int) -> list[APGD]:
    """AutoAttack's pair with `apgd`'s steps, restarts and seed: APGD-CE, then APGD-T (targeted
    DLR, one restart per target), the latter only where there are 4 classes or more."""
    pair = [dataclasses.replace(apgd, norm=norm, loss="ce", targeted=False),
            dataclasses.replace(apgd, norm=norm, loss="dlr", targeted=True, restarts=1)]
    return pair if num_classes >= 4 else pair[:1]


def check_classes(attacks: Sequence[APGD], num_classes: int) -> None:
    """DLR needs 3 logits, targeted DLR 4 (it divides by the gap to the 3rd/4th largest)."""
    for attack in attacks:
        needed = 4 if attack.targeted and attack.loss == "dlr" else 3 if attack.loss == "dlr" \
            else 2
        if num_classes < needed:
            raise ValueError(f"{attack.name} needs a model with at least {needed} logits; this "
                             f"one has {num_classes}. Use loss='ce'.")


def run_schedule(model: Callable, inputs: base.Inputs, attacks: Sequence[APGD],
                 budgets: Sequence[float], lanes: int, jit_compile: bool | str = "auto",
                 verbose: int = 0) -> dict[float, base.AttackResult]:
    """Runs `attacks` one after the other on each sample at each budget, stopping a sample at
    its first verified-to-be success; one result per budget (a sample counts as fooled if any
    attack fooled it, as AutoAttack's robust accuracy)."""
    check_classes(attacks, inputs.num_classes)
    first = attacks[0]
    if any(a.norm != first.norm or a.steps != first.steps or a.rho != first.rho
           for a in attacks):
        raise ValueError("The APGD attacks of one schedule must share norm, steps and rho.")
    dtype = str(inputs.x.dtype)
    runner = base.lane_runner(
        model, ("apgd", first.norm, first.steps, first.rho, inputs.clip_min, inputs.clip_max,
                dtype, inputs.num_classes),
        lambda: _Kernel(model, first, inputs, dtype), round_steps=min(first.steps, ROUND_STEPS),
        jit_compile=jit_compile)
    schedule = _Schedule(inputs, attacks, [float(b) for b in budgets],
                         np.argsort(-_clean_logits(model, inputs.x, lanes), axis=1))
    schedule.bar = base.progress_bar(len(schedule.jobs["index"]), verbose,
                                     "+".join(a.name for a in attacks))
    runner.run(schedule.jobs, lanes, ("fooled", "delta", "t", "stuck"), load=schedule.load,
               follow_up=schedule.follow_up)
    results = {}
    for b, eps in enumerate(schedule.budgets):
        delta, success = base.verify(model, inputs, schedule.perturbation[b], lanes)
        delta = np.where(base.per_sample_mask(success, delta), delta, 0).astype(inputs.x.dtype)
        results[eps] = base.AttackResult(delta, success, schedule.iterations[b],
                                         schedule.stuck[b])
    return results


class _Schedule:
    """The jobs of `run_schedule`: one per (sample, budget) at first; a job that ends without
    success queues the sample's next run of the plan (next restart, target or attack). A job
    names its budget by `budget_index` into `budgets`; the kernel gets the value as `eps`."""

    def __init__(self, inputs: base.Inputs, attacks: Sequence[APGD], budgets: list[float],
                 ranked: np.ndarray) -> None:
        self.inputs, self.budgets, self.ranked = inputs, budgets, ranked
        self.norm = attacks[0].norm
        self.plan = [kind for a in attacks for kind in a.job_kinds(inputs.num_classes)]
        self.seeds = [a.seed for a in attacks for _ in a.job_kinds(inputs.num_classes)]
        n, shape = len(inputs.x), (len(budgets), len(inputs.x))
        self.jobs = {"index": np.tile(np.arange(n), len(budgets)),
                     "budget_index": np.repeat(np.arange(len(budgets)), n),
                     "position": np.zeros(n * len(budgets), np.int32)}
        self.table = {key: list(value) for key, value in self.jobs.items()}
        self.perturbation = np.zeros((len(budgets),) + inputs.x.shape, inputs.x.dtype)
        self.iterations = np.zeros(shape, np.int32)
        self.stuck = np.zeros(shape, bool)
        self.finished = 0
        self.bar: Callable[[int], None] | None = None

    def load(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The kernel's inputs of some jobs: sample, random start, budget, loss and target."""
        x, index, position = self.inputs.x, params["index"], params["position"]
        kinds = np.array([self.plan[p] for p in position]).reshape(-1, 2)
        noise = np.stack([_noise(self.norm, x.shape[1:], self.seeds[p], i, p)
                          for i, p in zip(index, position)]).astype(x.dtype)
        return {"x": x[index], "label": self.inputs.labels[index], "noise": noise,
                "eps": np.array(self.budgets, x.dtype)[params["budget_index"]],
                "kind": kinds[:, 0].astype(np.int32),
                "target": self.ranked[index, kinds[:, 1]].astype(np.int32)}

    def follow_up(self, ids: np.ndarray, out: dict[str, np.ndarray]) -> dict | None:
        """Records the ended jobs; returns the next runs of the samples not fooled yet."""
        more: dict[str, list] = {"index": [], "budget_index": [], "position": []}
        for job, success, delta, steps, flat in zip(ids, out["fooled"], out["delta"],
                                                    out["t"], out["stuck"]):
            index, which = self.table["index"][job], self.table["budget_index"][job]
            position = self.table["position"][job]
            self.iterations[which, index] += steps
            self.stuck[which, index] |= flat
            if success:
                self.perturbation[which, index] = delta
            elif position + 1 < len(self.plan):
                for key, value in (("index", index), ("budget_index", which),
                                   ("position", position + 1)):
                    more[key].append(value)
                continue
            self.finished += 1
        if self.bar is not None:
            self.bar(self.finished)
        for key, values in more.items():
            self.table[key].extend(values)
        return {k: np.asarray(v, np.int64) for k, v in more.items()} if more["index"] else None


def _clean_logits(model: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([base.logits_of(model, x[i:i + batch_size])
                           for i in range(0, len(x), batch_size)])


def _noise(norm: str, shape: tuple, seed: int, index: int, position: int) -> np.ndarray:
    """The random start of one run, reproducible from (seed, sample, run)."""
    rng = np.random.default_rng([seed, int(index), int(position)])
    return rng.uniform(-1.0, 1.0, shape) if norm == "linf" else rng.normal(size=shape)


def losses(logits: Any, labels: Any, targets: Any, kind: Any):
    """Per-sample loss of each lane's kind: CE, DLR, targeted DLR or targeted CE (to ascend)."""
    k = logits.shape[-1]
    top = ops.top_k(logits, min(k, 4))[0]
    z_y = ops.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    z_t = ops.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
    others = ops.where(ops.one_hot(labels, k) > 0, ops.cast(-np.inf, logits.dtype), logits)
    ce = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    ce_target = -ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    third = top[:, min(2, k - 1)]
    fourth = top[:, min(3, k - 1)]
    dlr = -(z_y - ops.max(others, axis=1)) / (top[:, 0] - third + 1e-12)
    dlr_target = -(z_y - z_t) / (top[:, 0] - 0.5 * (third + fourth) + 1e-12)
    return ops.where(kind == CE, ce, ops.where(kind == DLR, dlr, ops.where(
        kind == DLR_TARGETED, dlr_target, ce_target)))


class _Kernel:
    """One APGD step for every lane (see `lanes.Kernel`); budget and loss vary per lane."""

    def __init__(self, model: Callable, config: APGD, inputs: base.Inputs, dtype: str):
        self.model, self.dtype, self.norm = model, dtype, config.norm
        self.steps, self.rho = config.steps, config.rho
        self.clip = (inputs.clip_min, inputs.clip_max)
        self.first_check = max(int(0.22 * self.steps), 1)
        self.min_check = max(int(0.06 * self.steps), 1)
        self.check_decrease = max(int(0.03 * self.steps), 1)

    def project(self, x: Any, x_new: Any, eps: Any):
        delta = project_ball(x_new - x, eps, self.norm)
        return base.project_box(x, x + delta, *self.clip)

    def loss_and_grad(self, x_adv: Any, s: dict[str, Any]):
        def per_sample_loss(z):
            logits = call_logits(self.model, z, dtype=self.dtype)
            return losses(logits, s["label"], s["target"], s["kind"]), logits

        loss, logits, grad = backend.value_and_grad(per_sample_loss, x_adv, has_aux=True)
        fooled = ops.cast(ops.argmax(logits, axis=1), "int32") != s["label"]
        return loss, ops.stop_gradient(grad), fooled

    def init(self, inputs: dict[str, Any]) -> dict[str, Any]:
        x, noise = inputs["x"], inputs["noise"]
        eps = ops.convert_to_tensor(inputs["eps"])
        s = {"x": x, "label": ops.cast(inputs["label"], "int32"), "eps": eps,
             "kind": ops.cast(inputs["kind"], "int32"),
             "target": ops.cast(inputs["target"], "int32")}
        unit = normalize(noise, "linf" if self.norm == "linf" else "l2")
        x_adv = self.project(x, x + per_sample(eps, x) * unit, eps)
        loss, grad, fooled = self.loss_and_grad(x_adv, s)
        zeros = ops.zeros_like(s["label"])
        stuck = flat_norm(grad, "linf") <= 0
        return {**s, "x_adv": x_adv, "x_old": x_adv, "grad": grad, "x_best": x_adv,
                "grad_best": grad, "loss_best": loss, "loss_prev": loss,
                "loss_checked": loss, "reduced": zeros == 0, "fooled": fooled,
                "delta": ops.where(per_sample(fooled, x), x_adv - x, ops.zeros_like(x)),
                "step_size": 2.0 * eps, "window": zeros + self.first_check,
                "counter": zeros, "increases": zeros, "t": zeros, "stuck": stuck,
                "active": ops.logical_and(ops.convert_to_tensor(inputs["valid"]),
                                          ops.logical_not(fooled))}

    def step(self, s: dict[str, Any]) -> dict[str, Any]:
        x, eps, x_adv = s["x"], s["eps"], s["x_adv"]
        momentum_term = x_adv - s["x_old"]
        a = ops.where(s["t"] > 0, 0.75, 1.0)
        a = per_sample(ops.cast(a, x.dtype), x)
        if self.norm == "linf":
            direction = ops.sign(s["grad"])
        else:
            direction = normalize(s["grad"], "l2")
        z = self.project(x, x_adv + per_sample(s["step_size"], x) * direction, eps)
        x_new = self.project(x, x_adv + (z - x_adv) * a + momentum_term * (1 - a), eps)
        loss, grad, fooled_now = self.loss_and_grad(x_new, s)
        delta = ops.where(per_sample(fooled_now, x), x_new - x, s["delta"])
        increases = s["increases"] + ops.cast(loss > s["loss_prev"], "int32")
        improved = loss > s["loss_best"]
        x_best = ops.where(per_sample(improved, x), x_new, s["x_best"])
        grad_best = ops.where(per_sample(improved, x), grad, s["grad_best"])
        loss_best = ops.where(improved, loss, s["loss_best"])
        counter = s["counter"] + 1
        window = s["window"]
        check = counter == window
        oscillating = ops.cast(increases, "float32") <= ops.cast(window, "float32") * self.rho
        stalled = ops.logical_and(ops.logical_not(s["reduced"]), s["loss_checked"] >= loss_best)
        halve = ops.logical_and(check, ops.logical_or(oscillating, stalled))
        t = s["t"] + 1
        fooled = ops.logical_or(s["fooled"], fooled_now)
        return {**s, "x_old": x_adv,
                "x_adv": ops.where(per_sample(halve, x), x_best, x_new),
                "grad": ops.where(per_sample(halve, x), grad_best, grad),
                "x_best": x_best, "grad_best": grad_best, "loss_best": loss_best,
                "loss_prev": loss,
                "loss_checked": ops.where(check, loss_best, s["loss_checked"]),
                "reduced": ops.where(check, halve, s["reduced"]),
                "step_size": ops.where(halve, s["step_size"] / 2.0, s["step_size"]),
                "window": ops.where(check, ops.maximum(window - self.check_decrease,
                                                        self.min_check), window),
                "counter": ops.where(check, ops.zeros_like(counter), counter),
                "increases": ops.where(check, ops.zeros_like(increases), increases),
                "fooled": fooled, "delta": delta, "t": t,
                "active": ops.logical_and(t < self.steps, ops.logical_not(fooled))}


def apgd(model: Callable, x: Any, y: Any, eps: float, norm: str = "linf", loss: str = "ce",
         targeted: bool = False, steps: int = 100, restarts: int = 1,
         n_target_classes: int = 9, rho: float = 0.75, seed: int = 0,
         clip_min: float | None = None, clip_max: float | None = None,
         batch_size: int | None = None, jit_compile: bool | str = "auto",
         verbose: int = 0) -> base.AttackResult:
    """Adversarial examples within ||delta||_p <= eps by Auto-PGD (AutoAttack's APGD).

    Args:
        model: a Keras model or callable returning logits (batch, k), k >= 2.
        x, y: inputs (n, ...) and their true labels (n,).
        eps: the budget, in the threat model's norm (e.g. 0.3 l_inf on MNIST in [0, 1]).
        norm: the threat model's norm, "linf" or "l2".
        loss: "ce" (cross-entropy) or "dlr" (difference of logits ratio).
        targeted: with loss "dlr", AutoAttack's APGD-T: one run per target class.
        steps: iterations per run (the paper: 100).
        restarts: random restarts per run (the paper: 1 for APGD-T, 5 for APGD-CE alone).
        n_target_classes: target classes of APGD-T (AutoAttack: 9).
        rho: the oscillation threshold of the step-size checkpoints (the paper: 0.75).
        seed: seed of the random starts.
        clip_min, clip_max: optional input box; x must lie inside it.
        batch_size: samples attacked side by side (lanes, default 256).
        jit_compile: as for `deepfool`.
        verbose: 1 shows a progress bar.

    Returns:
        An `AttackResult`: a verified adversarial perturbation where `success` (zeros elsewhere),
        `iterations` summed over the runs, `stuck` (zero gradient at a random start).

    Example:
        >>> res = apgd(model, x_test, y_test, eps=0.3, clip_min=0.0, clip_max=1.0)
        >>> robust_accuracy = 1 - res.success.mean()
    """
    return APGD(norm=norm, loss=loss, targeted=targeted, steps=steps, restarts=restarts,
                n_target_classes=n_target_classes, rho=rho, seed=seed)(
        model, x, y, eps=eps, clip_min=clip_min, clip_max=clip_max, batch_size=batch_size,
        jit_compile=jit_compile, verbose=verbose)
