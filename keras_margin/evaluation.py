"""Robustness of a model: the paper's measures and the field's stronger ones, with sanity flags.

The paper's: clean error, error under FGSM, and rho_adv (eq. 20), the mean of ||r(x)|| / ||x||
over correctly classified points, r from DeepFool. DeepFool only upper-bounds each sample's
minimal perturbation and FGSM is one gradient step, so both can overstate robustness; hence the
minimum-norm attacks (FMN, DDN: `rho_<attack>` and the per-sample minimum over every verified
adversarial, `rho_min`) and robust accuracy under budgets from the APGD ensemble (APGD-CE and
APGD-T; a sample is robust only if every attack run fails). What runs is one `EvaluationPlan`;
what it found is one `RobustnessReport`; each sanity check of the numbers is a small function
below that returns its flag and message (also warned about).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keras_margin._validation import (
    check_box,
    check_choice,
    check_finite_array,
    check_integer,
    check_positive,
)
from keras_margin.attacks import base
from keras_margin.attacks.apgd import APGD, ensemble, run_schedule
from keras_margin.attacks.autoattack import AutoAttack
from keras_margin.attacks.ddn import DDN
from keras_margin.attacks.deepfool import DeepFool
from keras_margin.attacks.fgsm import FGSM
from keras_margin.attacks.fmn import FMN
from keras_margin.attacks.square import check_images
from keras_margin.robustness_report import AttackSummary, RobustnessReport, budget_key
from keras_margin.threat import ThreatModel

# Names accepted in `attacks=`. The l2 FMN starts from DeepFool's adversarials, those of the
# evaluation's own DeepFool (`resolve_attack`), which it computes anyway (FMN alone can settle
# on a farther class's boundary).
ATTACK_NAMES = {"fmn": FMN(norm="l2", init=DeepFool()), "fmn_l2": FMN(norm="l2", init=DeepFool()),
                "fmn_linf": FMN(norm="linf"), "fmn_l1": FMN(norm="l1"), "ddn": DDN()}
# DeepFool's l2 distances "far above" the minimum-norm ones: the median ratio beyond this.
MASKING_RATIO = 2.0
# An unbounded attack should fool (nearly) every correctly classified point.
MIN_SUCCESS = 0.99
# FGSM fooling this many fewer points than APGD at a budget no larger: a masked single step.
FGSM_GAP = 0.2
# Square (no gradients) fooling more than this share of the correct points that every
# gradient attack missed within the same budget: the gradients hide adversarials.
SQUARE_ONLY = 0.01

__all__ = ["EvaluationPlan", "RobustnessReport", "evaluate_robustness", "relative_norms",
           "rho_adv"]


def relative_norms(x: np.ndarray, perturbation: np.ndarray, norm: str = "l2") -> np.ndarray:
    """||r(x)|| / ||x|| per sample (the summand of eq. 20 for l2)."""
    r, scale = base.lp_norms(perturbation, norm), base.lp_norms(x, norm)
    return np.divide(r, scale, out=np.zeros_like(r), where=scale > 0)


def rho_adv(x: np.ndarray, perturbation: np.ndarray, correct: np.ndarray) -> float:
    """Eq. (20): mean of ||r(x)||_2 / ||x||_2 over the correctly classified points (nan if none)."""
    x, perturbation, correct = np.asarray(x), np.asarray(perturbation), np.asarray(correct)
    if x.shape != perturbation.shape or correct.shape != x.shape[:1]:
        raise ValueError(f"rho_adv needs x and perturbation of one shape and correct of shape "
                         f"(n,); received {x.shape}, {perturbation.shape} and {correct.shape}.")
    check_finite_array(x)
    check_finite_array(perturbation, "perturbation")
    correct = np.asarray(correct, bool)
    if not correct.any():
        return math.nan
    return float(relative_norms(np.asarray(x), np.asarray(perturbation))[correct].mean())


def resolve_attack(spec: Any, deepfool: DeepFool | None = None) -> base.MinimumNormAttack:
    """A minimum-norm attack from its name ("fmn", "fmn_linf", "ddn", ...) or object; "fmn"
    starts from the adversarials of `deepfool` (the evaluation's) where that is an l2 one."""
    if isinstance(spec, base.MinimumNormAttack) and not isinstance(spec, DeepFool):
        return spec
    if isinstance(spec, str) and spec in ATTACK_NAMES:
        attack = ATTACK_NAMES[spec]
        if spec in ("fmn", "fmn_l2") and deepfool is not None and deepfool.norm == "l2":
            attack = dataclasses.replace(attack, init=deepfool)
        return attack
    raise ValueError(f"Invalid value in argument attacks: {spec!r}. Expected one of "
                     f"{sorted(ATTACK_NAMES)} or a minimum-norm attack object (attacks.FMN, "
                     "attacks.DDN); DeepFool always runs, as `deepfool=`.")


def check_budgets(name: str, budgets: Sequence[float]) -> tuple[float, ...]:
    """Budgets as a sorted tuple of distinct positive numbers."""
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, (Sequence, np.ndarray)):
        raise ValueError(f"Invalid value for argument {name}: {budgets!r}. Expected a list of "
                         "numbers > 0.")
    values = []
    for value in budgets:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(value) or value <= 0:
            raise ValueError(f"Invalid value in argument {name}: {value!r}. Expected numbers "
                             "> 0.")
        values.append(check_positive(name, float(value), resolved=True))
    return tuple(sorted(set(values)))


