"""CertifiedTrainingModel: certified (verified) training on the proven lower margins, IBP
(Gowal et al., 2018) and CROWN-IBP (Zhang et al., 2020)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_margin._validation import (
    check_box_pair,
    check_choice,
    check_integer,
    check_non_negative,
    check_positive,
)
from keras_margin.jacobian import call_logits
from keras_margin.propagation.margins import (
    TRAINING_METHODS,
    lipschitz_margins,
    power_iterated,
    training_margins,
)
from keras_margin.propagation.network import chain, check_chain
from keras_margin.threat import ThreatModel
from keras_margin.training.base import RobustModel, budget_and_box


@keras.saving.register_keras_serializable(package="keras_margin")
class CertifiedTrainingModel(RobustModel):
    """Certified training: the network is trained on the proven lower bounds m_j of its margins
    f_y(x') - f_j(x') over the ball of radius eps, so that `certify` can prove them afterwards.

    Minimises kappa * L(f(x), y) + (1 - kappa) * L(-m(x), y), the second term (the "robust
    loss") the data loss on the negated lower margins (`certify.training`), with eps, kappa and
    beta on a schedule of training steps: eps is 0 until step `ramp[0]`, then rises linearly
    to its value at step `ramp[1]`; kappa and beta go linearly from their first value to their
    second over the same steps. The defaults are CROWN-IBP's (Zhang et al.): beta 1 -> 0 and
    kappa 1 -> 0 (auto_LiRPA's MNIST example trains on the robust loss alone once eps > 0);
    Gowal et al.'s IBP uses method="ibp" and kappa=(1, 0.5).

    Args:
        base: a Keras model that outputs k >= 2 logits, a graph of the layers `certify`
            bounds (refused when the trainer is built, naming the first other layer).
        eps: the training budget, > 0 (reached at step ramp[1]).
        norm: "linf" (the default) or "l2".
        method: "crown-ibp" (the default), "ibp", or "lipschitz" (a global Lipschitz margin,
            as GloRo nets train it: l2 norms by one power-iteration step per training step
            from vectors kept with the weights).
        ramp: (start, end) training steps of the eps ramp, integers with 0 <= start <= end
            (start == end: eps jumps to its value at step start). A step is one batch:
            for epochs a to b, (a * steps_per_epoch, b * steps_per_epoch).
        kappa: (first, last) weight of the clean loss over the ramp, each in [0, 1].
        beta: (first, last) weight of CROWN-IBP's bound in the mix with IBP's, each in
            [0, 1] (method="crown-ibp" only).
        loss: the data loss, also applied to -m: "crossentropy" (the default) or "hinge".
        clip: optional (min, max) input box, min < max: the l_inf ball is cut to it (a
            tighter bound); the training inputs must lie in it (checked at `fit`).
        threat: eps, norm and clip as one `ThreatModel(norm, eps, clip_min, clip_max)`
            instead of eps=, norm= and clip= (not both); `.threat` gives it back.

    `fit` reports `loss`, `data_loss` (clean), `robust_loss`, `eps` (the scheduled budget,
    averaged over the epoch's steps) and `certified_accuracy`: the share of the batch whose
    training bounds are all positive at that eps (without `certify`'s rounding allowance;
    measure the published number with `certify`). The schedule's step counter is saved with
    the weights, so a loaded model resumes the schedule.

    Example:
        >>> base = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
        ...                          keras.layers.Dense(100, activation="relu"),
        ...                          keras.layers.Dense(10)])
        >>> model = CertifiedTrainingModel(base, threat=ThreatModel("linf", 0.1, 0.0, 1.0),
        ...                                ramp=(600, 6000))  # epochs 2-10 of 600 steps
        >>> model.compile(optimizer="adam", metrics=["accuracy"])
        >>> model.fit(x, y, batch_size=100, epochs=20)
    """

    extra_name = "robust_loss"

    def __init__(self, base: keras.Model, eps: float | None = None, norm: str | None = None,
                 method: str = "crown-ibp", ramp: tuple[int, int] = (0, 0),
                 kappa: tuple[float, float] = (1.0, 0.0), beta: tuple[float, float] = (1.0, 0.0),
                 loss: Any = "crossentropy", clip: tuple[float, float] | None = None,
                 threat: ThreatModel | None = None, **kwargs: Any) -> None:
        eps, norm, clip = budget_and_box(threat, eps, norm, clip,
                                         "certified training cuts the ball to")
        if eps is None:
            raise ValueError("Invalid value for argument eps: None. Expected the training "
                             "budget, a number > 0 (or threat=ThreatModel(norm, eps, ...)).")
        eps = check_positive("eps", eps, resolved=True)
        norm = "linf" if norm is None else norm
        check_choice("norm", norm, ("linf", "l2"))
        check_choice("method", method, TRAINING_METHODS)
        ramp = _pair("ramp", ramp, integers=True)
        if ramp[1] < ramp[0]:
            raise ValueError(f"Invalid value for argument ramp: {ramp!r}. The eps ramp ends "
                             "before it starts: expected (start, end) steps with start <= end.")
        kappa, beta = _pair("kappa", kappa), _pair("beta", beta)
        self.clip = None if clip is None else check_box_pair("clip", clip)
        super().__init__(base, loss=loss, **kwargs)
        self.eps, self.norm, self.method = eps, norm, method
        self.ramp, self.kappa, self.beta = ramp, kappa, beta
        self.operations = _chain_if_built(base)
        # The schedule's clock: one tick per training step, part of the model's state (the
        # compiled steps of every backend carry it; saved with the weights).
        self.schedule_step = self.add_weight(name="schedule_step", shape=(), dtype="float32",
                                             initializer="zeros", trainable=False)
        self.eps_tracker = keras.metrics.Mean(name="eps")
        self.certified_tracker = keras.metrics.Mean(name="certified_accuracy")

    @property
    def threat(self) -> ThreatModel:
        """The threat model it trains against: `ThreatModel(norm, eps, *clip)`."""
        return ThreatModel(self.norm, self.eps, *(self.clip or (None, None)))

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        if self.num_outputs < 2:
            raise ValueError("CertifiedTrainingModel needs a base with k >= 2 logits (the "
                             "margins f_y - f_j); this base has one. Give it two logits.")
        if self.operations is None:
            self.operations = tuple(chain(self.base))
        self.power_vectors = []
        if self.method == "lipschitz" and self.norm == "l2":
            seed = np.random.default_rng(0)
            for i in power_iterated(self.operations):
                shape = (1,) + tuple(self.operations[i].in_shape)
                start = seed.normal(size=shape)
                self.power_vectors.append(self.add_weight(
                    name=f"power_vector_{i}", shape=shape, trainable=False,
                    initializer=keras.initializers.Constant(start / np.linalg.norm(start))))

    # -- the schedule ---------------------------------------------------------------------------
    def progress(self) -> Any:
        """Where the ramp stands at the current step: 0 before ramp[0], 1 from ramp[1]."""
        start, end = self.ramp
        step = ops.convert_to_tensor(self.schedule_step)
        if end == start:
            return ops.cast(step >= start, "float32")
        return ops.clip((step - start) / (end - start), 0.0, 1.0)

    def schedule(self) -> dict[str, Any]:
        """The current step's eps, kappa and beta (tensors)."""
        t = self.progress()
        return {"eps": self.eps * t,
                "kappa": self.kappa[0] + (self.kappa[1] - self.kappa[0]) * t,
                "beta": self.beta[0] + (self.beta[1] - self.beta[0]) * t}

    @property
    def data_weight(self) -> Any:  # type: ignore[override]
        return self.schedule()["kappa"]

    @property
    def extra_weight(self) -> Any:  # type: ignore[override]
        return 1.0 - self.data_weight

    # -- the objective --------------------------------------------------------------------------
    def robust_margins(self, x: Any, labels: Any, values: dict | None = None) -> Any:
        """The training bounds m (batch, k) at the current step's eps and beta (`values`, the
        step's `schedule()` where the caller has it)."""
        values = values or self.schedule()
        return training_margins(self.operations, x, labels, values["eps"], self.norm,
                                self.method, self.clip or (None, None), values["beta"])

    def logits_and_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, Any, dict]:
        logits = call_logits(self.base, x, training=training)
        values = self.schedule()
        eps = values["eps"]
        if self.method == "lipschitz":  # cheap at any eps; its vectors move on every step
            margins, vectors = lipschitz_margins(self.operations, logits, labels, eps,
                                                 self.norm, list(self.power_vectors))
            if training:
                for variable, value in zip(self.power_vectors, vectors):
                    variable.assign(ops.cast(value, variable.dtype))
        else:
            # eps 0 (before the ramp): the ball is the point and its margins are the logits'
            # (auto_LiRPA's example trains on the clean loss then); no bound pass is needed.
            margins = ops.cond(eps > 0, lambda: self.robust_margins(x, labels, values),
                               lambda: ops.cast(_logit_margins(logits, labels), x.dtype))
        if training:
            self.schedule_step.assign(self.schedule_step + 1.0)
        robust = self.data_loss(labels, -margins)
        own = ops.one_hot(labels, self.num_outputs) > 0
        rivals = ops.where(own, ops.full_like(margins, np.inf), margins)
        certified = ops.mean(ops.cast(ops.min(rivals, axis=-1) > 0, "float32"))
        return logits, robust, {"eps": eps, "certified_accuracy": certified}

    def aux_trackers(self) -> dict[str, keras.metrics.Metric]:
        return {"eps": self.eps_tracker, "certified_accuracy": self.certified_tracker}

    def _check_arrays(self, x: Any, y: Any, where: str) -> None:
        super()._check_arrays(x, y, where)
        if isinstance(x, np.ndarray):
            check_chain(self.base, self.operations, x.astype(keras.backend.floatx()))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "eps": self.eps, "norm": self.norm,
                "method": self.method, "ramp": self.ramp, "kappa": self.kappa,
                "beta": self.beta, "clip": self.clip}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CertifiedTrainingModel:
        config = dict(config)
        for name in ("ramp", "kappa", "beta", "clip"):
            if isinstance(config.get(name), list):
                config[name] = tuple(config[name])
        return super().from_config(config)


def _logit_margins(logits: Any, labels: Any) -> Any:
    """f_y - f_j of the logits themselves, (batch, k); 0 at j = y."""
    own = ops.sum(logits * ops.one_hot(labels, logits.shape[-1], dtype=logits.dtype), axis=-1)
    return own[:, None] - logits


def _pair(name: str, value: Any, integers: bool = False) -> tuple:
    """(first, last): two integers >= 0 (`integers`) or two numbers in [0, 1]."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        what = "two integer steps (start, end)" if integers else "two numbers (first, last)"
        raise ValueError(f"Invalid value for argument {name}: {value!r}. Expected {what}.")
    if integers:
        return tuple(check_integer(f"{name}[{i}]", v, minimum=0) for i, v in enumerate(value))
    return tuple(check_non_negative(f"{name}[{i}]", v, maximum=1) for i, v in enumerate(value))


def _chain_if_built(base: keras.Model) -> list | None:
    """The base's chain of operations where its input is known, refusing an unsupported layer
    by name at once; None for a base built later (chained at `build`)."""
    try:
        base.input_shape  # noqa: B018 - raises for a model with no defined input
    except (AttributeError, ValueError):
        return None
    return tuple(chain(base))
