"""Keras trainers: MarginModel (eq. 18) and the paper's baselines on one base class.

Each trainer wraps a base model that outputs logits and minimises

    data_weight * L(f(x), y) + extra_weight * mean_b extra(x_b, y_b) + regularisation losses,

where `extra` is the trainer's own term (margin sensitivity, adversarial loss, VAT's KL). The
objective is written once, in `keras.ops`; the train and test steps that differentiate it are
the backend's (`keras_margin.backend`): nested tapes and tf.distribute on TensorFlow, a stateless
jitted step on JAX, autograd on PyTorch. A batch with NaN/Inf inputs, labels out of range or a
non-finite objective never changes the weights: TensorFlow (without XLA) and PyTorch raise,
compiled steps (XLA, JAX) skip it, and `fit` warns at the end of the epoch.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_margin import _keras_compat, backend
from keras_margin import losses as losses_module
from keras_margin._validation import (
    as_float_inputs,
    check_choice,
    check_finite_array,
    check_integer,
    check_label_array,
    check_logits_model,
    check_non_negative,
    check_probability_outputs,
    check_single_input,
    class_indices,
    label_array,
    warn_if_unscaled,
)
from keras_margin.attacks.fgsm import fgsm_examples
from keras_margin.attacks.norms import normalize
from keras_margin.jacobian import call_logits
from keras_margin.sensitivity import NORMS, RIVALS, check_candidates, logits_and_sensitivity

MAX_C = 1e6  # larger weights overflow float32 in the first steps


class RobustModel(keras.Model):
    """Base class of the trainers: a base model that outputs logits plus one extra loss term.

    Subclasses implement `logits_and_extra(x, labels, training) -> (logits, extra)`, `extra` per
    sample, set `extra_name`, and list their hyper-parameters in `get_config`.
    """

    extra_name = "extra_loss"
    data_weight = 1.0
    extra_weight = 1.0

    def __init__(self, base: keras.Model, loss: Any = "crossentropy", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not callable(base):
            raise ValueError(f"base must be a Keras model that outputs logits; received {base!r}.")
        check_logits_model(base)
        check_single_input(base)
        losses_module.get(loss, None)  # fail early on an unknown or probability loss
        self.base = base
        self.loss_spec = loss
        self.data_loss_tracker = keras.metrics.Mean(name="data_loss")
        self.extra_tracker = keras.metrics.Mean(name=self.extra_name)
        self.skipped_tracker = keras.metrics.Sum(name="skipped_batches")
        self._num_outputs: int | None = None

    # -- Keras plumbing -------------------------------------------------------------------------
    def call(self, inputs: Any, training: bool | None = None):
        return self.base(inputs, training=training)

    def build(self, input_shape: Any) -> None:
        if not self.base.built:
            self.base.build(input_shape)
        self._num_outputs = _logit_count(self.base, input_shape)
        losses_module.get(self.loss_spec, self._num_outputs)  # a binary loss needs one logit
        self.built = True

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, **kwargs: Any) -> None:
        """Like `keras.Model.compile`; the data loss is the constructor's `loss` argument.

        On PyTorch the steps run eagerly: `jit_compile=True` (torch.compile) is refused with a
        warning, since TorchDynamo cannot trace the double backprop of the input gradients.
        """
        if loss is not None:
            raise ValueError(
                f"{type(self).__name__} takes its data loss in the constructor "
                f"({type(self).__name__}(base, loss=...)); compile() received loss={loss!r}."
            )
        if backend.NAME == "torch" and kwargs.get("jit_compile") is True:
            warnings.warn(f"{type(self).__name__} runs eagerly on PyTorch: torch.compile cannot "
                          "trace the double backprop of its input gradients; jit_compile=True "
                          "is ignored.", UserWarning, stacklevel=2)
            kwargs["jit_compile"] = False
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

    @property
    def num_outputs(self) -> int:
        """k, the number of logits of the base (1 for a binary model)."""
        if self._num_outputs is None:
            raise ValueError(f"{type(self).__name__} is not built yet: call it on data first.")
        return self._num_outputs

    # -- the objective (backend-neutral) ---------------------------------------------------------
    def logits_and_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, Any]:
        """Returns the logits of x and the extra term per sample; implemented by subclasses."""
        raise NotImplementedError

    def data_loss(self, labels: Any, logits: Any):
        """The data loss L(f(x), y) per sample, on logits (unreduced)."""
        k = logits.shape[-1]
        loss_fn = losses_module.get(self.loss_spec, k)
        target = ops.cast(labels, logits.dtype)[:, None] if k == 1 else labels
        return ops.reshape(loss_fn.call(target, logits), (-1,))

    def objective(self, x: Any, y: Any, sample_weight: Any, training: bool) -> dict[str, Any]:
        """The batch's objective and its parts, and whether the batch may change the weights.

        Returns a dict: "total" (the minimised scalar), "data" and "extra" (batch means),
        "logits", "labels" (int32), "valid" (a boolean scalar: finite inputs and objective,
        labels in range) and "batch" (the batch size).
        """
        x = as_float_inputs(x)
        if not self.built:
            self.build(x.shape)
        labels, labels_valid = class_indices(y, self.num_outputs)
        logits, extra = self.logits_and_extra(x, labels, training)
        data = self.data_loss(labels, logits)
        if sample_weight is not None:
            weight = ops.reshape(ops.cast(sample_weight, extra.dtype), (-1,))
            data, extra = data * ops.cast(weight, data.dtype), extra * weight
        # Keras's "sum_over_batch_size": weighted sum over the batch / its size.
        data, extra = ops.mean(data), ops.mean(extra)
        total = self.data_weight * data + self.extra_weight * extra
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(r, total.dtype) for r in self.losses]))
        valid = ops.logical_and(ops.logical_and(labels_valid, ops.all(ops.isfinite(x))),
                                ops.isfinite(total))
        return {"total": total, "data": data, "extra": extra, "logits": logits,
                "labels": labels, "valid": valid, "batch": ops.shape(x)[0]}

    def record(self, objective: dict[str, Any], x: Any, sample_weight: Any) -> dict[str, Any]:
        """Updates the loss trackers (a skipped batch counts in `skipped_batches` only) and the
        compiled metrics; returns the logs."""
        valid = ops.cast(objective["valid"], "float32")
        weight = ops.cast(objective["batch"], "float32") * valid
        safe = {key: ops.where(objective["valid"], objective[key], 0.0)
                for key in ("total", "data", "extra")}
        _keras_compat.loss_tracker(self).update_state(safe["total"], sample_weight=weight)
        self.data_loss_tracker.update_state(safe["data"], sample_weight=weight)
        self.extra_tracker.update_state(safe["extra"], sample_weight=weight)
        self.skipped_tracker.update_state(1.0 - valid)
        return self.compute_metrics(x, objective["labels"], objective["logits"], sample_weight)

    def get_metrics_result(self) -> dict[str, Any]:
        result = super().get_metrics_result()
        result.pop("skipped_batches", None)  # reported by a warning, see `fit`
        return result

    # -- the steps: the backend's -----------------------------------------------------------------
    if backend.NAME == "jax":
        def train_step(self, state: Any, data: Any):
            return backend.trainer.train_step(self, state, data)

        def test_step(self, state: Any, data: Any):
            return backend.trainer.test_step(self, state, data)
    else:
        def train_step(self, data: Any):
            return backend.trainer.train_step(self, data)

        def test_step(self, data: Any):
            return backend.trainer.test_step(self, data)

    if backend.NAME == "tensorflow":
        def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
            _keras_compat.maybe_symbolic_build(self, iterator, data_batch)

    # -- eager checks at the entry of fit and evaluate -------------------------------------------
    def _check_arrays(self, x: Any, y: Any, where: str) -> None:
        if not isinstance(x, np.ndarray) or y is None:
            return
        check_finite_array(x)
        labels = label_array(y)
        if len(x) != len(labels):
            raise ValueError(f"x and y have different lengths: {len(x)} samples, "
                             f"{len(labels)} labels.")
        if not self.built:
            self.build((None,) + tuple(x.shape[1:]))
        check_label_array(labels, self.num_outputs)
        probe = ops.convert_to_numpy(ops.stop_gradient(call_logits(
            self.base, ops.convert_to_tensor(x[:32].astype(keras.backend.floatx())))))
        check_probability_outputs(probe)
        warn_if_unscaled(x, where)

    def fit(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any):
        self._check_arrays(x, y, f"{type(self).__name__}.fit")
        validation = kwargs.get("validation_data")
        if isinstance(validation, tuple) and len(validation) >= 2:
            self._check_arrays(validation[0], validation[1], "validation_data")
        kwargs["callbacks"] = _robustness_first(kwargs.get("callbacks")) + \
            [_SkippedBatchesWarning()]
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any):
        self._check_arrays(x, y, f"{type(self).__name__}.evaluate")
        return super().evaluate(x, y, *args, **kwargs)


def _robustness_first(callbacks: Any) -> list:
    """RobustnessCallbacks before the others: Keras hands every callback the same epoch logs
    in list order, so CSVLogger or TensorBoard listed first would miss the robustness numbers."""
    from keras_margin.callbacks import RobustnessCallback

    callbacks = list(callbacks or [])
    return [c for c in callbacks if isinstance(c, RobustnessCallback)] + \
        [c for c in callbacks if not isinstance(c, RobustnessCallback)]


def _logit_count(base: keras.Model, input_shape: Any) -> int:
    """k from the base's output shape, or from a symbolic call on `input_shape`."""
    try:
        shape = base.output_shape
    except (AttributeError, ValueError):
        shape = base.compute_output_spec(keras.KerasTensor(tuple(input_shape))).shape
    return 1 if len(shape) == 1 else int(shape[-1])


