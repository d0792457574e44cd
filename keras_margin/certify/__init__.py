"""Certified robustness: a proven lower bound under every attack's upper bound.

An attack's distance is an upper bound on the smallest perturbation that changes a prediction;
`certified_radius` is a lower bound, proven: no perturbation of that norm or less changes the
prediction (within the input box, for l_inf). `certify` answers for one budget.

    >>> from keras_margin import certify
    >>> certify.certify(model, x, y, eps=0.01, norm="linf")          # bool per point
    >>> certify.certified_radius(model, x, y, norm="l2")              # float per point

Methods (`keras_margin.propagation.bounds`): "crown" (linear bound propagation with CROWN's
back-substitution for every layer, convolutional maps as patches (`propagation/patches.py`);
`crown_plan` shows each layer's route and a warning names any layer left to intervals),
"auto" (the default: "crown"'s plan while its cost stays within `bounds.AUTO_BUDGET`,
intervals beyond; the same as "crown" on LeNet-5 and MLPs, the first layers of a ResNet-20,
whose full CROWN costs about 600 times LeNet-5's), "crown-ibp" (intervals
for the hidden layers, CROWN for the output: cheaper on convolutional networks), "ibp"
(intervals) and "lipschitz" (a global Lipschitz bound, for every supported layer). Supported
layers: see `network.SUPPORTED`; others are refused by name. A misclassified point has radius
0 and is never certified. Where one step of CROWN at the chosen `batch_size` would not fit in
the memory free, `TooLargeError` (a `MemoryError`) says so before it runs, with a batch size
that fits (`propagation/memory.py`).

Rounding (issue 30): the bounds are computed in float64 and each margin gives up a rounding
allowance (`bounds.rounding_allowance`), so a radius is a bound for the network in exact
arithmetic with the model's weights; see README, "What proven means under rounding".
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin import inputs as entry
from keras_margin._validation import check_choice, check_integer, check_non_negative
from keras_margin.propagation import bounds
from keras_margin.propagation.bounds import METHODS, NORMS, margin_bounds
from keras_margin.propagation.memory import TooLargeError, check_fits, needed_bytes
from keras_margin.propagation.network import SUPPORTED, chain, check_chain
from keras_margin.threat import ThreatModel, resolve

__all__ = ["METHODS", "NORMS", "SUPPORTED", "TooLargeError", "certified_radius", "certify",
           "crown_plan", "margin_bounds", "lower_margins"]


def base_model(model: Callable) -> Callable:
    """A trainer of keras-margin (`MarginModel`, ...) is certified through its base model,
    whose logits it outputs; any other model as it is."""
    base_of = getattr(model, "base", None)
    return base_of if isinstance(base_of, keras.Model) else model


def check_supported(model: Callable, x: np.ndarray) -> list:
    """The model's chain of operations, once every layer is known to be bounded and the chain
    to compute the model on a few points of x; a clear error otherwise. Cheap:
    `evaluate_robustness` calls it before any attack runs."""
    model = base_model(model)
    operations = chain_of(model)
    check_chain(model, operations, x)
    return operations


_CHAINS: weakref.WeakKeyDictionary[Any, list] = weakref.WeakKeyDictionary()


def chain_of(model: keras.Model) -> list:
    """The model's chain of operations (`network.chain`), read once per model: the operations
    read the weights at each call, so the one chain serves every later bound."""
    try:
        if model not in _CHAINS:
            _CHAINS[model] = chain(model)
        return _CHAINS[model]
    except TypeError:  # not weak-referenceable
        return chain(model)


def crown_plan(model: Callable, method: str = "crown") -> list[tuple[str, str]]:
    """How `method` ("crown" or "auto") bounds each hidden affine layer (those feeding a ReLU
    or a max pooling), as (layer name, route): "exact" (the first layer: its exact range),
    "patches" (a convolutional map, its neurons' rows as patches), "dense" (rows over the
    whole maps, layers of at most `bounds.CROWN_NEURONS` neurons), "interval" (the fallback:
    too wide for dense rows, and not a map the patches pass, e.g. after overlapping max
    pooling) or, for "auto", "interval-cost" (CROWN's rows would pass `bounds.AUTO_BUDGET`).

        >>> crown_plan(model)  # LeNet-5: conv exact, conv patches, dense dense
    """
    check_choice("method", method, ("crown", "auto"))
    return bounds.crown_plan(chain_of(base_model(model)), method)


def _warn_fallback(operations: list) -> None:
    fallback = [name for name, route in bounds.crown_plan(operations) if route == "interval"]
    if fallback:
        warnings.warn(
            f"certify: CROWN takes interval bounds for layer(s) {', '.join(fallback)} (more "
            f"than {bounds.CROWN_NEURONS} neurons, and not a convolutional map that CROWN's "
            "patches pass: they follow a Dense, Flatten or overlapping pooling layer, or "
            "paths of different strides), so the radii are looser there; "
            "certify.crown_plan(model) shows every layer's route.",
            stacklevel=5)  # the caller of certify, certified_radius or lower_margins


_PROGRAMS: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


def bound_program(model: keras.Model, norm: str, method: str,
                  box: tuple[float | None, float | None], batch: int = 100
                  ) -> tuple[list, Callable]:
    """The model's chain of operations and its compiled bound program for one norm, method,
    box and batch size, built once per model and reused by every later call (the robustness
    callback's epochs, repeated certify calls): the chain reads the weights at each call, so a
    model trained between calls is bounded with its new weights. One program per batch size:
    the bounds are traced with static shapes."""
    key = (norm, method, box, batch, bounds.AUTO_BUDGET if method == "auto" else None)
    try:
        cache = _PROGRAMS.setdefault(model, {})
    except TypeError:  # not weak-referenceable: build without caching
        cache = {}
    if key not in cache:
        operations = chain_of(model)
        if method in ("crown", "auto"):
            _warn_fallback(operations)

        def fn(x0, labels, eps):
            return margin_bounds(operations, x0, labels, eps, norm, method, box)

        program = backend.compile_fn(fn, model, "auto") if method != "lipschitz" else fn
        cache[key] = (operations, program)
    return cache[key]


class _Certifier:
    """The checked inputs, the model's chain of operations and the compiled bound program."""

    def __init__(self, model: Callable, x: Any, y: Any, norm: str, method: str,
                 clip_min: float | None, clip_max: float | None, batch_size: int,
                 where: str) -> None:
        check_choice("norm", norm, NORMS)
        check_choice("method", method, METHODS)
        self.batch_size = check_integer("batch_size", batch_size)
        model = base_model(model)
        self.inputs = entry.check_inputs(model, x, y, clip_min, clip_max, where)
        self.norm, self.method = norm, method
        self.box = (self.inputs.clip_min, self.inputs.clip_max)
        size = min(self.batch_size, len(self.inputs.x))
        self.operations, self.program = bound_program(model, norm, method, self.box, size)
        check_chain(model, self.operations, self.inputs.x)
        steps = bounds.growing_steps(self.operations, self.inputs.x.shape[1:], size, method)
        if steps:  # before anything runs: a clear error, not an out-of-memory kill
            what, floats, layout = max(
                steps, key=lambda step: needed_bytes(step[1], np.float64, step[2]))
            check_fits(floats, np.float64, size, what, layout,
                       bounds.held_floats(self.operations, self.inputs.x.shape[1:], size))
        self.correct = entry.predictions(model, self.inputs.x, batch_size) == self.inputs.labels
        # The bounds are computed in float64 (the model's float32 weights are exact in it),
        # so the rounding allowance (`bounds.ROUNDING_SAFETY`) costs ~1e-11 of a margin.
        self.x64 = self.inputs.x.astype(np.float64)
        self._bar, self._done = None, 0

    def start_progress(self, title: str, passes: int, verbose: int) -> None:
        """A Keras progress bar over the batches of `passes` bound computations (0: none)."""
        self._done = 0
        if verbose:
            self._batches = -(-len(self.inputs.x) // min(self.batch_size, len(self.inputs.x)))
            self._bar = keras.utils.Progbar(passes * self._batches,
                                            unit_name=f"batch ({title})", verbose=verbose)

    def more_progress(self, passes: int) -> None:
        """The bar's total grows: the search needed `passes` more bound computations."""
        if self._bar is not None:
            self._bar.target += passes * self._batches

    def end_progress(self) -> None:
        if self._bar is not None:
            self._bar.target = max(self._done, 1)
            self._bar.update(self._bar.target, finalize=True)
            self._bar = None

    def lower_margins(self, eps: np.ndarray) -> np.ndarray:
        """Lower bounds of f_y - f_j (n, k) at per-point budgets `eps` (n,)."""
        x, labels = self.x64, self.inputs.labels
        size = min(self.batch_size, len(x))
        out = []
        for start in range(0, len(x), size):
            part = np.arange(start, start + size) % len(x)  # one shape: the last batch wraps
            with backend.float64():
                out.append(ops.convert_to_numpy(self.program(
                    ops.convert_to_tensor(x[part]), ops.convert_to_tensor(labels[part]),
                    ops.convert_to_tensor(eps[part].astype(x.dtype))))[:len(x) - start])
            if self._bar is not None:
                self._done += 1
                self._bar.update(min(self._done, self._bar.target - 1))
        return np.concatenate(out)

    def certified(self, eps: np.ndarray) -> np.ndarray:
        return self.correct & (self.lower_margins(eps).min(axis=1) > 0)


def _budgets(eps: Any, n: int) -> np.ndarray:
    """eps as (n,) finite numbers >= 0: one for all points or one per point."""
    values = np.asarray(eps, dtype=np.float64)
    if values.ndim == 0:
        check_non_negative("eps", float(values))
        return np.full(n, float(values))
    if values.shape != (n,) or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"Invalid value for argument eps: expected a number >= 0 or {n} "
                         f"finite numbers >= 0, one per point; received shape {values.shape}.")
    return values


def lower_margins(model: Callable, x: Any, y: Any, eps: Any = None, norm: str | None = None,
                  method: str = "auto", clip_min: float | None = None,
                  clip_max: float | None = None, batch_size: int = 100,
                  threat: ThreatModel | None = None) -> np.ndarray:
    """Proven lower bounds of f_y(x') - f_j(x') over ||x' - x||_p <= eps, per point and class j
    ((n, k); +inf at j = y). All > 0: the prediction cannot change within eps."""
    eps, norm, clip_min, clip_max = resolve(threat, eps, norm, clip_min, clip_max, budget=True)
    certifier = _Certifier(model, x, y, norm, method, clip_min, clip_max, batch_size,
                           "lower_margins")
    return certifier.lower_margins(_budgets(eps, len(certifier.inputs.x)))


def certify(model: Callable, x: Any, y: Any, eps: Any = None, norm: str | None = None,
            method: str = "auto", clip_min: float | None = None,
            clip_max: float | None = None, batch_size: int = 100,
            threat: ThreatModel | None = None) -> np.ndarray:
    """Per point, whether its prediction provably cannot change within the budget.

    Args:
        model: a Keras model of the supported layers (`SUPPORTED`) returning logits.
        x, y: inputs and their labels; a misclassified point is never certified.
        eps: the budget, one for all points or one per point, in the norm `norm`.
        norm: "linf" (default) or "l2" (the threat model's norm; for l2 the input box is not
            used, which keeps the bound sound and at most looser).
        method: "auto" (default), "crown", "crown-ibp", "ibp" or "lipschitz"; see the
            module doc.
        clip_min, clip_max: the input box (l_inf): perturbations stay inside it.
        batch_size: points bounded side by side.
        threat: a `ThreatModel(norm, eps, clip_min, clip_max)` instead of those four.

    Returns:
        bool (n,).

    Example:
        >>> certify(model, x_test[:100], y_test[:100], eps=0.01, norm="linf").mean()
        >>> certify(model, x_test, y_test, threat=ThreatModel("linf", 0.01, 0.0, 1.0))
    """
    eps, norm, clip_min, clip_max = resolve(threat, eps, norm, clip_min, clip_max, budget=True)
    certifier = _Certifier(model, x, y, norm, method, clip_min, clip_max, batch_size, "certify")
    return certifier.certified(_budgets(eps, len(certifier.inputs.x)))


def certified_radius(model: Callable, x: Any, y: Any, norm: str | None = None,
                     method: str = "auto", clip_min: float | None = None,
                     clip_max: float | None = None, batch_size: int = 100,
                     steps: int = 24, upper: Any = None, verbose: int = 0,
                     threat: ThreatModel | None = None) -> np.ndarray:
    """Per point, the largest budget at which `certify` holds: a proven lower bound on the
    smallest perturbation (in `norm`) that changes the prediction; 0 where misclassified.

    Found by bisection (`steps` halvings: relative precision 2^-steps of the start interval)
    from [0, `upper`] (per point, > 0; default: the largest distance the box allows for l_inf,
    else ||x||_2 + 1), the interval first doubled until its top is not certified. The bound is
    monotone in eps, so the bisection finds its largest certified eps; `lipschitz` has it in
    closed form. With a full input box (`clip_min` and `clip_max`) no budget reaches past the
    box's farthest point from x (in `norm`): a point certified there keeps its prediction on
    the whole box, and its radius is that distance. Without one, a point certified at every
    budget up to 2^64 times the start (a model constant in x) gets `inf`. `verbose` 1 shows a
    progress bar over the bound's batches (named, with the time left), 2 one line at the end.
    `norm` is "linf" by default; `threat=ThreatModel(norm, clip_min=..., clip_max=...)`
    (budget-free) may give the norm and the box instead.

    Returns:
        float (n,).
    """
    _, norm, clip_min, clip_max = resolve(threat, None, norm, clip_min, clip_max, budget=False)
    steps = check_integer("steps", steps)
    check_choice("verbose", verbose, (0, 1, 2))
    certifier = _Certifier(model, x, y, norm, method, clip_min, clip_max, batch_size,
                           "certified_radius")
    x_np = certifier.inputs.x
    n = len(x_np)
    if upper is not None:
        upper = _budgets(upper, n)
        if not (upper > 0).all():
            raise ValueError(f"Invalid value for argument upper: {upper[upper <= 0][:3]}... "
                             "Expected budgets > 0 (the bisection starts from [0, upper]).")
    if method == "lipschitz":
        return _lipschitz_radius(certifier)
    flat = np.abs(x_np.reshape(n, -1)).astype(np.float64)
    high = upper if upper is not None else (
        np.full(n, max(1.0, float(flat.max()))) if norm == "linf"
        else np.sqrt((flat ** 2).sum(axis=1)) + 1.0)
    low = np.zeros(n)
    active = certifier.correct.copy()
    limit = _box_limit(x_np, norm, *certifier.box)
    if limit is not None:
        high = np.minimum(high, limit)
    certifier.start_progress(f"certify {method} {norm}", steps + 1, verbose)
    for _ in range(64):  # double the top until it is not certified
        grow = active & certifier.certified(high)
        low[grow] = high[grow]
        if limit is not None:  # certified at the box's farthest point: the whole box is
            whole = grow & (high >= limit)
            active &= ~whole
            grow &= ~whole
        if not grow.any():
            break
        certifier.more_progress(1)
        high[grow] = high[grow] * 2 if limit is None else np.minimum(high[grow] * 2,
                                                                      limit[grow])
    else:
        unbounded = active & certifier.certified(high)
        low[unbounded], high[unbounded] = np.inf, np.inf
    for _ in range(steps):
        middle = (low + high) / 2
        ok = certifier.certified(np.where(np.isfinite(middle), middle, 0.0))
        low, high = np.where(ok, middle, low), np.where(ok, high, middle)
    certifier.end_progress()
    return np.where(certifier.correct, low, 0.0)


def _box_limit(x: np.ndarray, norm: str, clip_min: float | None,
               clip_max: float | None) -> np.ndarray | None:
    """Per point, the distance (in `norm`) from x to the farthest point of the input box: no
    budget reaches further. None without a full box."""
    if clip_min is None or clip_max is None:
        return None
    flat = x.reshape(len(x), -1).astype(np.float64)
    reach = np.maximum(flat - clip_min, clip_max - flat)
    return reach.max(axis=1) if norm == "linf" else np.sqrt((reach ** 2).sum(axis=1))


def _lipschitz_radius(certifier: _Certifier) -> np.ndarray:
    """margin / L in closed form: the bound is margin - eps * L."""
    n = len(certifier.inputs.x)
    at_zero = certifier.lower_margins(np.zeros(n))
    at_one = certifier.lower_margins(np.ones(n))
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = at_zero - at_one
        radius = np.where(np.isfinite(at_zero), at_zero / slope, np.inf)
    radius = radius.min(axis=1)
    # margin - eps L is linear in eps; the quotient is rounded to nearest, so one float64
    # step toward 0 keeps it at or below the bound's zero.
    radius = np.nextafter(np.maximum(radius, 0.0), 0.0)
    return np.where(certifier.correct & np.isfinite(radius), radius, 0.0)


