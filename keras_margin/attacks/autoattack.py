"""AutoAttack (Croce & Hein, ICML 2020): a fixed ensemble of attacks, each on the points the
ones before it left robust, the protocol RobustBench reports.

The standard version runs APGD-CE, APGD-T (targeted DLR over the 9 runner-up classes), FAB-T
and Square (5,000 queries, the window schedule per query, not stretched), each with
AutoAttack's settings and one restart; "rand" (for models random at inference) runs APGD-CE
and APGD-DLR; "custom" any list of those names.
A point is robust at eps when it is correctly classified and no attack of the list finds a
verified adversarial within eps. The result records, per point, which attack fooled it first
("clean" where the clean input is already misclassified, "" where robust), so Square's
successes are exactly the points every gradient attack before it missed: the gradient-masking
check (`square_only`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keras_margin._validation import check_choice, check_integer
from keras_margin.attacks import base
from keras_margin.attacks.apgd import APGD
from keras_margin.attacks.fab import FAB
from keras_margin.attacks.square import Square, check_images

NORMS = ("linf", "l2")
# AutoAttack's attack names, as its `attacks_to_run`.
MEMBERS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
            "rand": ("apgd-ce", "apgd-dlr"), "custom": None}
# A point fooled before any attack ran / by none of them, in `AutoAttackResult.fooled_by`.
CLEAN, ROBUST = "clean", ""


@dataclasses.dataclass(frozen=True)
class AutoAttackResult(base.AttackResult):
    """An `AttackResult` of the ensemble, with who fooled each point.

    Attributes:
        fooled_by: str (n,): the first attack of the list that found a verified adversarial
            within eps, "clean" where the clean input is misclassified, "" where robust.
        attacks: the names of the attacks that ran, in order.
    """

    fooled_by: np.ndarray
    attacks: tuple[str, ...]

    @property
    def robust(self) -> np.ndarray:
        """bool (n,): correctly classified and fooled by no attack within eps."""
        return self.fooled_by == ROBUST

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.mean()) if len(self.fooled_by) else float("nan")

    @property
    def clean_accuracy(self) -> float:
        return float((self.fooled_by != CLEAN).mean()) if len(self.fooled_by) else float("nan")

    def counts(self) -> dict[str, int]:
        """Points fooled by each attack of the list (first success only), in order."""
        return {name: int((self.fooled_by == name).sum()) for name in self.attacks}


@base.register
@dataclasses.dataclass(frozen=True)
class AutoAttack(base.BudgetAttack):
    """AutoAttack's settings; see `autoattack`."""

    norm: str = "linf"
    version: str = "standard"
    attacks: tuple[str, ...] = ()
    seed: int = 0
    steps: int = 100
    n_queries: int = 5000

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        check_choice("version", self.version, tuple(VERSIONS))
        attacks = self.attacks
        if isinstance(attacks, str) or not isinstance(attacks, (Sequence, np.ndarray)):
            raise ValueError(f"Invalid value for argument attacks: {attacks!r}. Expected a "
                             f"list of names from {list(MEMBERS)}.")
        attacks = tuple(attacks)
        for name in attacks:
            check_choice("attacks", name, MEMBERS)
        if len(set(attacks)) != len(attacks):
            raise ValueError(f"Invalid value for argument attacks: {list(attacks)} names an "
                             "attack twice.")
        if self.version == "custom" and not attacks:
            raise ValueError("version='custom' needs the list of attacks to run, e.g. "
                             "attacks=['apgd-ce', 'square'].")
        if self.version != "custom" and attacks:
            raise ValueError(f"attacks={list(attacks)} is a custom list: pass "
                             f"version='custom' with it (version {self.version!r} runs "
                             f"{list(VERSIONS[self.version])}).")
        object.__setattr__(self, "attacks", attacks)
        object.__setattr__(self, "seed", check_integer("seed", self.seed, minimum=0))
        object.__setattr__(self, "steps", check_integer("steps", self.steps))
        object.__setattr__(self, "n_queries", check_integer("n_queries", self.n_queries))

    @property
    def name(self) -> str:
        return f"autoattack_{self.norm}"

    @property
    def names(self) -> tuple[str, ...]:
        """The attacks that run, in order."""
        return self.attacks if self.version == "custom" else VERSIONS[self.version]

    def members(self) -> list[tuple[str, base.BudgetAttack | FAB]]:
        """(name, attack object) of each attack of the list, with AutoAttack's settings."""
        common = {"norm": self.norm, "seed": self.seed}
        made = {"apgd-ce": APGD(loss="ce", steps=self.steps, **common),
                "apgd-dlr": APGD(loss="dlr", steps=self.steps, **common),
                "apgd-t": APGD(loss="dlr", targeted=True, steps=self.steps, **common),
                "fab": FAB(targeted=False, steps=self.steps, **common),
                "fab-t": FAB(targeted=True, steps=self.steps, **common),
                "square": Square(n_queries=self.n_queries, rescale_schedule=False, **common)}
        return [(name, made[name]) for name in self.names]

    def run(self, model: Callable, inputs: base.Inputs, budgets: Sequence[float], lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0
            ) -> dict[float, AutoAttackResult]:
        if "square" in self.names:  # before any attack runs
            check_images(inputs.x, f"{self.name}'s Square (version='custom' can leave it out)")
        _check_deterministic(model, inputs, self.version)
        correct = base.predictions(model, inputs.x, lanes) == inputs.labels
        return {float(eps): self._run_one(model, inputs, correct, float(eps), lanes,
                                          jit_compile, verbose) for eps in budgets}

    def _run_one(self, model: Callable, inputs: base.Inputs, correct: np.ndarray, eps: float,
                 lanes: int, jit_compile: bool | str, verbose: int) -> AutoAttackResult:
        n = len(inputs.x)
        fooled_by = np.where(correct, ROBUST, CLEAN).astype("<U8")
        delta = np.zeros_like(inputs.x)
        iterations = np.zeros(n, np.int32)
        stuck = np.zeros(n, bool)
        for name, attack in self.members():
            todo = np.flatnonzero(fooled_by == ROBUST)
            if not todo.size:
                break
            subset = dataclasses.replace(inputs, x=inputs.x[todo], labels=inputs.labels[todo])
            if isinstance(attack, FAB):
                found = attack.run_within(model, subset, eps, lanes, jit_compile, verbose)
            else:
                found = attack.run(model, subset, [eps], lanes, jit_compile, verbose)[eps]
            hit = todo[found.success]
            delta[hit] = found.perturbation[found.success]
            fooled_by[hit] = name
            iterations[todo] += found.iterations
            stuck[todo] |= found.stuck
            if verbose == 2:
                print(f"{self.name} {name} at {eps:g}: {found.success.sum()} of {todo.size} "
                      f"fooled; robust accuracy {np.mean(fooled_by == ROBUST):.2%}")
        return AutoAttackResult(delta, fooled_by != ROBUST, iterations, stuck & (
            fooled_by == ROBUST), fooled_by, self.names)


