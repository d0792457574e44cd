"""What every attack shares: the two interfaces, the result, the entry checks, the verification.

An attack is a frozen dataclass of its hyper-parameters (defaults from the paper that introduced
it), of one of two kinds, as Foolbox separates them: a `MinimumNormAttack` looks for the
smallest perturbation that flips each prediction (`attack(model, x, y)`), a `BudgetAttack` for
any perturbation within a budget eps (`attack(model, x, y, eps=eps)`). Both are called through
one final `Attack.__call__` with keyword-only options (the budget and box as eps, clip_min,
clip_max or one `ThreatModel`), check their arguments once at that entry (the compiled loops
trust their inputs), run in lanes (`lanes.py`), verify
every reported success by a fresh forward pass on x + perturbation, keep the perturbation inside
the input box, and save and load as JSON (`to_dict` / `from_dict`). A function of the same name
(`attacks.fmn(model, x, y, ...)`) builds and calls each.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from keras_margin._validation import (
    check_box,
    check_choice,
    check_integer,
    check_positive,
)
from keras_margin.attacks.lanes import Kernel, LaneRunner
from keras_margin.gradient_steps import project_box  # noqa: F401 - the attacks' box
from keras_margin.inputs import (  # noqa: F401 - the attacks' entry, shared with certify
    Inputs,
    check_inputs,
    logits_of,
    lp_norms,
    predictions,
    working_dtype,
)
from keras_margin.threat import NORMS, ThreatModel, resolve

THREAT_NORMS = NORMS  # the norms a threat model (and FMN) knows: one list, threat.py's
DEFAULT_LANES = 256
EXECUTION = ("batch_size", "jit_compile", "verbose")


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """What an attack found, per sample (numpy arrays).

    Attributes:
        perturbation: same shape as x; x + perturbation lies in the input box. For a failed
            sample, the attack's last (non-adversarial) perturbation for DeepFool, zeros for the
            others.
        success: bool (n,): x + perturbation is misclassified (for a targeted attack:
            classified as the target), verified by a fresh forward pass.
        iterations: int32 (n,): iterations the sample took.
        stuck: bool (n,): the sample's input gradient was zero where the attack needed it (a
            flat or saturated model: the attack could not move).
    """

    perturbation: np.ndarray
    success: np.ndarray
    iterations: np.ndarray
    stuck: np.ndarray

    def distances(self, norm: str = "l2") -> np.ndarray:
        """||perturbation|| per sample in `norm` ("l2", "linf" or "l1"); inf where failed."""
        d = lp_norms(self.perturbation, norm)
        return np.where(self.success, d, np.inf)


# A success is a strict flip: the best rival logit above the label's by more than this many
# units of the logits' float type's epsilon, times their scale (max(1, max_j |f_j|)). A float32
# forward pass of an MNIST MLP is within 6e-7 of float64 relative to that scale
# (tests/test_attacks.py): 256 eps (3e-5 in float32) leaves 50 times that, so a reported
# adversarial stays one when the model is re-evaluated in float64, and a tie never counts.
STRICT_FLIP_EPS = 256


def flip_margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """max_{j != y} f_j - f_y per row (> 0: misclassified), in float64."""
    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(logits))
    own = logits[rows, labels]
    rivals = logits.copy()
    rivals[rows, labels] = -np.inf
    return rivals.max(axis=1) - own


def flip_tolerance(model: Callable, logits: np.ndarray) -> np.ndarray:
    """The margin a strict flip must exceed, per row: `STRICT_FLIP_EPS` units of the coarser
    of the logits' and the model's compute float type, times the logits' scale."""
    eps = float(np.finfo(logits.dtype if logits.dtype.kind == "f" else np.float32).eps)
    policy = getattr(getattr(model, "dtype_policy", None), "compute_dtype", None)
    if policy in ("float16", "bfloat16", "float32"):
        eps = max(eps, {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7,
                        "float32": 2.0 ** -23}[policy])
    scale = np.maximum(1.0, np.abs(np.asarray(logits, np.float64)).max(axis=1))
    return STRICT_FLIP_EPS * eps * scale


