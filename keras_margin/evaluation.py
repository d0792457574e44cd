"""Robustness of a model: the paper's measures and the field's stronger ones, with sanity flags.

The paper's: clean error, error under FGSM, and rho_adv (eq. 20), the mean of ||r(x)|| / ||x||
over correctly classified points, r from DeepFool. DeepFool only upper-bounds each sample's
minimal perturbation and FGSM is one gradient step, so both can overstate robustness; hence the
minimum-norm attacks (FMN, DDN: `rho_<attack>` and the per-sample minimum over every verified
adversarial, `rho_min`) and robust accuracy under budgets from the APGD ensemble (APGD-CE and
APGD-T; a sample is robust only if every attack run fails). Checks of the numbers themselves
land in `flags`, each with a warning: attacks that fail where they should not, robust accuracy
that rises with the budget, DeepFool far above the minimum-norm attacks (gradient masking).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from keras import ops

from keras_margin.attacks import base
from keras_margin.attacks.apgd import APGD, run_schedule
from keras_margin.attacks.ddn import DDN
from keras_margin.attacks.deepfool import DeepFool
from keras_margin.attacks.fgsm import fgsm_examples
from keras_margin.attacks.fmn import FMN

# Names accepted in `attacks=`. The l2 FMN starts from DeepFool's adversarials, which the
# evaluation computes anyway (FMN alone can settle on a farther class's boundary).
ATTACK_NAMES = {"fmn": FMN(norm="l2", init="deepfool"), "fmn_l2": FMN(norm="l2", init="deepfool"),
                "fmn_linf": FMN(norm="linf"), "fmn_l1": FMN(norm="l1"), "ddn": DDN()}
# DeepFool's l2 distances "far above" the minimum-norm ones: the median ratio beyond this.
MASKING_RATIO = 2.0
# An unbounded attack should fool (nearly) every correctly classified point.
MIN_SUCCESS = 0.99
# FGSM fooling this many fewer points than APGD at a budget no larger: a masked single step.
FGSM_GAP = 0.2


def relative_norms(x: np.ndarray, perturbation: np.ndarray, norm: str = "l2") -> np.ndarray:
    """||r(x)|| / ||x|| per sample (the summand of eq. 20 for l2)."""
    r, scale = base.lp_norms(perturbation, norm), base.lp_norms(x, norm)
    return np.divide(r, scale, out=np.zeros_like(r), where=scale > 0)


def rho_adv(x: np.ndarray, perturbation: np.ndarray, correct: np.ndarray) -> float:
    """Eq. (20): mean of ||r(x)||_2 / ||x||_2 over the correctly classified points (nan if none)."""
    correct = np.asarray(correct, bool)
    if not correct.any():
        return math.nan
    return float(relative_norms(np.asarray(x), np.asarray(perturbation))[correct].mean())


def resolve_attack(spec: Any) -> FMN | DDN:
    """A minimum-norm attack from its name ("fmn", "fmn_linf", "ddn", ...) or object."""
    if isinstance(spec, (FMN, DDN)):
        return spec
    if isinstance(spec, str) and spec in ATTACK_NAMES:
        return ATTACK_NAMES[spec]
    raise ValueError(f"Invalid value in argument attacks: {spec!r}. Expected one of "
                     f"{sorted(ATTACK_NAMES)} or an attacks.FMN / attacks.DDN object.")


def check_budgets(name: str, budgets: Sequence[float]) -> list[float]:
    """Budgets as a sorted list of distinct positive numbers."""
    values = []
    for value in budgets:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(value) or value <= 0:
            raise ValueError(f"Invalid value in argument {name}: {value!r}. Expected numbers "
                             "> 0.")
        values.append(float(value))
    return sorted(set(values))


def budget_key(norm: str, eps: float) -> str:
    """The result key of robust accuracy at one budget, e.g. "robust_accuracy_linf_0.3"."""
    return f"robust_accuracy_{norm}_{eps:g}"


@dataclasses.dataclass
class _Report:
    """Collects the result dict and its flags."""

    values: dict[str, Any]
    flags: list[str] = dataclasses.field(default_factory=list)

    def flag(self, name: str, message: str) -> None:
        self.flags.append(name)
        warnings.warn(f"evaluate_robustness [{name}]: {message}", UserWarning, stacklevel=3)


def evaluate_robustness(model: Callable, x: Any, y: Any, fgsm_eps: float | None = 0.2,
                        batch_size: int = 500, clip_min: float | None = None,
                        clip_max: float | None = None, verbose: int = 0,
                        attacks: Sequence[Any] = (), linf_eps: Sequence[float] = (),
                        l2_eps: Sequence[float] = (), apgd: APGD | None = None,
                        deepfool: DeepFool | None = None,
                        **deepfool_kwargs: Any) -> dict[str, Any]:
    """Clean error, FGSM error, rho_adv (eq. 20), and optionally stronger attacks, with flags.

    Args:
        model: a Keras model or callable returning logits (k >= 2).
        x, y: inputs and class indices.
        fgsm_eps: FGSM budget (the paper: 0.2 on MNIST, 0.05 on CIFAR-10); None skips FGSM.
        batch_size: samples attacked side by side (the attacks' lanes).
        clip_min, clip_max: optional input box for every attack; x must lie in it.
        verbose: 1 shows progress bars.
        attacks: minimum-norm attacks to run besides DeepFool: names ("fmn" = "fmn_l2", which
            starts from DeepFool's adversarials, "fmn_linf", "fmn_l1", "ddn") or
            `attacks.FMN` / `attacks.DDN` objects.
        linf_eps, l2_eps: budgets for robust accuracy by the APGD ensemble (APGD-CE, then
            APGD-T on 9 target classes); the minimum-norm attacks of the same norm and FGSM
            (l_inf) count too: a sample is robust only if every attack fails.
        apgd: the APGD settings (steps, restarts, seed) of the ensemble; default `APGD()`.
        deepfool: DeepFool's settings, or give them as keywords (norm, max_iter, overshoot,
            step_clip, candidates); default the paper's.

    Returns:
        dict with "error", "fgsm_error" (over all points, as the paper), "rho_adv" (DeepFool,
        over the correctly classified points), "deepfool_success_rate", "distances" (numpy,
        ||r|| / ||x|| per sample, 0 where misclassified) and "n"; per minimum-norm attack A:
        "rho_A" (mean ||r||_p / ||x||_p over the correct points it fooled), "A_success_rate",
        "A_median" (median ||r||_p, inf where not fooled); "rho_min" and "rho_min_median"
        (per sample the smallest ||r||_2 / ||x||_2 over every verified adversarial; the mean
        leaves out points no attack fooled, whose share is "unfooled"), "distances_min";
        "robust_accuracy_<norm>_<eps>" per budget; and "flags", the names of the failed sanity
        checks (each also warned about).

    Example:
        >>> report = evaluate_robustness(model, x_test, y_test, fgsm_eps=0.2, clip_min=0.0,
        ...                              clip_max=1.0, attacks=["fmn", "fmn_linf"],
        ...                              linf_eps=[0.1, 0.2, 0.3])
        >>> report["rho_adv"], report["rho_min"], report["robust_accuracy_linf_0.3"]
    """
    deepfool = _deepfool_settings(deepfool, deepfool_kwargs)
    minimum_norm = [resolve_attack(spec) for spec in attacks]
    budgets = {"linf": check_budgets("linf_eps", linf_eps), "l2": check_budgets("l2_eps", l2_eps)}
    apgd = apgd or APGD()
    inputs = base.check_inputs(model, x, y, clip_min, clip_max, "evaluate_robustness")
    lanes = base.check_lanes(batch_size, len(inputs.x))
    n = len(inputs.x)
    wrong = base.predictions(model, inputs.x, lanes) != inputs.labels
    correct = ~wrong
    report = _Report({"error": float(wrong.mean()), "n": n})
    fgsm_wrong = _fgsm_errors(model, inputs, fgsm_eps, lanes) if fgsm_eps is not None else None
    report.values["fgsm_error"] = float(fgsm_wrong.mean()) if fgsm_wrong is not None \
        else math.nan
    report.values["fgsm_eps"] = fgsm_eps
    subset = dataclasses.replace(inputs, x=inputs.x[correct], labels=inputs.labels[correct])
    found = {}  # attack name -> (result on the correct points, its norm)
    if correct.any():
        found["deepfool"] = (deepfool.run(model, subset, lanes, verbose=verbose), "l2")
        for attack in minimum_norm:
            reuse = isinstance(attack, FMN) and attack.init == "deepfool" and \
                attack.norm == "l2" and deepfool.norm == "l2"
            found[attack.name] = (attack.run(
                model, subset, lanes, verbose=verbose,
                **({"init_result": found["deepfool"][0]} if reuse else {})), attack.norm)
    _paper_measures(report, inputs, correct, found.get("deepfool", (None,))[0])
    _minimum_norm_measures(report, subset, found)
    for norm, values in budgets.items():
        if values:
            _robust_accuracy(report, model, subset, correct, norm, values, apgd, found,
                             fgsm_wrong, fgsm_eps, lanes, verbose)
    _sanity_checks(report, inputs, budgets, found)
    report.values["flags"] = report.flags
    return report.values


def _deepfool_settings(deepfool: DeepFool | None, kwargs: dict[str, Any]) -> DeepFool:
    """`deepfool=DeepFool(...)` or DeepFool's keywords; a misspelt keyword is an error."""
    if deepfool is not None and kwargs:
        raise ValueError("Pass DeepFool's settings either as deepfool=DeepFool(...) or as "
                         f"keywords, not both; received keywords {sorted(kwargs)}.")
    if deepfool is not None:
        return deepfool
    fields = {f.name for f in dataclasses.fields(DeepFool)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"Unknown keyword argument(s) {unknown}. evaluate_robustness takes "
                         f"DeepFool's settings {sorted(fields)} as keywords.")
    return DeepFool(**kwargs)


def _fgsm_errors(model: Callable, inputs: base.Inputs, eps: float, lanes: int) -> np.ndarray:
    """Per sample: misclassified after one FGSM step of size eps (as the paper: all points)."""
    eps = float(eps)
    wrong = np.empty(len(inputs.x), bool)
    for start in range(0, len(inputs.x), lanes):
        xb = ops.convert_to_tensor(inputs.x[start:start + lanes])
        yb = ops.convert_to_tensor(inputs.labels[start:start + lanes])
        x_adv = fgsm_examples(model, xb, yb, eps, clip=(inputs.clip_min, inputs.clip_max))[1]
        wrong[start:start + lanes] = base.logits_of(model, x_adv).argmax(axis=1) \
            != inputs.labels[start:start + lanes]
    return wrong


def _paper_measures(report: _Report, inputs: base.Inputs, correct: np.ndarray,
                    deepfool: base.AttackResult | None) -> None:
    """rho_adv (eq. 20) and DeepFool's success rate over the correctly classified points."""
    distances = np.zeros(len(inputs.x))
    if deepfool is None:
        report.values.update(rho_adv=math.nan, deepfool_success_rate=math.nan,
                             distances=distances)
        return
    perturbation = np.zeros_like(inputs.x)
    perturbation[correct] = deepfool.perturbation
    distances[correct] = relative_norms(inputs.x[correct], deepfool.perturbation)
    report.values.update(
        rho_adv=rho_adv(inputs.x, perturbation, correct) if deepfool.success.any() else math.nan,
        deepfool_success_rate=float(deepfool.success.mean()), distances=distances)


def _minimum_norm_measures(report: _Report, subset: base.Inputs,
                           found: dict[str, tuple[base.AttackResult, str]]) -> None:
    """rho and median distance per attack; the per-sample minimum over all of them."""
    smallest = np.full(len(subset.x), np.inf)
    for name, (result, norm) in found.items():
        relative = relative_norms(subset.x, result.perturbation, norm)
        relative_l2 = relative_norms(subset.x, result.perturbation, "l2")
        smallest = np.where(result.success, np.minimum(smallest, relative_l2), smallest)
        if name == "deepfool":
            continue
        report.values[f"rho_{name}"] = float(relative[result.success].mean()) \
            if result.success.any() else math.nan
        report.values[f"{name}_success_rate"] = float(result.success.mean())
        report.values[f"{name}_median"] = float(np.median(result.distances(norm)))
    if found:
        fooled = np.isfinite(smallest)
        report.values.update(
            rho_min=float(smallest[fooled].mean()) if fooled.any() else math.nan,
            rho_min_median=float(np.median(smallest)), unfooled=float((~fooled).mean()),
            distances_min=smallest)


def _robust_accuracy(report: _Report, model: Callable, subset: base.Inputs,
                     correct: np.ndarray, norm: str, budgets: list[float], apgd: APGD,
                     found: dict[str, tuple[base.AttackResult, str]],
                     fgsm_wrong: np.ndarray | None, fgsm_eps: float | None, lanes: int,
                     verbose: int) -> None:
    """Robust accuracy at each budget: correct, and no attack run found an adversarial."""
    ensemble = [dataclasses.replace(apgd, norm=norm, loss="ce", targeted=False),
                dataclasses.replace(apgd, norm=norm, loss="dlr", targeted=True,
                                    restarts=1)]
    if subset.num_classes < 4:
        ensemble = ensemble[:1]
    results = run_schedule(model, subset, ensemble, budgets, lanes, verbose=verbose) \
        if len(subset.x) else {}
    n = len(correct)
    for eps in budgets:
        fooled = results[eps].success.copy() if results else np.zeros(0, bool)
        for result, attack_norm in found.values():
            if attack_norm == norm:
                fooled |= result.success & (base.lp_norms(result.perturbation, norm)
                                            <= eps * (1 + 1e-6))
        if norm == "linf" and fgsm_wrong is not None and fgsm_eps is not None \
                and fgsm_eps <= eps:
            fooled |= fgsm_wrong[correct]
        report.values[budget_key(norm, eps)] = float((~fooled).sum() / n)


def _sanity_checks(report: _Report, inputs: base.Inputs, budgets: dict[str, list[float]],
                   found: dict[str, tuple[base.AttackResult, str]]) -> None:
    """The flags: numbers that cannot be trusted as they stand."""
    values = report.values
    fooled = np.logical_or.reduce([r.success for r, _ in found.values()]) if found else None
    for name, (result, _) in found.items():
        blind = result.stuck & ~fooled
        if blind.any():
            report.flag("zero_gradients", f"{name}: the input gradient is zero for "
                        f"{blind.mean():.1%} of the correctly classified points, and no attack "
                        "fooled them: the model cannot be attacked by gradients there, so its "
                        "robustness is unknown, not proven (saturated or flat logits, or "
                        "gradient masking).")
            break
    for name, (result, _) in found.items():
        if result.success.mean() < MIN_SUCCESS:
            covered = (~result.success & fooled).sum() / max((~result.success).sum(), 1)
            report.flag(f"{name}_failures",
                        f"{name} fooled only {result.success.mean():.1%} of the correctly "
                        "classified points, although it has no budget ("
                        f"{covered:.0%} of the rest were fooled by another attack, so rho_min "
                        f"holds; rho_{name} covers the points it fooled); "
                        + ("inputs may be unscaled (see the warning above) or the "
                           "gradients masked." if result.success.mean() < 0.5 else
                           "raise its iterations (max_iter / steps)."))
    if "deepfool" in found and len(found) > 1:
        deep, _ = found["deepfool"]
        others = [r for name, (r, norm) in found.items() if name != "deepfool" and norm == "l2"]
        if others:
            best = np.min([np.where(r.success, base.lp_norms(r.perturbation, "l2"), np.inf)
                           for r in others], axis=0)
            both = deep.success & np.isfinite(best) & (best > 0)
            if both.any():
                ratio = float(np.median(base.lp_norms(deep.perturbation, "l2")[both]
                                        / best[both]))
                values["deepfool_to_minimum_ratio"] = ratio
                if ratio > MASKING_RATIO:
                    report.flag("gradient_masking", f"DeepFool's l2 distances are {ratio:.2f}x "
                                "the minimum-norm attacks' (median): its rho_adv overstates "
                                "robustness; report rho_min.")
    fgsm_eps = values.get("fgsm_eps")
    for eps in budgets.get("linf", ()):
        apgd_error = 1.0 - values[budget_key("linf", eps)]  # over all points, as FGSM's
        if fgsm_eps is not None and eps <= fgsm_eps and \
                apgd_error - values["fgsm_error"] > FGSM_GAP:
            report.flag("fgsm_unreliable",
                        f"APGD at l_inf {eps:g} fools {apgd_error:.1%} of the points, FGSM at "
                        f"{fgsm_eps:g} only {values['fgsm_error']:.1%}: one linear step "
                        "misses many adversarials here (a curved loss surface, or gradient "
                        "masking as FGSM adversarial training makes), so the FGSM error "
                        "overstates robustness.")
            break
    for norm, eps_values in budgets.items():
        accuracies = [values[budget_key(norm, eps)] for eps in eps_values]
        if any(b > a + 1e-12 for a, b in zip(accuracies, accuracies[1:])):
            report.flag(f"not_monotone_{norm}", f"robust accuracy rises with the {norm} budget "
                        f"({dict(zip(eps_values, accuracies))}): the attacks are failing, "
                        "so these numbers are upper bounds at best.")
        if eps_values:
            lo, hi = inputs.box
            span = (hi - lo) if math.isfinite(hi - lo) else float(np.ptp(inputs.x))
            large = 0.5 * span * (1 if norm == "linf" else math.sqrt(inputs.x[0].size))
            if eps_values[-1] >= large and accuracies[-1] > 0:
                report.flag(f"robust_at_large_{norm}_budget",
                            f"{accuracies[-1]:.1%} of the points survive a {norm} budget of "
                            f"{eps_values[-1]:g}, half the input range: the attacks failed.")