@dataclasses.dataclass(frozen=True)
class EvaluationPlan:
    """What `evaluate_robustness` (and `RobustnessCallback`) runs; frozen, saved as JSON.

    Args:
        deepfool: DeepFool's settings (the paper's by default), which give rho_adv.
        fgsm_eps: FGSM budget (the paper: 0.2 on MNIST, 0.05 on CIFAR-10); None skips FGSM.
        attacks: minimum-norm attacks besides DeepFool: names ("fmn" = "fmn_l2", which starts
            from DeepFool's adversarials, "fmn_linf", "fmn_l1", "ddn") or attack objects.
        linf_eps, l2_eps: budgets of robust accuracy by the APGD ensemble.
        apgd: the ensemble's APGD settings (steps, restarts, seed); its loss, norm and
            targeting are the ensemble's.
        clip_min, clip_max: optional input box for every attack; x must lie in it.
        samples: evaluate the first `samples` points only (None: all).
        certify: a bound method of `keras_margin.certify` ("crown", "auto", "crown-ibp", "ibp",
            "lipschitz") to prove lower bounds under the attacks' upper ones: the certified
            l2 radius per point (rho_certified), and the l_inf one where l_inf budgets are
            given, with certified accuracy at every budget; None (default) proves nothing.
        autoattack: True completes the APGD pair to AutoAttack's standard ensemble at every
            budget: FAB-T, then Square (no gradients), each on the points the attacks before
            it left robust; who fooled how many lands in the report (`autoattack`), and
            Square fooling points every gradient attack missed raises a masking flag. Needs
            image inputs (n, height, width, channels).
    """

    deepfool: DeepFool = dataclasses.field(default_factory=DeepFool)
    fgsm_eps: float | None = 0.2
    attacks: tuple[base.MinimumNormAttack, ...] = ()
    linf_eps: tuple[float, ...] = ()
    l2_eps: tuple[float, ...] = ()
    apgd: APGD = dataclasses.field(default_factory=APGD)
    clip_min: float | None = None
    clip_max: float | None = None
    samples: int | None = None
    certify: str | None = None
    autoattack: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.deepfool, DeepFool):
            raise ValueError(f"Invalid value for argument deepfool: {self.deepfool!r}. "
                             "Expected an attacks.DeepFool object.")
        if not isinstance(self.apgd, APGD):
            raise ValueError(f"Invalid value for argument apgd: {self.apgd!r}. Expected an "
                             "attacks.APGD object.")
        if self.fgsm_eps is not None:
            object.__setattr__(self, "fgsm_eps",
                               check_positive("fgsm_eps", self.fgsm_eps, resolved=True))
        if isinstance(self.attacks, (str, bytes)) or not isinstance(self.attacks,
                                                                    (Sequence, np.ndarray)):
            raise ValueError(f"Invalid value for argument attacks: {self.attacks!r}. Expected a "
                             "list of attack names or objects.")
        object.__setattr__(self, "attacks", tuple(resolve_attack(a, self.deepfool)
                                                  for a in self.attacks))
        for name in ("linf_eps", "l2_eps"):
            object.__setattr__(self, name, check_budgets(name, getattr(self, name)))
        box = check_box(self.clip_min, self.clip_max)
        object.__setattr__(self, "clip_min", box[0])
        object.__setattr__(self, "clip_max", box[1])
        if self.samples is not None:
            object.__setattr__(self, "samples", check_integer("samples", self.samples))
        if self.certify is not None:
            from keras_margin.certify import METHODS

            check_choice("certify", self.certify, METHODS)
        check_choice("autoattack", self.autoattack, (True, False))

    @classmethod
    def resolve(cls, plan: EvaluationPlan | None, settings: dict[str, Any]) -> EvaluationPlan:
        """`plan` (default: the paper's) with `settings` by keyword: any field, or DeepFool's
        own settings (max_iter, overshoot, step_clip, candidates); a misspelt keyword is an
        error, and so is `norm` (a threat norm or DeepFool's? deepfool=DeepFool(norm=...))."""
        if plan is not None and not isinstance(plan, EvaluationPlan):
            raise ValueError(f"Invalid value for argument plan: {plan!r}. Expected an "
                             "EvaluationPlan (give the other settings by keyword).")
        plan = plan or cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        deepfool_fields = {f.name for f in dataclasses.fields(DeepFool)}
        unknown = sorted(set(settings) - fields - deepfool_fields)
        if unknown:
            raise ValueError(f"Unknown keyword argument(s) {unknown}. Expected the fields of "
                             f"EvaluationPlan {sorted(fields)} or DeepFool's settings "
                             f"{sorted(deepfool_fields)}.")
        if "norm" in settings:
            raise ValueError(
                f"Ambiguous keyword argument norm={settings['norm']!r}: the evaluation's budgets "
                "have their norms in linf_eps= and l2_eps=, and DeepFool's norm is set as "
                f"deepfool=attacks.DeepFool(norm={settings['norm']!r}).")
        own = {k: v for k, v in settings.items() if k in fields}
        extra = {k: v for k, v in settings.items() if k not in fields}
        if extra:
            if "deepfool" in own:
                raise ValueError("Pass DeepFool's settings either as deepfool=DeepFool(...) or "
                                 f"as keywords, not both; received keywords {sorted(extra)}.")
            own["deepfool"] = dataclasses.replace(plan.deepfool, **extra)
        return dataclasses.replace(plan, **own) if own else plan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; `from_dict` inverts it."""
        return {"deepfool": self.deepfool.to_dict(), "fgsm_eps": self.fgsm_eps,
                "attacks": [a.to_dict() for a in self.attacks],
                "linf_eps": list(self.linf_eps), "l2_eps": list(self.l2_eps),
                "apgd": self.apgd.to_dict(), "clip_min": self.clip_min,
                "clip_max": self.clip_max, "samples": self.samples, "certify": self.certify,
                "autoattack": self.autoattack}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationPlan:
        data = dict(data)
        data["deepfool"] = base.Attack.from_dict(data["deepfool"])
        data["apgd"] = base.Attack.from_dict(data["apgd"])
        data["attacks"] = tuple(base.Attack.from_dict(a) for a in data["attacks"])
        return cls(**data)

    @property
    def budgets(self) -> dict[str, tuple[float, ...]]:
        return {"linf": self.linf_eps, "l2": self.l2_eps}

    @property
    def threat_models(self) -> list[ThreatModel]:
        """Every budget of robust accuracy as a `ThreatModel` with the plan's input box (its
        report keys: `threat.key("robust_accuracy")`)."""
        return [ThreatModel(norm, eps, self.clip_min, self.clip_max)
                for norm, budgets in self.budgets.items() for eps in budgets]

    @property
    def norms(self) -> dict[str, str]:
        """The threat norm of each minimum-norm attack, by its name (DeepFool's included)."""
        return {"deepfool": self.deepfool.norm, **{a.name: a.norm for a in self.attacks}}


def evaluate_robustness(model: Callable, x: Any, y: Any, plan: EvaluationPlan | None = None,
                        *, batch_size: int = 500, verbose: int = 0,
                        **settings: Any) -> RobustnessReport:
    """Clean error, FGSM error, rho_adv (eq. 20), and optionally stronger attacks, with flags.

    Args:
        model: a Keras model or callable returning logits (k >= 2).
        x, y: inputs and class indices.
        plan: an `EvaluationPlan` (default: the paper's: DeepFool and FGSM at 0.2).
        batch_size: samples attacked side by side (the attacks' lanes).
        verbose: 1 shows a live progress bar per attack, named; 2 one line per attack as it
            ends; 0 nothing.
        **settings: any field of `EvaluationPlan` by keyword (fgsm_eps, attacks, linf_eps,
            l2_eps, apgd, clip_min, clip_max, samples, deepfool), or DeepFool's own settings
            (max_iter, overshoot, step_clip, candidates); they override `plan`'s.

    Returns:
        A `RobustnessReport`: `error`, `fgsm_error` (over all points, as the paper), `rho_adv`
        (DeepFool, over the correctly classified points), per-point `distances`, the stronger
        attacks' numbers where asked, and `flags`; `to_dict()` is its flat form (metrics.json's
        keys; `report["rho_adv"]`, the form of earlier versions, is deprecated).

    Example:
        >>> report = evaluate_robustness(model, x_test, y_test, fgsm_eps=0.2, clip_min=0.0,
        ...                              clip_max=1.0, attacks=["fmn", "fmn_linf"],
        ...                              linf_eps=[0.1, 0.2, 0.3])
        >>> report.rho_adv, report.rho_min, report.robust_accuracy["linf"][0.3]
        >>> print(report)
    """
    plan = EvaluationPlan.resolve(plan, settings)
    check_choice("verbose", verbose, (0, 1, 2))
    inputs = base.check_inputs(model, x, y, plan.clip_min, plan.clip_max, "evaluate_robustness")
    if plan.autoattack and any(plan.budgets.values()):  # before any attack runs
        check_images(inputs.x, "evaluate_robustness(autoattack=True)'s Square")
    if plan.certify is not None:  # an unsupported layer fails now, not after every attack
        from keras_margin.certify import check_supported

        check_supported(model, inputs.x)
    if plan.samples is not None:
        inputs = dataclasses.replace(inputs, x=inputs.x[:plan.samples],
                                     labels=inputs.labels[:plan.samples])
    return run_plan(model, inputs, plan, base.check_lanes(batch_size, len(inputs.x)), verbose)


def run_plan(model: Callable, inputs: base.Inputs, plan: EvaluationPlan, lanes: int,
             verbose: int = 0) -> RobustnessReport:
    """The evaluation on inputs already checked; every attack through its base class."""
    correct = base.predictions(model, inputs.x, lanes) == inputs.labels
    fgsm_wrong, fgsm_blind = None, None
    if plan.fgsm_eps is not None:
        fgsm = FGSM().run(model, inputs, [plan.fgsm_eps], lanes, verbose=verbose)
        fgsm_wrong = fgsm[plan.fgsm_eps].success
        fgsm_blind = fgsm[plan.fgsm_eps].stuck & correct & ~fgsm_wrong
    subset = dataclasses.replace(inputs, x=inputs.x[correct], labels=inputs.labels[correct])
    found = minimum_norm_results(model, subset, plan, lanes, verbose)
    fields = paper_measures(inputs, correct, fgsm_wrong, plan.fgsm_eps, found.get("deepfool"))
    fields.update(minimum_norm_measures(subset, found, plan.norms))
    fields.update(robust_accuracy={}, autoattack={})
    for norm, budgets in plan.budgets.items():
        if budgets:
            accuracy, autoattack = robust_accuracy(model, subset, correct, norm, budgets, plan,
                                                   found, fgsm_wrong, lanes, verbose)
            fields["robust_accuracy"][norm] = accuracy
            if autoattack:
                fields["autoattack"][norm] = autoattack
    fields["deepfool_to_minimum_ratio"] = deepfool_to_minimum_ratio(found, plan.norms)
    flags = []
    if plan.certify is not None:
        certified, flags = certified_measures(model, inputs, correct, subset, found, plan,
                                              verbose)
        fields.update(certified)
    draft = RobustnessReport(**fields)  # what the sanity checks read
    flags = check_fgsm_blind(fgsm_blind, correct) + sanity_checks(draft, inputs, plan, found) \
        + flags
    for flag, message in flags:
        warnings.warn(f"evaluate_robustness [{flag}]: {message}", UserWarning, stacklevel=3)
    return dataclasses.replace(draft, flags=[flag for flag, _ in flags])


def minimum_norm_results(model: Callable, subset: base.Inputs, plan: EvaluationPlan,
                         lanes: int, verbose: int) -> dict[str, base.AttackResult]:
    """DeepFool, then each minimum-norm attack of the plan, on the correctly classified points;
    an attack that starts from DeepFool's adversarials reuses them."""
    if not len(subset.x):
        return {}
    found = {"deepfool": plan.deepfool.run(model, subset, lanes, verbose=verbose)}
    for attack in plan.attacks:
        reuse = found["deepfool"] if getattr(attack, "init", None) == plan.deepfool else None
        found[attack.name] = attack.run(model, subset, lanes, verbose=verbose,
                                        init_result=reuse)
    return found


def paper_measures(inputs: base.Inputs, correct: np.ndarray, fgsm_wrong: np.ndarray | None,
                   fgsm_eps: float | None, deepfool: base.AttackResult | None
                   ) -> dict[str, Any]:
    """error, FGSM error (over all points), rho_adv (eq. 20) and DeepFool's success rate."""
    distances = np.zeros(len(inputs.x))
    rho, success_rate = math.nan, math.nan
    if deepfool is not None:
        distances[correct] = relative_norms(inputs.x[correct], deepfool.perturbation)
        perturbation = np.zeros_like(inputs.x)
        perturbation[correct] = deepfool.perturbation
        if deepfool.success.any():
            rho = rho_adv(inputs.x, perturbation, correct)
        success_rate = float(deepfool.success.mean())
    return dict(
        n=len(inputs.x), error=float((~correct).mean()), fgsm_eps=fgsm_eps,
        fgsm_error=float(fgsm_wrong.mean()) if fgsm_wrong is not None else math.nan,
        rho_adv=rho, deepfool_success_rate=success_rate, distances=distances,
        fgsm_wrong=None if fgsm_wrong is None else np.asarray(fgsm_wrong, bool))


def minimum_norm_measures(subset: base.Inputs, found: dict[str, base.AttackResult],
                          norms: dict[str, str]) -> dict[str, Any]:
    """The report's fields of the minimum-norm attacks: rho and median distance per attack;
    the per-sample minimum (l2) over all of them."""
    if not found:
        return {}
    smallest = np.full(len(subset.x), np.inf)
    summaries = {}
    for name, result in found.items():
        relative_l2 = relative_norms(subset.x, result.perturbation, "l2")
        smallest = np.where(result.success, np.minimum(smallest, relative_l2), smallest)
        if name == "deepfool":
            continue
        norm = norms[name]
        relative = relative_norms(subset.x, result.perturbation, norm)
        summaries[name] = AttackSummary(
            norm=norm,
            rho=float(relative[result.success].mean()) if result.success.any() else math.nan,
            success_rate=float(result.success.mean()),
            median=float(np.median(result.distances(norm))))
    fooled = np.isfinite(smallest)
    return dict(attacks=summaries,
                rho_min=float(smallest[fooled].mean()) if fooled.any() else math.nan,
                rho_min_median=float(np.median(smallest)), unfooled=float((~fooled).mean()),
                distances_min=smallest)


def robust_accuracy(model: Callable, subset: base.Inputs, correct: np.ndarray, norm: str,
                    budgets: Sequence[float], plan: EvaluationPlan,
                    found: dict[str, base.AttackResult], fgsm_wrong: np.ndarray | None,
                    lanes: int, verbose: int
                    ) -> tuple[dict[float, float], dict[float, dict[str, int]]]:
    """Robust accuracy per budget: correct, and no attack run found an adversarial within it
    (the APGD ensemble, the minimum-norm attacks of the same norm, FGSM for l_inf, and with
    `plan.autoattack` FAB-T and Square); and AutoAttack's record per budget (empty without
    it)."""
    results = run_schedule(model, subset, ensemble(plan.apgd, norm, subset.num_classes),
                           budgets, lanes, verbose=verbose) if len(subset.x) else {}
    norms = plan.norms
    accuracy, autoattack = {}, {}
    for eps in budgets:
        by_apgd = results[eps].success.copy() if results else np.zeros(0, bool)
        others = np.zeros(len(subset.x), bool)
        for name, result in found.items():
            if norms[name] == norm:
                others |= result.success & (base.lp_norms(result.perturbation, norm)
                                            <= eps * (1 + 1e-6))
        if norm == "linf" and fgsm_wrong is not None and plan.fgsm_eps <= eps:
            others |= fgsm_wrong[correct]
        fooled = by_apgd | others
        if plan.autoattack:
            by_tail, autoattack[eps] = complete_autoattack(model, subset, norm, eps, by_apgd,
                                                           others, plan, lanes, verbose)
            fooled |= by_tail
        accuracy[eps] = float((~fooled).sum() / len(correct))
    return accuracy, autoattack


def complete_autoattack(model: Callable, subset: base.Inputs, norm: str, eps: float,
                        by_apgd: np.ndarray, others: np.ndarray, plan: EvaluationPlan,
                        lanes: int, verbose: int) -> tuple[np.ndarray, dict[str, int]]:
    """AutoAttack's standard ensemble from the APGD pair's result (its first two attacks):
    FAB-T, then Square, on the correct points APGD left robust; the points they fooled, and
    per attack how many points it fooled first, and how many of Square's no other gradient
    attack of the evaluation (minimum-norm, FGSM) fooled within eps either."""
    rest = np.flatnonzero(~by_apgd)
    fooled = np.zeros(len(subset.x), bool)
    counts = {"apgd": int(by_apgd.sum()), "fab-t": 0, "square": 0, "square_only": 0}
    if rest.size:
        tail = AutoAttack(norm=norm, version="custom", attacks=("fab-t", "square"),
                          seed=plan.apgd.seed, steps=plan.apgd.steps)
        part = dataclasses.replace(subset, x=subset.x[rest], labels=subset.labels[rest])
        result = tail.run(model, part, [eps], lanes, verbose=verbose)[eps]
        fooled[rest] = result.success
        counts.update(result.counts())
        counts["square_only"] = int((result.fooled_by == "square")[~others[rest]].sum())
    counts["robust"] = int((~(by_apgd | fooled)).sum())
    return fooled, counts


def deepfool_to_minimum_ratio(found: dict[str, base.AttackResult],
                              norms: dict[str, str]) -> float | None:
    """Median over points of DeepFool's l2 distance / the smallest of the other l2 attacks'."""
    others = [r for name, r in found.items() if name != "deepfool" and norms[name] == "l2"]
    if "deepfool" not in found or not others or norms["deepfool"] != "l2":
        return None
    deep = found["deepfool"]
    best = np.min([np.where(r.success, base.lp_norms(r.perturbation, "l2"), np.inf)
                   for r in others], axis=0)
    both = deep.success & np.isfinite(best) & (best > 0)
    if not both.any():
        return None
    return float(np.median(base.lp_norms(deep.perturbation, "l2")[both] / best[both]))


def _smallest_found(found: dict[str, base.AttackResult], norm: str, n: int) -> np.ndarray:
    """Per correct point, the smallest verified adversarial's distance in `norm` (inf if
    none), whatever norm the attack that found it minimised."""
    smallest = np.full(n, np.inf)
    for result in found.values():
        smallest = np.minimum(smallest, result.distances(norm))
    return smallest


def certified_measures(model: Callable, inputs: base.Inputs, correct: np.ndarray,
                       subset: base.Inputs, found: dict[str, base.AttackResult],
                       plan: EvaluationPlan, verbose: int = 0
                       ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The report's certified fields (radii: l2 always, l_inf where l_inf budgets are asked;
    rho_certified, certified accuracy at the plan's budgets, and how close the bound comes to
    the attacks) and flags. The bisection starts from the smallest attack distance, an upper
    bound of the radius, and halves 16 times (a relative precision of 1.5e-5 of it); a radius
    above a verified adversarial (an unsound bound) is flagged."""
    from keras_margin.certify import certified_radius, crown_plan

    norms = ["l2"] + (["linf"] if plan.linf_eps else [])
    smallest = {norm: _smallest_found(found, norm, len(subset.x)) for norm in norms}
    flags, radii, accuracy = [], {}, {}
    for norm in norms:
        radius = np.zeros(len(inputs.x))
        if len(subset.x):
            attacked = smallest[norm]
            fallback = base.lp_norms(subset.x, norm) + 1.0
            upper = np.where(np.isfinite(attacked), attacked * 1.001 + 1e-6, fallback)
            radius[correct] = certified_radius(
                model, subset.x, subset.labels, norm=norm, method=plan.certify,
                clip_min=plan.clip_min, clip_max=plan.clip_max, upper=upper, steps=16,
                verbose=verbose)
            above = radius[correct] > attacked * (1 + 1e-4) + 1e-7
            if above.any():
                flags.append((f"certificate_above_attack_{norm}",
                              f"{above.sum()} certified {norm} radii exceed an adversarial "
                              "an attack verified: the bound is unsound here; please "
                              "report it."))
        radii[norm] = radius
        budgets = plan.budgets.get(norm, ())
        if budgets:
            accuracy[norm] = {eps: float((radius >= eps).mean()) for eps in budgets}
    scale = base.lp_norms(inputs.x, "l2")
    relative = np.divide(radii["l2"], scale, out=np.zeros(len(scale)), where=scale > 0)
    attacked = smallest["l2"]
    both = np.isfinite(attacked) & (attacked > 0)
    ratio = float(np.median(radii["l2"][correct][both] / attacked[both])) if both.any() \
        else None
    routes = dict(crown_plan(model, plan.certify)) if plan.certify in ("crown", "auto") else {}
    return dict(certify_method=plan.certify, certify_routes=routes, certified_radius=radii,
                certified_accuracy=accuracy, certified_distances=relative,
                rho_certified=float(relative[correct].mean()) if correct.any() else math.nan,
                certified_to_minimum_ratio=ratio), flags


# -- the sanity checks: each returns (flag, message) pairs -------------------------------------
def sanity_checks(report: RobustnessReport, inputs: base.Inputs, plan: EvaluationPlan,
                  found: dict[str, base.AttackResult]) -> list[tuple[str, str]]:
    """Every check's flags, in a fixed order."""
    return (check_zero_gradients(found) + check_attack_failures(found)
            + check_gradient_masking(report) + check_square_after_gradients(report)
            + check_fgsm_unreliable(report, plan)
            + check_monotone(report) + check_large_budgets(report, inputs))


def _fooled_by_any(found: dict[str, base.AttackResult]) -> np.ndarray:
    return np.logical_or.reduce([r.success for r in found.values()])


# FGSM blind (zero loss gradient, not fooled) on more than this share of the correct points.
FGSM_BLIND = 0.01


def check_fgsm_blind(blind: np.ndarray | None, correct: np.ndarray) -> list[tuple[str, str]]:
    """Correct points where the loss gradient is exactly 0 (a saturated softmax) and FGSM
    therefore moved nothing: the FGSM error is unmeasured there, not robust."""
    if blind is None or not correct.any():
        return []
    share = blind.sum() / correct.sum()
    if share <= FGSM_BLIND:
        return []
    return [("fgsm_zero_gradients",
             f"FGSM: the loss gradient is exactly zero for {share:.1%} of the correctly "
             "classified points (a saturated softmax: p_y rounds to 1), so FGSM did not move "
             "them and its error understates what a budget of that size can do; see the "
             "minimum-norm attacks and APGD (linf_eps) for these points.")]


def check_zero_gradients(found: dict[str, base.AttackResult]) -> list[tuple[str, str]]:
    """Points no gradient attack can move (zero input gradient) and none fooled."""
    if not found:
        return []
    fooled = _fooled_by_any(found)
    for name, result in found.items():
        blind = result.stuck & ~fooled
        if blind.any():
            return [("zero_gradients",
                     f"{name}: the input gradient is zero for {blind.mean():.1%} of the "
                     "correctly classified points, and no attack fooled them: the model cannot "
                     "be attacked by gradients there, so its robustness is unknown, not proven "
                     "(saturated or flat logits, or gradient masking).")]
    return []


def check_attack_failures(found: dict[str, base.AttackResult]) -> list[tuple[str, str]]:
    """An attack without a budget that fooled under `MIN_SUCCESS` of the points."""
    if not found:
        return []
    fooled, flags = _fooled_by_any(found), []
    for name, result in found.items():
        rate = result.success.mean()
        if rate >= MIN_SUCCESS:
            continue
        covered = (~result.success & fooled).sum() / max((~result.success).sum(), 1)
        advice = ("inputs may be unscaled (see the warning above) or the gradients masked."
                  if rate < 0.5 else "raise its iterations (max_iter / steps).")
        flags.append((f"{name}_failures",
                      f"{name} fooled only {rate:.1%} of the correctly classified points, "
                      f"although it has no budget ({covered:.0%} of the rest were fooled by "
                      f"another attack, so rho_min holds; rho_{name} covers the points it "
                      f"fooled); {advice}"))
    return flags


def check_gradient_masking(report: RobustnessReport) -> list[tuple[str, str]]:
    """DeepFool's distances far above the other minimum-norm attacks'."""
    ratio = report.deepfool_to_minimum_ratio
    if ratio is None or ratio <= MASKING_RATIO:
        return []
    return [("gradient_masking", f"DeepFool's l2 distances are {ratio:.2f}x the minimum-norm "
             "attacks' (median): its rho_adv overstates robustness; report rho_min.")]


def check_square_after_gradients(report: RobustnessReport) -> list[tuple[str, str]]:
    """Square (no gradients) fooling, within a budget, more than `SQUARE_ONLY` of the
    correct points that every gradient attack of the evaluation missed."""
    correct = round(report.n * (1 - report.error))
    flags = []
    for norm, budgets in report.autoattack.items():
        for eps, counts in sorted(budgets.items()):
            if correct and counts["square_only"] / correct > SQUARE_ONLY:
                flags.append((f"square_after_gradients_{norm}",
                              f"Square, which uses no gradient, fooled {counts['square_only']} "
                              f"of {correct} correct points at {norm} {eps:g} that every "
                              "gradient attack (APGD, FAB-T, the minimum-norm attacks, FGSM) "
                              "missed: the gradients hide adversarials (masking), so gradient "
                              "attacks overstate this model's robustness; trust the "
                              "AutoAttack accuracy."))
                break
    return flags


def check_fgsm_unreliable(report: RobustnessReport,
                          plan: EvaluationPlan) -> list[tuple[str, str]]:
    """APGD at an l_inf budget no larger than FGSM's fools far more points than FGSM."""
    if plan.fgsm_eps is None:
        return []
    for eps, accuracy in report.robust_accuracy.get("linf", {}).items():
        apgd_error = 1.0 - accuracy  # over all points, as FGSM's
        if eps <= plan.fgsm_eps and apgd_error - report.fgsm_error > FGSM_GAP:
            return [("fgsm_unreliable",
                     f"APGD at l_inf {eps:g} fools {apgd_error:.1%} of the points, FGSM at "
                     f"{plan.fgsm_eps:g} only {report.fgsm_error:.1%}: one linear step misses "
                     "many adversarials here (a curved loss surface, or gradient masking as "
                     "FGSM adversarial training makes), so the FGSM error overstates "
                     "robustness.")]
    return []


def check_monotone(report: RobustnessReport) -> list[tuple[str, str]]:
    """Robust accuracy must not rise with the budget."""
    flags = []
    for norm, budgets in report.robust_accuracy.items():
        values = [budgets[eps] for eps in sorted(budgets)]
        if any(b > a + 1e-12 for a, b in zip(values, values[1:])):
            flags.append((f"not_monotone_{norm}",
                          f"robust accuracy rises with the {norm} budget ({budgets}): the "
                          "attacks are failing, so these numbers are upper bounds at best."))
    return flags


def check_large_budgets(report: RobustnessReport, inputs: base.Inputs) -> list[tuple[str, str]]:
    """Points that survive a budget of half the input range: the attacks failed."""
    flags = []
    for norm, budgets in report.robust_accuracy.items():
        if not budgets:
            continue
        lo, hi = inputs.box
        span = (hi - lo) if math.isfinite(hi - lo) else float(np.ptp(inputs.x))
        large = 0.5 * span * (1 if norm == "linf" else math.sqrt(inputs.x[0].size))
        eps = max(budgets)
        if eps >= large and budgets[eps] > 0:
            flags.append((f"robust_at_large_{norm}_budget",
                          f"{budgets[eps]:.1%} of the points survive a {norm} budget of "
                          f"{eps:g}, half the input range: the attacks failed."))
    return flags


__all__ += ["budget_key"]