class _SkippedBatchesWarning(keras.callbacks.Callback):
    """Warns at the end of an epoch in which batches were skipped (compiled steps cannot raise).
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        skipped = float(ops.convert_to_numpy(ops.stop_gradient(
            self.model.skipped_tracker.result())))
        if skipped:
            warnings.warn(
                f"Epoch {epoch + 1}: {int(skipped)} batch(es) left the weights untouched: they "
                "held NaN/Inf inputs, labels outside the model's classes, or gave a non-finite "
                "objective (too large a C or learning rate?). Check the input pipeline.",
                UserWarning, stacklevel=2)
            if logs is not None:
                logs["skipped_batches"] = skipped


@keras.saving.register_keras_serializable(package="keras_margin")
class MarginModel(RobustModel):
    """Margin maximization: mean_b L(f(x_b), y_b) + C * eps(x_b, y_b) (eq. 18; eq. 14 binary).

    Args:
        base: a Keras model that outputs logits, k >= 2 units or 1 unit (binary, eq. 14).
        C: weight of the margin sensitivity (reference code: 0.1 for squared l2, 0.01 for l1).
        norm: the penalty's norm, "l2" or "l1" (the dual norm; defends l_inf perturbations).
        loss: "hinge" (Crammer-Singer; binary hinge for one logit), "crossentropy", or a Keras
            loss on logits.
        rival: "jacobian" (the reference code's j* from the full input Jacobian) or "logit".
        squared: None for the reference code's choice (squared l2, plain l1).
        candidates: with rival="jacobian", search j* among the top-`candidates` rival logits
            only (cheaper; None, the reference, searches all k - 1 rivals).

    `fit` reports `loss` (the whole objective), `data_loss` and `margin_sensitivity` (batch mean
    of eps), on every Keras backend.

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
        C = check_non_negative("C", C, maximum=MAX_C)
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

    def logits_and_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, Any]:
        return logits_and_sensitivity(self.base, x, labels, norm=self.norm, rival=self.rival,
                                      squared=self.squared, training=training,
                                      candidates=self.candidates)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "C": self.C, "norm": self.norm, "rival": self.rival,
                "squared": self.squared, "candidates": self.candidates}


