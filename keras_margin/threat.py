"""ThreatModel: what an adversary may do, as one value, and the report keys of a budget.

"l_inf, 0.3, inside [0, 1]" is `ThreatModel("linf", 0.3, 0.0, 1.0)`: the norm the perturbation
is measured in, the budget eps (None for the budget-free form a minimum-norm attack or a
certified radius answers), and the input box x + r must stay in. Attacks (`threat=`), certify,
`EvaluationPlan.threat_models` and the report share it. Budgets are keyed by value everywhere;
`metric_key` is the one place that writes a report key of a budget ("robust_accuracy_linf_0.3")
and `parse_metric_key` the one place that reads it back. Plain Python: no backend starts here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

NORMS = ("l2", "linf", "l1")
_NORM_NAMES = {"l2": "l_2", "linf": "l_inf", "l1": "l_1"}


def _number(name: str, value: Any) -> float:
    """A finite real number (not a bool or a string), as float; or ValueError naming `name`."""
    try:
        if isinstance(value, (str, bytes, bool)) or type(value).__name__ == "bool_":
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"Invalid value for argument {name}: {value!r}. Expected a finite "
                         "number.")
    return number


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """A threat model: perturbations r with ||r||_norm <= eps and clip_min <= x + r <= clip_max.

    Args:
        norm: "l2", "linf" or "l1".
        eps: the budget, a finite number > 0; None for the budget-free form (the smallest
            adversarial, a certified radius).
        clip_min, clip_max: the input box (None: unbounded on that side); x must lie in it.
    """

    norm: str
    eps: float | None = None
    clip_min: float | None = None
    clip_max: float | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"Invalid value for argument norm: {self.norm!r}. Expected one of "
                             f"{set(NORMS)}.")
        if self.eps is not None:
            eps = _number("eps", self.eps)
            if eps <= 0:
                raise ValueError(f"Invalid value for argument eps: {self.eps!r}. Expected a "
                                 "number > 0 (or None for no budget).")
            object.__setattr__(self, "eps", eps)
        for name in ("clip_min", "clip_max"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _number(name, getattr(self, name)))
        if self.clip_min is not None and self.clip_max is not None \
                and not self.clip_min < self.clip_max:
            raise ValueError(f"The input box is empty or reversed: clip_min={self.clip_min!r} "
                             f"must be smaller than clip_max={self.clip_max!r}.")

    @property
    def box(self) -> tuple[float, float]:
        """(low, high), -inf / inf where unbounded."""
        return (-math.inf if self.clip_min is None else self.clip_min,
                math.inf if self.clip_max is None else self.clip_max)

    @property
    def bounded(self) -> bool:
        """Whether the box bounds the inputs on either side."""
        return self.clip_min is not None or self.clip_max is not None

    def with_eps(self, eps: float | None) -> ThreatModel:
        """The same norm and box at another budget (None: budget-free)."""
        return dataclasses.replace(self, eps=eps)

    def key(self, metric: str) -> str:
        """The report key of `metric` at this budget, e.g. "robust_accuracy_linf_0.3"."""
        if self.eps is None:
            raise ValueError(f"{self} has no budget eps, so it has no {metric} key.")
        return metric_key(metric, self.norm, self.eps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThreatModel:
        return cls(**data)

    def __str__(self) -> str:
        text = _NORM_NAMES[self.norm] + ("" if self.eps is None else f" eps {self.eps:g}")
        if self.bounded:
            low, high = (f"{v:g}" for v in self.box)
            text += f" inside [{low}, {high}]"
        return text


def resolve(threat: Any, eps: Any = None, norm: str | None = None,
            clip_min: float | None = None, clip_max: float | None = None, *,
            budget: bool | None = None,
            owner: tuple[str, str] | None = None) -> tuple[Any, str, Any, Any]:
    """A call's (eps, norm, clip_min, clip_max): from `threat=` or from the separate
    arguments, never both. The one place that decides it, for the attacks and certify.

    The separate form comes back as given (the caller checks its values; certify's eps may
    be one per point), its norm "linf" when None. `budget`: True where the call needs eps,
    False where it is budget-free (a certified radius), None either. `owner`: (name, norm)
    of an attack, whose norm is fixed when it is built: the separate form takes it, and a
    threat must have it.
    """
    if threat is None:
        if budget and eps is None:
            raise ValueError("Invalid value for argument eps: None. Expected the budget (or "
                             "threat=ThreatModel(norm, eps)).")
        return eps, owner[1] if owner else ("linf" if norm is None else norm), clip_min, \
            clip_max
    if not isinstance(threat, ThreatModel):
        raise ValueError(f"Invalid value for argument threat: {threat!r}. Expected a "
                         "keras_margin.ThreatModel(norm, eps, clip_min, clip_max) or None.")
    if owner and threat.norm != owner[1]:
        raise ValueError(f"Invalid value for argument threat: its norm is {threat.norm!r}, but "
                         f"{owner[0]} attacks in {owner[1]!r}. Build the attack with "
                         f"norm={threat.norm!r}.")
    given = [name for name, value in (("norm", norm), ("eps", eps), ("clip_min", clip_min),
                                      ("clip_max", clip_max)) if value is not None]
    if given:
        raise ValueError("Pass the norm, budget and box either in threat= or as "
                         f"{', '.join(name + '=' for name in given)}, not both.")
    if budget and threat.eps is None:
        raise ValueError(f"Invalid value for argument threat: {threat} has no budget eps.")
    if budget is False and threat.eps is not None:
        raise ValueError(f"Invalid value for argument threat: {threat} has a budget; a "
                         "certified radius is budget-free (ThreatModel(norm, clip_min=..., "
                         "clip_max=...)).")
    return threat.eps, threat.norm, threat.clip_min, threat.clip_max


def metric_key(metric: str, norm: str, eps: float) -> str:
    """The flat report key of `metric` at one budget: f"{metric}_{norm}_{eps:g}"
    ("robust_accuracy_linf_0.3"); `parse_metric_key` inverts it."""
    if norm not in NORMS:
        raise ValueError(f"Invalid value for argument norm: {norm!r}. Expected one of "
                         f"{set(NORMS)}.")
    return f"{metric}_{norm}_{float(eps):g}"


def parse_metric_key(metric: str, key: str) -> tuple[str, float, str] | None:
    """(norm, eps, rest) of a key `metric_key` wrote, optionally followed by "_rest"
    ("autoattack_linf_0.1_square" -> ("linf", 0.1, "square")); None if `key` is not one."""
    prefix = metric + "_"
    if not key.startswith(prefix):
        return None
    norm, _, tail = key[len(prefix):].partition("_")
    eps, _, rest = tail.partition("_")
    try:
        value = float(eps)
    except ValueError:
        return None
    if norm not in NORMS or not math.isfinite(value) or value <= 0:
        return None
    return norm, value, rest
