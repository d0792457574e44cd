"""RobustModel: a base model that outputs logits, trained on its data loss plus one extra term.

Each trainer minimises

    data_weight * L(f(x), y) + extra_weight * mean_b extra(x_b, y_b) + regularisation losses,

where `extra` is the trainer's own term (margin sensitivity, adversarial loss, VAT's KL). The
objective is written once, in `keras.ops`, and returned as an `Objective`; the train and test
steps that differentiate it are the backend's (`keras_margin.backend.Steps`): nested tapes and
tf.distribute on TensorFlow, a stateless jitted step on JAX, autograd on PyTorch. A batch with
NaN/Inf inputs, labels out of range or a non-finite objective never changes the weights:
TensorFlow (without XLA) and PyTorch raise, compiled steps (XLA, JAX) skip it, and `fit`
reports `skipped_batches` and warns at the end of the epoch.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from keras_margin import _keras_compat, backend
from keras_margin import losses as losses_module
from keras_margin._validation import (
    as_float_inputs,
    check_box,
    check_finite_array,
    check_fit_arrays,
    check_label_array,
    check_logits_model,
    check_probability_outputs,
    check_single_input,
    class_indices,
    label_array,
    warn_if_unscaled,
)
from keras_margin.jacobian import call_logits
from keras_margin.threat import resolve
from keras_margin.training.helpers import with_helpers


class Objective(NamedTuple):
    """One batch's objective and its parts (a NamedTuple: every backend's steps carry it).

    Attributes:
        total: the minimised scalar.
        data, extra: the batch means of the data loss and of the trainer's extra term.
        logits: (batch, k).
        labels: int32 (batch,).
        valid: boolean scalar: finite inputs and objective, labels in range.
        batch: the batch size.
        aux: the trainer's further batch means by name (its `aux_trackers`), e.g. the
            certified trainer's scheduled eps.
    """

    total: Any
    data: Any
    extra: Any
    logits: Any
    labels: Any
    valid: Any
    batch: Any
    aux: Any = None


class RobustModel(backend.Steps, keras.Model):
    """Base class of the trainers: a base model that outputs logits plus one extra loss term.

    Subclasses implement `logits_and_extra(x, labels, training) -> (logits, extra)`, `extra` per
    sample (or `(logits, extra, aux)`, `aux` a dict of batch means that `record` averages into
    the trackers of `aux_trackers`), set `extra_name`, and list their hyper-parameters in
    `get_config`. `data_weight` and `extra_weight` are read before `logits_and_extra`.
    """

    extra_name = "extra_loss"
    data_weight = 1.0
    extra_weight = 1.0
    clip: tuple[float, float] | None = None  # a trainer's input box, where it has one

    def __init__(self, base: keras.Model, loss: Any = "crossentropy", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _keras_compat.check_keras_version()
        if not callable(base):
            raise ValueError(f"base must be a Keras model that outputs logits; received {base!r}.")
        check_logits_model(base)
        check_single_input(base)
        losses_module.get(loss, None)  # fail early on an unknown or probability loss
        self.base = base
        self.loss_spec = loss
        self.loss_fn: keras.losses.Loss | None = None  # resolved once, when k is known
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
        self.loss_fn = losses_module.get(self.loss_spec, self._num_outputs)
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
        # Every metric is weighted: a skipped batch (weight 0) then counts in none of them
        # (Keras passes sample weights to `weighted_metrics` only).
        metrics = _logit_metrics(kwargs.pop("metrics", None) or [])
        metrics += _logit_metrics(kwargs.pop("weighted_metrics", None) or [])
        super().compile(optimizer=optimizer, weighted_metrics=metrics or None, **kwargs)

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
        if self.loss_fn is None:  # called before `build`: resolved once, here
            self.loss_fn = losses_module.get(self.loss_spec, k)
        target = ops.cast(labels, logits.dtype)[:, None] if k == 1 else labels
        return ops.reshape(self.loss_fn.call(target, logits), (-1,))

    def objective(self, x: Any, y: Any, sample_weight: Any, training: bool) -> Objective:
        """The batch's `Objective`: the minimised scalar, its parts, and whether the batch may
        change the weights. The data term is reduced as the loss's `reduction` says (Keras's
        default "sum_over_batch_size": the weighted sum over the batch / its size; "sum"),
        the extra term always as the mean."""
        x = as_float_inputs(x)
        if not self.built:
            self.build(x.shape)
        labels, labels_valid = class_indices(y, self.num_outputs)
        data_weight, extra_weight = self.data_weight, self.extra_weight
        logits, extra, *aux = self.logits_and_extra(x, labels, training)
        data = self.data_loss(labels, logits)
        if sample_weight is not None:
            weight = ops.reshape(ops.cast(sample_weight, extra.dtype), (-1,))
            data, extra = data * ops.cast(weight, data.dtype), extra * weight
        reduce = ops.sum if losses_module.reduction(self.loss_fn) == "sum" else ops.mean
        data, extra = reduce(data), ops.mean(extra)
        total = data_weight * data + extra_weight * extra
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(r, total.dtype) for r in self.losses]))
        valid = ops.logical_and(ops.logical_and(labels_valid, self.inputs_valid(x)),
                                ops.isfinite(total))
        return Objective(total, data, extra, logits, labels, valid, ops.shape(x)[0],
                         aux[0] if aux else {})

    def inputs_valid(self, x: Any) -> Any:
        """Whether a batch's inputs may train (a boolean scalar, in the compiled step): finite,
        and inside `clip` where the trainer has a box: a batch from a `tf.data` pipeline or a
        `PyDataset` outside it is refused as a NaN batch is (TensorFlow graphs and PyTorch
        raise; compiled steps skip it and count it in `skipped_batches`)."""
        valid = ops.all(ops.isfinite(x))
        if self.clip is None:
            return valid
        lo, hi = self.clip
        inside = ops.logical_and(ops.all(x >= ops.cast(lo, x.dtype)),
                                 ops.all(x <= ops.cast(hi, x.dtype)))
        return ops.logical_and(valid, inside)

    def record(self, objective: Objective, x: Any, sample_weight: Any) -> dict[str, Any]:
        """Updates the loss trackers (a skipped batch counts in `skipped_batches` only) and the
        compiled metrics; returns the logs."""
        valid = ops.cast(objective.valid, "float32")
        weight = ops.cast(objective.batch, "float32") * valid
        total, data, extra = (ops.where(objective.valid, value, 0.0)
                              for value in (objective.total, objective.data, objective.extra))
        _keras_compat.loss_tracker(self).update_state(total, sample_weight=weight)
        self.data_loss_tracker.update_state(data, sample_weight=weight)
        self.extra_tracker.update_state(extra, sample_weight=weight)
        self.skipped_tracker.update_state(1.0 - valid)
        for name, tracker in self.aux_trackers().items():
            value = ops.cast(objective.aux[name], "float32")
            tracker.update_state(ops.where(objective.valid, value, 0.0), sample_weight=weight)
        # A skipped batch counts in no metric either (weight 0).
        keep = ops.ones((objective.batch,), "float32") * valid
        if sample_weight is not None:
            keep = keep * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        return self.compute_metrics(x, objective.labels, objective.logits, keep)

    def aux_trackers(self) -> dict[str, keras.metrics.Metric]:
        """The trackers of the further numbers a subclass's `logits_and_extra` returns, by
        name (each a `keras.metrics.Mean` attribute of the model, so Keras resets it every
        epoch and logs it); none here."""
        return {}

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
        if self.clip is not None:
            check_box(*self.clip, x)
        probe = ops.convert_to_numpy(ops.stop_gradient(call_logits(
            self.base, ops.convert_to_tensor(x[:32].astype(keras.backend.floatx())))))
        check_probability_outputs(probe)
        warn_if_unscaled(x, where)

    def fit(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any):
        check_fit_arrays(x, y, type(self).__name__ + ".fit")
        self._check_arrays(x, y, f"{type(self).__name__}.fit")
        validation = kwargs.get("validation_data")
        if isinstance(validation, tuple) and len(validation) >= 2:
            self._check_arrays(validation[0], validation[1], "validation_data")
        kwargs["callbacks"] = with_helpers(kwargs.get("callbacks"))
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any):
        check_fit_arrays(x, y, type(self).__name__ + ".evaluate")
        self._check_arrays(x, y, f"{type(self).__name__}.evaluate")
        result = super().evaluate(x, y, *args, **kwargs)
        skipped = float(ops.convert_to_numpy(ops.stop_gradient(self.skipped_tracker.result())))
        if skipped:
            warnings.warn(f"evaluate: {int(skipped)} batch(es) were left out of every number "
                          "(loss and metrics): they held NaN/Inf inputs or labels outside the "
                          "model's classes, or gave a non-finite objective. Check the data.",
                          UserWarning, stacklevel=2)
        return result


def budget_and_box(threat: Any, eps: Any, norm: str | None, clip: Any,
                   purpose: str) -> tuple[Any, str | None, Any]:
    """A trainer's (eps, norm, clip) from `threat=` or the separate arguments (not both,
    `threat.resolve`); a threat bounded on one side only is refused: the trainer's box is
    whole or absent. `purpose` says what the box is for, in the error."""
    if threat is None:
        return eps, norm, clip
    low, high = clip if clip is not None else (None, None)
    eps, norm, low, high = resolve(threat, eps, norm, low, high, budget=True)
    clip = None if low is None and high is None else (low, high)
    if clip is not None and None in clip:
        raise ValueError(f"Invalid value for argument threat: {threat} is bounded on one side; "
                         f"{purpose} a whole box (clip_min and clip_max) or none.")
    return eps, norm, clip


def _logit_metrics(metrics: Any) -> Any:
    """"accuracy" (or "acc") as `losses.LogitAccuracy`: measured on logits, argmax for k >= 2
    and logit > 0 for one logit (Keras's guess would threshold one output at 0.5, as if it
    were a probability)."""
    if isinstance(metrics, dict):
        raise ValueError("metrics= as a dict is for several outputs; the trainers' base has "
                         "one output: pass a list.")
    if isinstance(metrics, (str, keras.metrics.Metric)):
        metrics = [metrics]
    return [losses_module.LogitAccuracy() if m in ("accuracy", "acc") else m for m in metrics]


def _logit_count(base: keras.Model, input_shape: Any) -> int:
    """k from the base's output shape, or from a symbolic call on `input_shape`."""
    try:
        shape = base.output_shape
    except (AttributeError, ValueError):
        shape = base.compute_output_spec(keras.KerasTensor(tuple(input_shape))).shape
    return 1 if len(shape) == 1 else int(shape[-1])