@keras.saving.register_keras_serializable(package="keras_margin")
class AdversarialTrainingModel(RobustModel):
    """FGSM adversarial training (Goodfellow et al., 2015), the paper's "AT" baseline.

    Minimises alpha * L(x) + (1 - alpha) * L(x + eps * sign(grad_x L(x))), the adversarial
    example regenerated from the current weights at every step by `attacks.fgsm`'s core (no
    gradient through it).

    Args:
        base: a Keras model that outputs logits.
        eps: the perturbation budget (the paper: 0.2 on MNIST in [0, 1]).
        alpha: weight of the clean loss (the paper: 0.5, equal weights).
        norm: the threat model's norm, "linf" (the sign of the gradient, FGSM) or "l2" (the
            normalised gradient).
        loss: the data loss, also the loss the adversary ascends.
        clip: optional (min, max) box for the adversarial examples.

    `fit` reports `loss`, `data_loss` (clean) and `adversarial_loss`.
    """

    extra_name = "adversarial_loss"

    def __init__(self, base: keras.Model, eps: float = 0.2, alpha: float = 0.5,
                 norm: str = "linf", loss: Any = "crossentropy",
                 clip: tuple[float, float] | None = None, **kwargs: Any) -> None:
        eps = check_non_negative("eps", eps)
        alpha = check_non_negative("alpha", alpha, maximum=1)
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

    def adversarial_examples(self, x: Any, y: Any, training: bool = False):
        """x + eps * sign(grad_x L(f(x), y)) for the current weights (l2: normalised gradient)."""
        x = as_float_inputs(x)
        if not self.built:
            self.build(x.shape)
        labels, _ = class_indices(y, self.num_outputs)
        return self._logits_and_adversarial(x, labels, training)[1]

    def _logits_and_adversarial(self, x: Any, labels: Any, training: bool):
        """One forward pass gives the clean logits and, by its input gradient, x_adv."""
        return fgsm_examples(self.base, x, labels, self.eps, norm=self.norm,
                             clip=self.clip or (None, None),
                             loss=lambda y, logits: self.data_loss(y, logits),
                             training=training)

    def logits_and_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, Any]:
        logits, x_adv = self._logits_and_adversarial(x, labels, training)
        adv_logits = call_logits(self.base, x_adv, training=training)
        return logits, self.data_loss(labels, adv_logits)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "eps": self.eps, "alpha": self.alpha, "norm": self.norm,
                "clip": self.clip}