def flip_state(model: Callable, x: np.ndarray, labels: np.ndarray,
               batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(margin max_{j != y} f_j - f_y, the tolerance a strict flip must exceed) per point,
    from a fresh forward pass in batches."""
    margins, tolerances = [], []
    for start in range(0, len(x), batch_size):
        logits = logits_of(model, x[start:start + batch_size])
        margins.append(flip_margins(logits, labels[start:start + batch_size]))
        tolerances.append(flip_tolerance(model, logits))
    return np.concatenate(margins), np.concatenate(tolerances)


def strict_flips(model: Callable, x: np.ndarray, labels: np.ndarray,
                 batch_size: int) -> np.ndarray:
    """bool (n,): where a fresh forward pass on x misclassifies by more than the tolerance
    (`STRICT_FLIP_EPS`): a tie, or a margin within rounding of one, is no flip."""
    margin, tolerance = flip_state(model, x, labels, batch_size)
    return margin > tolerance


def verify(model: Callable, inputs: Inputs, perturbation: np.ndarray,
           lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(perturbation inside the box, success) from a fresh forward pass on x + perturbation:
    success where it is a strict flip (`strict_flips`). A non-finite perturbation never
    counts."""
    perturbation = perturbation.astype(inputs.x.dtype)
    x_adv = inputs.x + perturbation
    if inputs.clip_min is not None or inputs.clip_max is not None:
        x_adv = np.clip(x_adv, *inputs.box)
        perturbation = x_adv - inputs.x
    finite = np.isfinite(perturbation.reshape(len(x_adv), -1)).all(axis=1)
    return perturbation, strict_flips(model, x_adv, inputs.labels, lanes) & finite


# Past the boundary: the secant step aims the margin at this many tolerances; then, where the
# margin is not linear enough along the delta for it, these lengthenings in turn.
SECANT_TARGET = 1.25
LENGTHEN = (1 + 1e-5, 1 + 1e-4, 1 + 1e-3, 1.01, 1.03, 1.1, 1.3, 2.0)


def verify_minimum_norm(model: Callable, inputs: Inputs, delta: np.ndarray, found: np.ndarray,
                        lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """`verify` for a minimum-norm attack's best deltas, zeros where none is adversarial.

    A minimum-norm attack ends on the decision boundary, where the margin is a tie within
    rounding. Where the fresh pass does not confirm the attack's adversarial as a strict flip,
    the delta is lengthened just past the boundary: by the secant of the margin between x and
    x + delta, aimed at 1.25 tolerances, then by 1e-5, 1e-4, ... up to 2x in turn (`LENGTHEN`);
    the first that verifies is kept, and the distance reported is that point's.
    """
    perturbation, success = verify(model, inputs, delta, lanes)

    def lengthen(factor_of: Callable[[Inputs, np.ndarray], Any]) -> None:
        """Verifies the found but unconfirmed points again with their delta times
        `factor_of(those points' inputs, their deltas)`; keeps what now verifies."""
        retry = found & ~success
        if not retry.any():
            return
        subset = dataclasses.replace(inputs, x=inputs.x[retry], labels=inputs.labels[retry])
        longer, ok = verify(model, subset, delta[retry] * factor_of(subset, delta[retry]),
                            lanes)
        idx = np.flatnonzero(retry)[ok]
        perturbation[idx], success[idx] = longer[ok], True

    def secant(subset: Inputs, part: np.ndarray) -> np.ndarray:
        at_x, _ = flip_state(model, subset.x, subset.labels, lanes)
        at_delta, tolerance = flip_state(model, np.clip(subset.x + part, *inputs.box),
                                         subset.labels, lanes)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = (SECANT_TARGET * tolerance - at_delta) / (at_delta - at_x)
        step = np.where(np.isfinite(step) & (step > 0), np.minimum(step, 1.0), 1.0)
        return per_sample_mask(1 + step, part)

    lengthen(secant)
    for factor in LENGTHEN:
        lengthen(lambda subset, part, factor=factor: factor)
    perturbation = np.where(per_sample_mask(success, perturbation), perturbation, 0)
    return perturbation.astype(inputs.x.dtype), success


def per_sample_mask(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A (n,) numpy mask shaped (n, 1, ..., 1) to broadcast against `like`."""
    return np.reshape(mask, (-1,) + (1,) * (like.ndim - 1))


def call_in_chunks(program: Callable, lanes: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """`program(*arrays)` as numpy arrays, over chunks of at most `lanes` rows. Each chunk is
    padded (repeating its last row) to the next power of two, at least 8 and at most `lanes`:
    few rows left cost little, and at most log2(lanes) shapes are traced."""
    parts = []
    for start in range(0, len(arrays[0]), lanes):
        chunk = [a[start:start + lanes] for a in arrays]
        rows = len(chunk[0])
        size = min(lanes, max(8, 1 << (rows - 1).bit_length()))
        if rows < size:
            chunk = [np.concatenate([a, np.repeat(a[-1:], size - rows, axis=0)]) for a in chunk]
        out = program(*[ops.convert_to_tensor(a) for a in chunk])
        out = out if isinstance(out, (tuple, list)) else (out,)
        parts.append([ops.convert_to_numpy(o)[:rows] for o in out])
    return tuple(np.concatenate(column) for column in zip(*parts))


def logits_in_chunks(program: Callable, x: np.ndarray, lanes: int) -> np.ndarray:
    """The logits of x from a compiled logits `program`, by `call_in_chunks`."""
    return call_in_chunks(program, lanes, x)[0]


def compiled_flips(program: Callable, model: Callable, x: np.ndarray, labels: np.ndarray,
                   lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(margin max_{j != y} f_j - f_y, strict flip) per point, from a compiled logits
    `program` of `model` (`flip_state` and `strict_flips` without recompiling)."""
    logits = logits_in_chunks(program, x, lanes)
    margin = flip_margins(logits, labels)
    return margin, margin > flip_tolerance(model, logits)


_RUNNERS: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


def lane_runner(model: Callable, config: Any, make_kernel: Callable[[], Kernel],
                round_steps: int, jit_compile: bool | str) -> LaneRunner:
    """The compiled programs of one attack configuration on one model, built once and reused
    (keyed by the frozen config), so repeated calls neither retrace nor recompile."""
    key = (config, round_steps, jit_compile)
    try:
        cache = _RUNNERS.setdefault(model, {})
    except TypeError:  # not weak-referenceable: build without caching
        cache = {}
    if key not in cache:
        cache[key] = LaneRunner(make_kernel(), model, round_steps, jit_compile)
    return cache[key]


def check_execution(jit_compile: Any, verbose: Any) -> None:
    """`jit_compile` in {"auto", True, False}; `verbose` in {0, 1, 2}."""
    check_choice("jit_compile", jit_compile, ("auto", True, False))
    check_choice("verbose", verbose, (0, 1, 2))


def check_lanes(batch_size: int | None, n: int) -> int:
    """The number of lanes (samples attacked side by side) for `n` samples: `batch_size`
    (None: the default 256), at most n.

    Fixed at the public entry from the whole input, never from a subset of it, so one call's
    programs have one shape whatever the subset (the points still correct at an epoch); a
    TensorFlow function traced for a second shape generalises it and may round differently.
    """
    lanes = DEFAULT_LANES if batch_size is None else check_integer("batch_size", batch_size)
    return max(1, min(lanes, n))


def progress_bar(total: int, verbose: int, title: str) -> Callable[[int], None] | None:
    """A Keras progress bar over samples that names what runs (`title`, e.g. "fmn_l2"), or
    None when quiet."""
    if not verbose:
        return None
    bar = keras.utils.Progbar(total, unit_name=f"point ({title})", verbose=verbose)
    return lambda done: bar.update(min(done, total))


PACKAGE = "keras_margin"  # the attacks' names in Keras's serialization registry


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: registers the attack with Keras (`register_keras_serializable`, as
    "keras_margin>DeepFool"), so `Attack.from_dict` and `keras.saving.deserialize_keras_object`
    find it by name."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def attack_class(name: str) -> type[Attack]:
    """The registered attack class called `name` ("DeepFool", ...)."""
    cls = keras.saving.get_registered_object(f"{PACKAGE}>{name}")
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        known = sorted(key.split(">", 1)[1] for key, value
                       in keras.saving.get_custom_objects().items()
                       if key.startswith(PACKAGE + ">") and isinstance(value, type)
                       and issubclass(value, Attack))
        raise ValueError(f"Unknown attack class {name!r}. Expected one of {known}.")
    return cls


class Attack:
    """An attack's settings (a frozen dataclass in each subclass): its `name`, its threat
    model's `norm`, `get_config` / `from_config` and `to_dict` / `from_dict` (JSON).

    Every attack is called alike, through this class's `__call__` (final: a subclass that
    defines its own is refused), with keyword-only options; a subclass implements `attack`.
    """

    kind: ClassVar[str] = "attack"
    # The options before keyword-only ones (deprecated), in their old positional order.
    positional: ClassVar[tuple[str, ...]] = ("clip_min", "clip_max") + EXECUTION
    # Call options of this attack beyond the threat model and the execution ones: defaults.
    options: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in vars(cls):
            raise TypeError(f"{cls.__name__} defines __call__; an attack implements `attack` and "
                            "is called through Attack.__call__ (one interface for all).")

    @property
    def name(self) -> str:
        """A short identifier, e.g. "fmn_linf" (the key of its numbers in reports)."""
        raise NotImplementedError

    @typing.final
    def __call__(self, model: Callable, x: Any, y: Any = None, *args: Any,
                 eps: float | None = None, threat: ThreatModel | None = None,
                 clip_min: float | None = None, clip_max: float | None = None,
                 batch_size: int | None = None, jit_compile: bool | str = "auto",
                 verbose: int = 0, **options: Any) -> AttackResult:
        """The attack on `x` with labels `y`.

        Args:
            model: a Keras model or callable returning logits (batch, k).
            x, y: the inputs and their integer labels (DeepFool with target="prediction"
                needs no y).
            eps: the budget in the attack's norm (a budget attack needs one; FAB reads it as
                "success only within eps"; the other minimum-norm attacks take none).
            threat: a `ThreatModel` instead of eps, clip_min and clip_max (its norm must be
                the attack's).
            clip_min, clip_max: the input box; x must lie in it.
            batch_size: samples attacked side by side (default 256); jit_compile, verbose:
                compilation ("auto", True, False) and a progress bar (0, 1, 2).
            **options: this attack's own (`type(attack).options`, e.g. DeepFool's target);
                any other keyword is refused.
        """
        given = dict(eps=eps, clip_min=clip_min, clip_max=clip_max, batch_size=batch_size,
                     jit_compile=jit_compile, verbose=verbose)
        defaults = _call_defaults()
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"{type(self).__name__}(...)(model, x, y, ...) got unexpected "
                            f"keyword arguments {unknown}; it takes eps, threat, clip_min, "
                            f"clip_max, {', '.join(EXECUTION)}"
                            + "".join(f", {o}" for o in self.options) + ".")
        explicit = set(options)
        options = {**self.options, **options}
        if args:
            names = self.positional
            if len(args) > len(names):
                raise TypeError(f"{type(self).__name__}(...)(model, x, y, ...) takes at most "
                                f"{len(names)} options by position (deprecated); got "
                                f"{len(args)}.")
            for name, value in zip(names, args):
                store = options if name in self.options else given
                if name in explicit or (name in given and given[name] != defaults[name]):
                    raise TypeError(f"{type(self).__name__}(...)(model, x, y, ...) got "
                                    f"multiple values for argument {name!r}.")
                store[name] = value
            warnings.warn(f"Passing {', '.join(names[:len(args)])} by position to an attack is "
                          f"deprecated; pass {names[0]}=... and the rest by keyword.",
                          DeprecationWarning, stacklevel=2)
        check_execution(given["jit_compile"], given["verbose"])
        resolved = resolve_threat(self, threat, given["eps"], given["clip_min"],
                                  given["clip_max"])
        return self.attack(model, x, y, resolved, given["batch_size"], given["jit_compile"],
                           given["verbose"], **options)

    def attack(self, model: Callable, x: Any, y: Any, threat: ThreatModel,
               batch_size: int | None, jit_compile: bool | str, verbose: int,
               **options: Any) -> AttackResult:
        """The attack under `threat` (checked against the attack's norm); what `__call__`
        runs once it has resolved its arguments."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The hyper-parameters, nested attacks as their `to_dict()`."""
        return {f.name: _serialize(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Attack:
        return cls(**{key: _deserialize(value) for key, value in config.items()})

    def to_dict(self) -> dict[str, Any]:
        """{"class_name": ..., "config": ...}, JSON-ready; `Attack.from_dict` inverts it."""
        return {"class_name": type(self).__name__, "config": self.get_config()}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Attack:
        return attack_class(data["class_name"]).from_config(data["config"])


def resolve_threat(attack: Attack, threat: Any, eps: float | None, clip_min: float | None,
                   clip_max: float | None) -> ThreatModel:
    """The call's threat model (`threat.resolve`, the attack's norm fixed), its budget and box
    checked as every attack argument is."""
    if threat is None:
        check_box(clip_min, clip_max)  # named errors before ThreatModel's
        if eps is not None:
            eps = check_positive("eps", eps, resolved=True)
    eps, norm, clip_min, clip_max = resolve(threat, eps, None, clip_min, clip_max,
                                            owner=(attack.name, attack.norm))
    if threat is not None and eps is not None:
        check_positive("threat.eps", eps, resolved=True)
    return ThreatModel(norm, eps, clip_min, clip_max)


def _serialize(value: Any) -> Any:
    if isinstance(value, Attack):
        return value.to_dict()
    return list(value) if isinstance(value, tuple) else value


def _deserialize(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"class_name", "config"}:
        return Attack.from_dict(value)
    return value


class MinimumNormAttack(Attack):
    """Finds, per sample, the smallest perturbation (in the threat `norm`) that flips the
    prediction; `success` is False where none was found. Subclasses implement `run`."""

    kind: ClassVar[str] = "minimum_norm"

    def attack(self, model: Callable, x: Any, y: Any, threat: ThreatModel,
               batch_size: int | None, jit_compile: bool | str, verbose: int,
               **options: Any) -> AttackResult:
        self.refuse_budget(threat)
        inputs = check_inputs(model, x, y, threat.clip_min, threat.clip_max, self.name)
        return self.run(model, inputs, check_lanes(batch_size, len(inputs.x)), jit_compile,
                        verbose)

    def refuse_budget(self, threat: ThreatModel) -> None:
        """A minimum-norm attack answers no budget (FAB's `eps` mode aside)."""
        if threat.eps is not None:
            raise ValueError(f"Invalid value for argument eps: {threat.eps!r}. {self.name} is a "
                             "minimum-norm attack and takes no budget: call it without eps and "
                             "compare result.distances(norm) with your budget.")

    def run(self, model: Callable, inputs: Inputs, lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0,
            init_result: AttackResult | None = None) -> AttackResult:
        """The attack on inputs already checked (`check_inputs`); `init_result`, where an
        attack starts from another's result, is that result if already at hand."""
        raise NotImplementedError

    def run_kernel(self, model: Callable, inputs: Inputs, lanes: int,
                   make_kernel: Callable[[str], Kernel], outputs: tuple[str, ...],
                   load: Callable[[dict], dict], round_steps: int, jit_compile: bool | str,
                   verbose: int) -> dict[str, np.ndarray]:
        """`make_kernel(dtype)`'s steps over every sample in `lanes` lanes (programs compiled
        once per model and setting), with this attack's progress bar; `outputs` per sample."""
        dtype = str(inputs.x.dtype)
        runner = lane_runner(model, (self, inputs.clip_min, inputs.clip_max, dtype,
                                     inputs.num_classes),
                             lambda: make_kernel(dtype), round_steps, jit_compile)
        return runner.run({"index": np.arange(len(inputs.x))}, lanes, outputs, load=load,
                          progress=progress_bar(len(inputs.x), verbose, self.name))


class BudgetAttack(Attack):
    """Finds, per sample, a perturbation of norm at most `eps` (in the threat `norm`) that
    flips the prediction; `success` is False where none was found. Subclasses implement
    `run` for several budgets at once."""

    kind: ClassVar[str] = "budget"

    positional: ClassVar[tuple[str, ...]] = ("eps", "clip_min", "clip_max") + EXECUTION

    def attack(self, model: Callable, x: Any, y: Any, threat: ThreatModel,
               batch_size: int | None, jit_compile: bool | str, verbose: int,
               **options: Any) -> AttackResult:
        if threat.eps is None:
            raise ValueError(f"{self.name} is a budget attack: pass eps=... (or threat="
                             f"ThreatModel({self.norm!r}, eps)).")
        inputs = check_inputs(model, x, y, threat.clip_min, threat.clip_max, self.name,
                              min_classes=self.min_classes)
        return self.run(model, inputs, [threat.eps], check_lanes(batch_size, len(inputs.x)),
                        jit_compile, verbose)[threat.eps]

    min_classes: ClassVar[int] = 2

    def run(self, model: Callable, inputs: Inputs, budgets: Sequence[float], lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0) -> dict[float, AttackResult]:
        """One result per budget, on inputs already checked (`check_inputs`)."""
        raise NotImplementedError


@functools.cache
def _call_defaults() -> dict[str, Any]:
    """`Attack.__call__`'s keyword defaults, read from its signature (one source of truth)."""
    return {name: p.default for name, p in inspect.signature(Attack.__call__).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}
