"""Keras trainers: MarginModel (eq. 18) and the paper's baselines on one base class.

Each trainer wraps a base model that outputs logits and minimises

    data_weight * L(f(x), y) + extra_weight * mean_b extra(x_b, y_b) + regularisation losses,

where `extra` is the trainer's own term (margin sensitivity, adversarial loss, VAT's KL). The
whole objective is scaled by 1 / replicas like Keras scales compiled losses, so the gradients
that tf.distribute sums over replicas equal the single-device ones.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_margin import losses as losses_module
from keras_margin._validation import (
    as_float_inputs,
    check_choice,
    check_finite_inputs,
    check_label_array,
    check_logits_model,
    check_non_negative,
    sparse_labels,
)
from keras_margin.jacobian import call_logits, flat_norm, input_gradient
from keras_margin.sensitivity import NORMS, RIVALS, check_candidates, logits_and_sensitivity


def scale_for_replicas(value: tf.Tensor) -> tf.Tensor:
    """Divides by the replicas in sync, as Keras does for compiled losses under tf.distribute."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / replicas if replicas > 1 else value


def epoch_decay(learning_rate: float, steps_per_epoch: int,
                rate: float = 0.95) -> keras.optimizers.schedules.LearningRateSchedule:
    """The paper's schedule: the learning rate times `rate` after every epoch (Adam, 1e-3)."""
    return keras.optimizers.schedules.ExponentialDecay(learning_rate, steps_per_epoch, rate,
                                                       staircase=True)


def _multi_worker_logs(logs: dict[str, Any]) -> dict[str, Any]:
    """Scalars as shape (1,) under multi-worker MultiWorkerMirroredStrategy.

    Keras 3 reduces each returned log across workers with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on scalars (keras-team/keras#20585); a (1,) tensor reduces to the scalar mean.
    """
    strategy = tf.distribute.get_strategy()
    if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()):
        return logs
    return {key: tf.reshape(value, [1]) for key, value in logs.items()}