def _class_log_probabilities(logits: Any):
    """log softmax over classes; one logit f means the two classes (0, f)."""
    if logits.shape[-1] == 1:
        logits = ops.concatenate([ops.zeros_like(logits), logits], axis=-1)
    return ops.log_softmax(logits, axis=-1)


def _kl_divergence(log_p: Any, logits_q: Any):
    """KL(p || q) per sample, p given by its log-probabilities, q by logits."""
    log_q = _class_log_probabilities(logits_q)
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


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
        power_iterations = check_integer("power_iterations", power_iterations, minimum=0)
        check_choice("hvp", hvp, HVP_METHODS)
        super().__init__(base, loss=loss, **kwargs)
        self.eps, self.xi, self.alpha, self.hvp = eps, xi, alpha, hvp
        self.power_iterations, self.seed = power_iterations, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def extra_weight(self) -> float:  # type: ignore[override]
        return self.alpha

    def _kl_gradient(self, x: Any, log_p: Any, r: Any, training: bool,
                     create_graph: bool = False):
        """grad_r sum_b KL(p(x_b) || p(x_b + r_b)); with `create_graph`, differentiable again."""
        def kl(z):
            return _kl_divergence(log_p, call_logits(self.base, x + z, training=training))

        return backend.value_and_grad(kl, r, create_graph=create_graph)[1]

    def _hessian_vector(self, x: Any, log_p: Any, d: Any, training: bool):
        """H d (up to a positive factor, which the power iteration normalises away)."""
        if self.hvp == "finite_difference":
            return self._kl_gradient(x, log_p, self.xi * normalize(d, "l2"), training)
        axes = tuple(range(1, len(x.shape)))

        def directional(r):
            return ops.sum(self._kl_gradient(x, log_p, r, training, create_graph=True) * d,
                           axis=axes)

        return backend.value_and_grad(directional, ops.zeros_like(x))[1]

    def virtual_adversarial_perturbation(self, x: Any, logits: Any, training: bool = False):
        """r_vadv = eps * d, d from power iterations on KL(p(x) || p(x + r))."""
        log_p = ops.stop_gradient(_class_log_probabilities(logits))
        d = keras.random.normal(ops.shape(x), seed=self.seed_generator, dtype=x.dtype)
        for _ in range(self.power_iterations):
            d = ops.stop_gradient(self._hessian_vector(x, log_p, d, training))
        return self.eps * normalize(d, "l2")

    def logits_and_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, Any]:
        logits = call_logits(self.base, x, training=training)
        r_vadv = self.virtual_adversarial_perturbation(x, logits, training=training)
        log_p = ops.stop_gradient(_class_log_probabilities(logits))
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
