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
from keras_margin.sensitivity import NORMS, RIVALS, logits_and_sensitivity


def scale_for_replicas(value: tf.Tensor) -> tf.Tensor:
    """Divides by the replicas in sync, as Keras does for compiled losses under tf.distribute."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / replicas if replicas > 1 else value


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
        return self.compute_metrics(x, labels, logits, sample_weight=sample_weight)

    def _apply(self, grads: list, weights: list) -> tf.Operation:
        self.optimizer.apply_gradients(zip(grads, weights))
        return tf.no_op()

    def test_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, labels, logits, _ = self._objective(x, y, sample_weight, training=False)
        return self.compute_metrics(x, labels, logits, sample_weight=sample_weight)

    # -- eager checks on array data (XLA drops graph assertions) --------------------------------
    def _num_outputs(self) -> int | None:
        try:
            return int(self.base.outputs[0].shape[-1])
        except (AttributeError, IndexError, TypeError, ValueError):
            return None

    def _check_arrays(self, x: Any, y: Any) -> None:
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError("x contains NaN or Inf; keras_margin refuses to train on it.")
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
                 **kwargs: Any) -> None:
        C = check_non_negative("C", C)
        check_choice("norm", norm, NORMS)
        check_choice("rival", rival, RIVALS)
        check_choice("squared", squared, (None, True, False))
        super().__init__(base, loss=loss, **kwargs)
        self.C, self.norm, self.rival, self.squared = C, norm, rival, squared

    @property
    def extra_weight(self) -> float:  # type: ignore[override]
        return self.C

    def forward(self, x: tf.Tensor, y: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        return logits_and_sensitivity(self.base, x, y, norm=self.norm, rival=self.rival,
                                      squared=self.squared, training=training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "C": self.C, "norm": self.norm, "rival": self.rival,
                "squared": self.squared}