class RobustModel(keras.Model):
    """Base class of the trainers: a base model that outputs logits plus one extra loss term.

    Subclasses implement `forward(x, y, training) -> (logits, extra)` with `extra` per sample,
    set `extra_name`, and list their hyper-parameters in `get_config`.
    """

    extra_name = "extra_loss"
    data_weight = 1.0
    extra_weight = 1.0

    def __init__(self, base: keras.Model, loss: Any = "crossentropy", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not callable(base):
            raise ValueError(f"base must be a Keras model that outputs logits; received {base!r}.")
        check_logits_model(base)
        losses_module.get(loss, 2)  # fail early on an unknown loss name
        self.base = base
        self.loss_spec = loss
        self.data_loss_tracker = keras.metrics.Mean(name="data_loss")
        self.extra_tracker = keras.metrics.Mean(name=self.extra_name)

    # -- Keras plumbing -------------------------------------------------------------------------
    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        return self.base(inputs, training=training)

    def build(self, input_shape: Any) -> None:
        if not self.base.built:
            self.base.build(input_shape)
        self.built = True

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, **kwargs: Any) -> None:
        """Like `keras.Model.compile`; the data loss is the constructor's `loss` argument."""
        if loss is not None:
            raise ValueError(
                f"{type(self).__name__} takes its data loss in the constructor "
                f"({type(self).__name__}(base, loss=...)); compile() received loss={loss!r}."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Re-compiles a loaded model (optimizer, metrics, jit_compile) and builds its optimizer."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self) -> dict[str, Any]:
        loss = self.loss_spec
        if not isinstance(loss, str):
            loss = keras.saving.serialize_keras_object(loss)
        return {"name": self.name, "trainable": self.trainable,
                "base": keras.saving.serialize_keras_object(self.base), "loss": loss}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RobustModel:
        config = dict(config)
        config["base"] = keras.saving.deserialize_keras_object(config["base"])
        if isinstance(config.get("loss"), dict):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)

    # -- the objective --------------------------------------------------------------------------
    def forward(self, x: tf.Tensor, y: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns the logits of x and the extra term per sample; implemented by subclasses."""
        raise NotImplementedError

    def data_loss(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """The data loss L(f(x), y) per sample, on logits (unreduced, not scaled by replicas)."""
        k = logits.shape[-1]
        loss_fn = losses_module.get(self.loss_spec, k)
        target = tf.cast(labels, logits.dtype)[:, None] if k == 1 else labels
        return tf.reshape(loss_fn.call(target, logits), [-1])

    def _objective(self, x: Any, y: Any, sample_weight: Any, training: bool):
        x = check_finite_inputs(as_float_inputs(x))
        if not self.built:
            self.build(x.shape)
        logits, extra = self.forward(x, y, training=training)
        labels = sparse_labels(y, logits.shape[-1])
        data = self.data_loss(labels, logits)
        if sample_weight is not None:
            weight = tf.reshape(tf.cast(sample_weight, extra.dtype), [-1])
            data, extra = data * tf.cast(weight, data.dtype), extra * weight
        # Keras's "sum_over_batch_size": weighted sum over the local batch / its size.
        data, extra = tf.reduce_mean(data), tf.reduce_mean(extra)
        total = self.data_weight * data + self.extra_weight * extra
        if self.losses:
            total = total + tf.add_n([tf.cast(r, total.dtype) for r in self.losses])
        batch = tf.shape(x)[0]
        self._loss_tracker.update_state(total, sample_weight=batch)
        self.data_loss_tracker.update_state(data, sample_weight=batch)
        self.extra_tracker.update_state(extra, sample_weight=batch)
        return x, labels, logits, scale_for_replicas(total)

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            x, labels, logits, loss = self._objective(x, y, sample_weight, training=True)
            loss = self.optimizer.scale_loss(loss)
        weights = self.trainable_weights
        grads = tape.gradient(loss, weights)
        if self.jit_compile:
            # XLA drops the CheckNumerics above: skip the update instead of poisoning weights.
            if not self.optimizer.built:
                self.optimizer.build(weights)
            finite = tf.reduce_all(tf.math.is_finite(x))
            tf.cond(finite, lambda: self._apply(grads, weights), lambda: tf.no_op())
        else:
            self._apply(grads, weights)
        return _multi_worker_logs(self.compute_metrics(x, labels, logits, sample_weight))

    def _apply(self, grads: list, weights: list) -> tf.Operation:
        self.optimizer.apply_gradients(zip(grads, weights))
        return tf.no_op()

    def test_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, labels, logits, _ = self._objective(x, y, sample_weight, training=False)
        return _multi_worker_logs(self.compute_metrics(x, labels, logits, sample_weight))

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        """Builds from one replica's batch instead of Keras's `strategy.reduce` of it.

        Keras 3's version fails under MultiWorkerMirroredStrategy ("Attempt to convert a value
        (PerReplica...)", keras-team/keras#20585); building needs shapes only, which any local
        replica's batch has.
        """
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    # -- eager checks on array data (XLA drops graph assertions) --------------------------------
    def _num_outputs(self) -> int | None:
        try:
            return int(self.base.outputs[0].shape[-1])
        except (AttributeError, IndexError, TypeError, ValueError):
            return None

    def _check_arrays(self, x: Any, y: Any) -> None:
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError("x contains NaN or Inf; keras_margin refuses to use such inputs.")
        k = self._num_outputs()
        if isinstance(y, (np.ndarray, list, tf.Tensor)):
            if k is not None:
                check_label_array(y, k)
            if hasattr(x, "shape") and len(x) != len(y):
                raise ValueError(f"x and y have different lengths: {len(x)} samples, "
                                 f"{len(y)} labels.")

    def fit(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any):
        self._check_arrays(x, y)
        if not self.built and hasattr(x, "shape"):
            self.build((None,) + tuple(x.shape[1:]))
        validation = kwargs.get("validation_data")
        if isinstance(validation, tuple) and len(validation) >= 2:
            self._check_arrays(validation[0], validation[1])
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any):
        self._check_arrays(x, y)
        return super().evaluate(x, y, *args, **kwargs)


@keras.saving.register_keras_serializable(package="keras_margin")
class MarginModel(RobustModel):
    """Margin maximization: mean_b L(f(x_b), y_b) + C * eps(x_b, y_b) (eq. 18; eq. 14 binary).

    Args:
        base: a Keras model that outputs logits, k >= 2 units or 1 unit (binary, eq. 14).
        C: weight of the margin sensitivity (reference code: 0.1 for squared l2, 0.01 for l1).
        norm: "l2" or "l1" (the dual norm; defends l_inf perturbations).
        loss: "hinge" (Crammer-Singer; binary hinge for one logit), "crossentropy", or a Keras
            loss on logits.
        rival: "jacobian" (the reference code's j* from the full input Jacobian) or "logit".
        squared: None for the reference code's choice (squared l2, plain l1).
        candidates: with rival="jacobian", search j* among the top-`candidates` rival logits
            only (cheaper; None, the reference, searches all k - 1 rivals).

    `fit` reports `loss` (the whole objective), `data_loss` and `margin_sensitivity` (batch mean
    of eps). A batch holding NaN or Inf raises `InvalidArgumentError` before any weight changes.

    Example:
        >>> base = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
        >>> model = MarginModel(base, C=0.1)
        >>> model.compile(optimizer="adam", metrics=["accuracy"])
        >>> model.fit(x, y, batch_size=100, epochs=1)
    """

    extra_name = "margin_sensitivity"

    def __init__(self, base: keras.Model, C: float = 0.1, norm: str = "l2",
                 loss: Any = "hinge", rival: str = "jacobian", squared: bool | None = None,
                 candidates: int | None = None, **kwargs: Any) -> None:
        C = check_non_negative("C", C)
        check_choice("norm", norm, NORMS)
        check_choice("rival", rival, RIVALS)
        check_choice("squared", squared, (None, True, False))
        check_candidates(candidates)
        super().__init__(base, loss=loss, **kwargs)
        self.C, self.norm, self.rival, self.squared = C, norm, rival, squared
        self.candidates = candidates

    @property
    def extra_weight(self) -> float:  # type: ignore[override]
        return self.C

    def forward(self, x: tf.Tensor, y: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        return logits_and_sensitivity(self.base, x, y, norm=self.norm, rival=self.rival,
                                      squared=self.squared, training=training,
                                      candidates=self.candidates)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "C": self.C, "norm": self.norm, "rival": self.rival,
                "squared": self.squared, "candidates": self.candidates}


@keras.saving.register_keras_serializable(package="keras_margin")
class AdversarialTrainingModel(RobustModel):
    """FGSM adversarial training (Goodfellow et al., 2015), the paper's "AT" baseline.

    Minimises alpha * L(x) + (1 - alpha) * L(x + eps * sign(grad_x L(x))), the adversarial
    example regenerated from the current weights at every step (no gradient through it).

    Args:
        base: a Keras model that outputs logits.
        eps: the perturbation budget (the paper: 0.2 on MNIST in [0, 1]).
        alpha: weight of the clean loss (the paper: 0.5, equal weights).
        norm: "linf" (the sign of the gradient, FGSM) or "l2" (the normalised gradient).
        loss: the data loss, also the loss the adversary ascends.
        clip: optional (min, max) box for the adversarial examples.

    `fit` reports `loss`, `data_loss` (clean) and `adversarial_loss`.
    """

    extra_name = "adversarial_loss"

    def __init__(self, base: keras.Model, eps: float = 0.2, alpha: float = 0.5,
                 norm: str = "linf", loss: Any = "crossentropy",
                 clip: tuple[float, float] | None = None, **kwargs: Any) -> None:
        eps = check_non_negative("eps", eps)
        alpha = check_non_negative("alpha", alpha)
        if alpha > 1:
            raise ValueError(f"Invalid value for argument alpha: {alpha!r}. Expected 0..1.")
        check_choice("norm", norm, ("linf", "l2"))
        super().__init__(base, loss=loss, **kwargs)
        self.eps, self.alpha, self.norm = eps, alpha, norm
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))

    @property
    def data_weight(self) -> float:  # type: ignore[override]
        return self.alpha

    @property
    def extra_weight(self) -> float:  # type: ignore[override]
        return 1.0 - self.alpha

    def adversarial_examples(self, x: Any, y: Any, training: bool = False) -> tf.Tensor:
        """x + eps * sign(grad_x L(f(x), y)) for the current weights (l2: normalised gradient)."""
        return self._logits_and_adversarial(as_float_inputs(x), y, training)[1]

    def _logits_and_adversarial(self, x: tf.Tensor, y: Any,
                                training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """One forward pass gives the clean logits and, by its input gradient, x_adv."""
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = call_logits(self.base, x, training=training)
            total = tf.reduce_sum(self.data_loss(sparse_labels(y, logits.shape[-1]), logits))
        grad = tf.stop_gradient(input_gradient(tape, total, x))
        if self.norm == "linf":
            step = tf.sign(grad)
        else:
            length = flat_norm(grad, "l2")
            length = tf.reshape(tf.where(length > 0, length, tf.ones_like(length)),
                                [-1] + [1] * (grad.shape.rank - 1))
            step = grad / length
        x_adv = x + self.eps * step
        if self.clip is not None:
            x_adv = tf.clip_by_value(x_adv, self.clip[0], self.clip[1])
        return logits, x_adv

    def forward(self, x: tf.Tensor, y: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        logits, x_adv = self._logits_and_adversarial(x, y, training)
        adv_logits = call_logits(self.base, x_adv, training=training)
        return logits, self.data_loss(sparse_labels(y, logits.shape[-1]), adv_logits)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "eps": self.eps, "alpha": self.alpha, "norm": self.norm,
                "clip": self.clip}


def _class_log_probabilities(logits: tf.Tensor) -> tf.Tensor:
    """log softmax over classes; one logit f means the two classes (0, f)."""
    if logits.shape[-1] == 1:
        logits = tf.concat([tf.zeros_like(logits), logits], axis=-1)
    return tf.nn.log_softmax(logits, axis=-1)


def _kl_divergence(log_p: tf.Tensor, logits_q: tf.Tensor) -> tf.Tensor:
    """KL(p || q) per sample, p given by its log-probabilities, q by logits."""
    log_q = _class_log_probabilities(logits_q)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def _unit_l2(d: tf.Tensor) -> tf.Tensor:
    """d / ||d||_2 per sample, scaled by its max first for stability (as Miyato et al.'s code)."""
    axes = list(range(1, d.shape.rank))
    d = d / (1e-12 + tf.reduce_max(tf.abs(d), axis=axes, keepdims=True))
    return d / tf.sqrt(1e-6 + tf.reduce_sum(tf.square(d), axis=axes, keepdims=True))


HVP_METHODS = ("finite_difference", "exact")


@keras.saving.register_keras_serializable(package="keras_margin")
class VATModel(RobustModel):
    """Virtual adversarial training (Miyato et al., 2016), the paper's "VAT" baseline.

    Minimises L(x, y) + alpha * KL(p(x) || p(x + r_vadv)), r_vadv = eps * the direction found by
    `power_iterations` power iterations d <- H d / ||H d|| from a random start, H the Hessian of
    r -> KL(p(x) || p(x + r)) at r = 0.

    Args:
        base: a Keras model that outputs logits.
        eps: norm of the virtual adversarial perturbation (the paper: 2.0 on MNIST).
        xi: finite-difference step of the power iteration (the paper: 1e-6).
        power_iterations: power iterations (the paper: 1).
        alpha: weight of the KL term.
        loss: the data loss.
        seed: seed of the random start.
        hvp: how H d is taken. "finite_difference" (the paper and Miyato et al.'s code):
            grad_r KL at r = xi d, which in float32 with xi = 1e-6 is mostly rounding noise;
            "exact": the Hessian-vector product by double backprop (one more backward pass).

    `fit` reports `loss`, `data_loss` and `vat_loss` (the KL term). The random start's
    generator state is saved with the model, so a resumed run draws what an uninterrupted one
    would.
    """

    extra_name = "vat_loss"

    def __init__(self, base: keras.Model, eps: float = 2.0, xi: float = 1e-6,
                 power_iterations: int = 1, alpha: float = 1.0, loss: Any = "crossentropy",
                 seed: int | None = None, hvp: str = "finite_difference",
                 **kwargs: Any) -> None:
        eps, xi, alpha = (check_non_negative(name, value)
                          for name, value in (("eps", eps), ("xi", xi), ("alpha", alpha)))
        if (isinstance(power_iterations, bool) or int(power_iterations) != power_iterations
                or power_iterations < 0):
            raise ValueError(f"Invalid value for argument power_iterations: "
                             f"{power_iterations!r}. Expected an integer >= 0.")
        check_choice("hvp", hvp, HVP_METHODS)
        super().__init__(base, loss=loss, **kwargs)
        self.eps, self.xi, self.alpha, self.hvp = eps, xi, alpha, hvp
        self.power_iterations, self.seed = int(power_iterations), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def extra_weight(self) -> float:  # type: ignore[override]
        return self.alpha

    def _kl_gradient(self, x: tf.Tensor, log_p: tf.Tensor, r: tf.Tensor,
                     training: bool) -> tf.Tensor:
        """grad_r sum_b KL(p(x_b) || p(x_b + r_b)), differentiable again w.r.t. r."""
        with tf.GradientTape() as tape:
            tape.watch(r)
            kl = tf.reduce_sum(
                _kl_divergence(log_p, call_logits(self.base, x + r, training=training)))
        return input_gradient(tape, kl, r)

    def _hessian_vector(self, x: tf.Tensor, log_p: tf.Tensor, d: tf.Tensor,
                        training: bool) -> tf.Tensor:
        """H d (up to a positive factor, which the power iteration normalises away)."""
        if self.hvp == "finite_difference":
            return self._kl_gradient(x, log_p, self.xi * _unit_l2(d), training)
        r = tf.zeros_like(x)
        with tf.GradientTape() as tape:
            tape.watch(r)
            directional = tf.reduce_sum(self._kl_gradient(x, log_p, r, training) * d)
        return input_gradient(tape, directional, r)

    def virtual_adversarial_perturbation(self, x: tf.Tensor, logits: tf.Tensor,
                                         training: bool = False) -> tf.Tensor:
        """r_vadv = eps * d, d from power iterations on KL(p(x) || p(x + r))."""
        log_p = tf.stop_gradient(_class_log_probabilities(logits))
        d = keras.random.normal(tf.shape(x), seed=self.seed_generator, dtype=x.dtype)
        for _ in range(self.power_iterations):
            d = tf.stop_gradient(self._hessian_vector(x, log_p, d, training))
        return self.eps * _unit_l2(d)

    def forward(self, x: tf.Tensor, y: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        logits = call_logits(self.base, x, training=training)
        r_vadv = self.virtual_adversarial_perturbation(x, logits, training=training)
        log_p = tf.stop_gradient(_class_log_probabilities(logits))
        return logits, _kl_divergence(log_p, call_logits(self.base, x + r_vadv,
                                                          training=training))

    # The seed generator's state is not among the variables Keras saves for a Model.
    def save_own_variables(self, store: Any) -> None:
        super().save_own_variables(store)
        store["seed_generator_state"] = keras.ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store: Any) -> None:
        keys = list(store.keys())  # a Keras H5 store, not a dict
        super().load_own_variables({key: store[key] for key in keys
                                    if key != "seed_generator_state"})
        if "seed_generator_state" in keys:
            self.seed_generator.state.assign(store["seed_generator_state"][...])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "eps": self.eps, "xi": self.xi,
                "power_iterations": self.power_iterations, "alpha": self.alpha,
                "seed": self.seed, "hvp": self.hvp}