def _check_deterministic(model: Callable, inputs: base.Inputs, version: str) -> None:
    """AutoAttack's "rand" version averages gradients over 20 draws (EOT) of a model random
    at inference; here the model is called twice on a few points: identical logits make the
    average the gradient itself (what runs), different ones are refused for "rand" (EOT is
    not implemented) and warned about otherwise, as AutoAttack's own check."""
    probe = inputs.x[:8]
    first, second = base.logits_of(model, probe), base.logits_of(model, probe)
    if np.array_equal(first, second):
        return
    if version == "rand":
        raise NotImplementedError("autoattack(version='rand'): this model's logits differ "
                                  "between two calls on the same input (random at "
                                  "inference), and the gradient averaging over draws (EOT) "
                                  "that the version needs is not implemented here.")
    warnings.warn("autoattack: this model's logits differ between two calls on the same "
                  "input (random at inference); the standard version's numbers may overstate "
                  "robustness for such a model.", UserWarning, stacklevel=4)


def autoattack(model: Callable, x: Any, y: Any, eps: float, norm: str = "linf",
               version: str = "standard", attacks: Sequence[str] = (), seed: int = 0,
               clip_min: float | None = None, clip_max: float | None = None,
               batch_size: int | None = None, jit_compile: bool | str = "auto",
               verbose: int = 0) -> AutoAttackResult:
    """Robustness within ||delta||_p <= eps by AutoAttack's ensemble (Croce & Hein, 2020).

    Args:
        model: a Keras model or callable returning logits (batch, k); the standard version's
            APGD-T needs k >= 4.
        x, y: inputs (n, height, width, channels) (Square perturbs image windows) and their
            true labels (n,).
        eps: the budget, in the threat model's norm (e.g. 0.3 l_inf on MNIST in [0, 1]).
        norm: "linf" or "l2".
        version: "standard" (APGD-CE, APGD-T, FAB-T, Square), "rand" (APGD-CE, APGD-DLR; for
            a model random at inference, which is refused: EOT is not implemented) or
            "custom" (the list `attacks`).
        attacks: the custom list, names from "apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t",
            "square", run in that order of the list.
        seed: the random starts' seed of every attack.
        clip_min, clip_max: optional input box; x must lie inside it.
        batch_size: points attacked side by side (lanes, default 256).
        jit_compile: as for `deepfool`.
        verbose: 1 shows each attack's progress bar, 2 one line per attack as it ends.

    Returns:
        An `AutoAttackResult`: a verified adversarial perturbation within eps where `success`
        (zeros elsewhere), `fooled_by` per point, `robust_accuracy`, `counts()`.

    Example:
        >>> res = autoattack(model, x_test, y_test, eps=0.3, clip_min=0.0, clip_max=1.0)
        >>> res.robust_accuracy, res.counts()
    """
    return AutoAttack(norm=norm, version=version, attacks=tuple(attacks), seed=seed)(
        model, x, y, eps=eps, clip_min=clip_min, clip_max=clip_max, batch_size=batch_size,
        jit_compile=jit_compile, verbose=verbose)
