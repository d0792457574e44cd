"""RobustnessReport: what `evaluate_robustness` measured, as typed fields (numpy only).

Scalars, per-point arrays and the sanity flags of one evaluation. `to_dict()` is the flat form
that run folders store (metrics.json's keys); reading the report itself as that dict
(`report["rho_adv"]`, the form of earlier versions) still works, with a DeprecationWarning.
`str(report)` is a short table for people. No Keras here, so that reports of finished
runs are read without starting a backend.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from keras_margin.threat import metric_key, parse_metric_key


@dataclasses.dataclass(frozen=True)
class AttackSummary:
    """One minimum-norm attack's numbers over the correctly classified points.

    Attributes:
        norm: the threat model's norm its distances are measured in.
        rho: mean ||r||_p / ||x||_p over the points it fooled (eq. 20's normalisation).
        success_rate: share of the points it fooled.
        median: median ||r||_p (inf where it failed on over half of them).
    """

    norm: str
    rho: float
    success_rate: float
    median: float


@dataclasses.dataclass(frozen=True)
class RobustnessReport:
    """The paper's measures (eq. 20), the stronger ones where asked, and the flags.

    Attributes:
        n: points evaluated.
        error: clean error over all points.
        fgsm_eps, fgsm_error: the FGSM budget and the error after the step, over all points
            (the paper's "adversarial error"); nan without FGSM.
        rho_adv: eq. (20) from DeepFool, the mean ||r||_2 / ||x||_2 over the correctly
            classified points (nan if DeepFool fooled none).
        deepfool_success_rate: share of those points DeepFool fooled.
        distances: per point, DeepFool's ||r||_2 / ||x||_2 (0 where misclassified).
        attacks: per minimum-norm attack other than DeepFool, by name, its `AttackSummary`.
        rho_min, rho_min_median: per point the smallest verified ||r||_2 / ||x||_2 over every
            minimum-norm attack; its mean over the points some attack fooled, and its median.
        unfooled: share of the correct points no attack fooled.
        distances_min: that per-point minimum (inf where unfooled), over the correct points.
        robust_accuracy: {norm: {eps: accuracy}}: correct and no attack found an adversarial
            within eps (APGD-CE + APGD-T, and the minimum-norm attacks and FGSM that fit).
        deepfool_to_minimum_ratio: median over points of DeepFool's l2 distance / the other
            l2 attacks' smallest.
        certify_method: the bound that proved `certified_radius` ("crown", ...), or None.
        certify_routes: for "crown", how each hidden affine layer's bounds were computed
            ({layer: "exact", "patches", "dense" or "interval"}; `certify.crown_plan`);
            empty for other methods and for runs evaluated before it was recorded.
        certified_radius: {norm: per point, the largest perturbation (absolute, in that
            norm) proven not to change the prediction; 0 where misclassified}.
        certified_distances: per point the certified l2 radius / ||x||_2 (eq. 20's summand,
            beside `distances` and `distances_min`).
        rho_certified: eq. (20)'s mean of certified l2 radius / ||x||_2 over the correctly
            classified points: the proven counterpart of rho_adv and rho_min.
        certified_accuracy: {norm: {eps: share of all points proven robust at eps}}.
        certified_to_minimum_ratio: median over the correct points of the certified l2 radius
            over the smallest l2 attack distance (1: the bound meets the attacks).
        autoattack: {norm: {eps: {attack: points}}} where AutoAttack's ensemble ran: the
            correct points each attack fooled first ("apgd" (APGD-CE and APGD-T), "fab-t",
            "square"), "square_only" (Square's that no gradient attack of the evaluation
            fooled within eps) and "robust" (none of the four did).
        flags: names of the failed sanity checks (each was also warned about).
        fgsm_wrong: per point, whether it is misclassified after the FGSM step (its mean is
            `fgsm_error`); None without FGSM.
    """

    n: int
    error: float
    fgsm_eps: float | None
    fgsm_error: float
    rho_adv: float
    deepfool_success_rate: float
    distances: np.ndarray
    attacks: dict[str, AttackSummary] = dataclasses.field(default_factory=dict)
    rho_min: float | None = None
    rho_min_median: float | None = None
    unfooled: float | None = None
    distances_min: np.ndarray | None = None
    robust_accuracy: dict[str, dict[float, float]] = dataclasses.field(default_factory=dict)
    deepfool_to_minimum_ratio: float | None = None
    certify_method: str | None = None
    certify_routes: dict[str, str] = dataclasses.field(default_factory=dict)
    certified_radius: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    certified_distances: np.ndarray | None = None
    rho_certified: float | None = None
    certified_accuracy: dict[str, dict[float, float]] = dataclasses.field(default_factory=dict)
    certified_to_minimum_ratio: float | None = None
    autoattack: dict[str, dict[float, dict[str, int]]] = dataclasses.field(default_factory=dict)
    flags: list[str] = dataclasses.field(default_factory=list)
    fgsm_wrong: np.ndarray | None = None

    # -- the flat form: JSON, run folders, report["key"] ------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The flat dict of earlier versions: scalars, per-point arrays (numpy) and "flags"."""
        out: dict[str, Any] = {
            "n": self.n, "error": self.error, "fgsm_eps": self.fgsm_eps,
            "fgsm_error": self.fgsm_error, "rho_adv": self.rho_adv,
            "deepfool_success_rate": self.deepfool_success_rate, "distances": self.distances}
        for name, summary in self.attacks.items():
            out.update({f"rho_{name}": summary.rho, f"{name}_success_rate": summary.success_rate,
                        f"{name}_median": summary.median})
        if self.distances_min is not None:
            out.update(rho_min=self.rho_min, rho_min_median=self.rho_min_median,
                       unfooled=self.unfooled, distances_min=self.distances_min)
        for norm, budgets in self.robust_accuracy.items():
            out.update({budget_key(norm, eps): value for eps, value in budgets.items()})
        if self.deepfool_to_minimum_ratio is not None:
            out["deepfool_to_minimum_ratio"] = self.deepfool_to_minimum_ratio
        if self.certify_method is not None:
            out["certify_method"] = self.certify_method
            out.update({f"certify_route_{layer}": route
                        for layer, route in self.certify_routes.items()})
            out.update({f"certified_radius_{norm}": radius
                        for norm, radius in self.certified_radius.items()})
            correct = self.distances > 0
            out.update({f"certified_radius_{norm}_median":
                        float(np.median(radius[correct])) if correct.any() else math.nan
                        for norm, radius in self.certified_radius.items()})
            out["rho_certified"] = self.rho_certified
            if self.certified_distances is not None:
                out["certified_distances"] = self.certified_distances
            for norm, budgets in self.certified_accuracy.items():
                out.update({metric_key("certified_accuracy", norm, eps): value
                            for eps, value in budgets.items()})
            if self.certified_to_minimum_ratio is not None:
                out["certified_to_minimum_ratio"] = self.certified_to_minimum_ratio
        accuracy = self.autoattack_accuracy
        for norm, budgets in self.autoattack.items():
            for eps, counts in budgets.items():
                out[metric_key("autoattack_accuracy", norm, eps)] = accuracy[norm][eps]
                out.update({metric_key("autoattack", norm, eps) + f"_{name}": value
                            for name, value in counts.items()})
        if self.fgsm_wrong is not None:
            out["fgsm_wrong"] = np.asarray(self.fgsm_wrong, bool)
        out["flags"] = list(self.flags)
        return out

    @property
    def autoattack_accuracy(self) -> dict[str, dict[float, float]]:
        """{norm: {eps: share of all points AutoAttack's ensemble alone left robust}}."""
        return {norm: {eps: counts["robust"] / self.n for eps, counts in budgets.items()}
                for norm, budgets in self.autoattack.items()}

    def scalars(self) -> dict[str, Any]:
        """`to_dict` without the per-point arrays (what metrics.json holds)."""
        return {k: v for k, v in self.to_dict().items() if not isinstance(v, np.ndarray)}

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-point arrays by their flat keys ("distances", "distances_min")."""
        return {k: v for k, v in self.to_dict().items() if isinstance(v, np.ndarray)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobustnessReport:
        """The report of a flat dict (`to_dict`, or a run folder's JSON; arrays may be
        missing there, and are then empty)."""
        attacks, robust, certified, autoattack = {}, {}, {}, {}
        for key in data:
            if (parsed := parse_metric_key("autoattack", key)) and parsed[2]:
                norm, eps, name = parsed  # "autoattack_accuracy_..." is derived from the counts
                autoattack.setdefault(norm, {}).setdefault(eps, {})[name] = data[key]
            elif parsed := parse_metric_key("certified_accuracy", key):
                certified.setdefault(parsed[0], {})[parsed[1]] = data[key]
            elif parsed := parse_metric_key("robust_accuracy", key):
                robust.setdefault(parsed[0], {})[parsed[1]] = data[key]
            elif key.endswith("_success_rate") and key != "deepfool_success_rate":
                name = key[: -len("_success_rate")]
                attacks[name] = AttackSummary(_norm_of(name), data[f"rho_{name}"], data[key],
                                              data[f"{name}_median"])
        return cls(n=data["n"], error=data["error"], fgsm_eps=data.get("fgsm_eps"),
                   fgsm_error=data["fgsm_error"], rho_adv=data["rho_adv"],
                   deepfool_success_rate=data["deepfool_success_rate"],
                   distances=np.asarray(data.get("distances", np.zeros(0))), attacks=attacks,
                   rho_min=data.get("rho_min"), rho_min_median=data.get("rho_min_median"),
                   unfooled=data.get("unfooled"),
                   distances_min=None if "rho_min" not in data
                   else np.asarray(data.get("distances_min", np.zeros(0))),
                   robust_accuracy=robust,
                   deepfool_to_minimum_ratio=data.get("deepfool_to_minimum_ratio"),
                   certify_method=data.get("certify_method"),
                   certify_routes={key[len("certify_route_"):]: value
                                   for key, value in data.items()
                                   if key.startswith("certify_route_")},
                   certified_radius={norm: np.asarray(data[f"certified_radius_{norm}"])
                                     for norm in ("l2", "linf")
                                     if f"certified_radius_{norm}" in data},
                   certified_distances=None if "certified_distances" not in data
                   else np.asarray(data["certified_distances"]),
                   rho_certified=data.get("rho_certified"), certified_accuracy=certified,
                   certified_to_minimum_ratio=data.get("certified_to_minimum_ratio"),
                   autoattack=autoattack, flags=list(data.get("flags", [])),
                   fgsm_wrong=None if "fgsm_wrong" not in data
                   else np.asarray(data["fgsm_wrong"], bool))

    # Deprecated: the report read as the flat dict of earlier versions (report["rho_adv"]).
    def __getitem__(self, key: str) -> Any:
        return _flat(self, "report[key]")[key]

    def __contains__(self, key: object) -> bool:
        return key in _flat(self, "key in report")

    def __iter__(self) -> Iterator[str]:
        return iter(_flat(self, "iterating over a report"))

    def keys(self):
        return _flat(self, "report.keys()").keys()

    def items(self):
        return _flat(self, "report.items()").items()

    def get(self, key: str, default: Any = None) -> Any:
        return _flat(self, "report.get(key)").get(key, default)

    # -- for people ---------------------------------------------------------------------------
    def __str__(self) -> str:
        rows = [("points", f"{self.n}"), ("error", _percent(self.error))]
        if self.fgsm_eps is not None:
            rows.append((f"FGSM error (eps {self.fgsm_eps:g})", _percent(self.fgsm_error)))
        rows.append(("rho_adv (DeepFool, eq. 20)", _number(self.rho_adv)))
        for name, summary in self.attacks.items():
            rows.append((f"rho_{name}", _number(summary.rho)))
        if self.distances_min is not None:
            rows.append(("rho_min (smallest over the attacks)", _number(self.rho_min)))
        for norm, budgets in self.robust_accuracy.items():
            for eps, value in budgets.items():
                rows.append((f"robust accuracy, {norm} eps {eps:g}", _percent(value)))
        for norm, budgets in self.autoattack_accuracy.items():
            for eps, value in budgets.items():
                counts = self.autoattack[norm][eps]
                rows.append((f"AutoAttack accuracy, {norm} eps {eps:g}",
                             f"{_percent(value)} (fooled first: APGD {counts['apgd']}, FAB-T "
                             f"{counts['fab-t']}, Square {counts['square']})"))
        if self.certify_method is not None:
            rows.append((f"rho_certified ({self.certify_method}, proven)",
                         _number(self.rho_certified)))
            for norm, budgets in self.certified_accuracy.items():
                for eps, value in budgets.items():
                    rows.append((f"certified accuracy, {norm} eps {eps:g}", _percent(value)))
        rows.append(("flags", ", ".join(self.flags) or "none"))
        width = max(len(label) for label, _ in rows)
        lines = [f"{label:<{width}}  {value}" for label, value in rows]
        return "RobustnessReport\n" + "\n".join(lines)


def budget_key(norm: str, eps: float) -> str:
    """The flat key of robust accuracy at one budget, e.g. "robust_accuracy_linf_0.3"."""
    return metric_key("robust_accuracy", norm, eps)


def _norm_of(name: str) -> str:
    """The threat norm of an attack from its report name ("fmn_linf" -> "linf")."""
    for norm in ("linf", "l1", "l2"):
        if name.endswith("_" + norm):
            return norm
    return "l2"


def _percent(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.2f} %"


def _number(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.4f}"


def _flat(report: RobustnessReport, use: str) -> dict[str, Any]:
    warnings.warn(f"{use} on a RobustnessReport is deprecated: read its fields "
                  "(report.rho_adv, report.robust_accuracy['linf'][0.3]) or its flat form "
                  "report.to_dict()['robust_accuracy_linf_0.3'].", DeprecationWarning,
                  stacklevel=3)
    return report.to_dict()
