"""Data losses on logits: the Crammer-Singer multiclass hinge and the binary hinge of eq. (14)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

BUILTIN_LOSSES = ("hinge", "crossentropy")


@keras.saving.register_keras_serializable(package="keras_margin")
def multiclass_hinge(y_true: Any, logits: Any):
    """Crammer-Singer hinge `max_{j != y} (1 + f_j - f_y)_+` per sample (eq. 18's data term).

    The true class is masked out of the max, so a sample classified with margin >= 1 costs 0.
    This is not `keras.losses.categorical_hinge`: that one zeroes the true logit instead of
    masking it, so its rival term is max(0, max_{j != y} f_j) and differs whenever all rival
    logits are negative.

    Args:
        y_true: integer class indices, shape (batch,) or (batch, 1).
        logits: shape (batch, k), k >= 2.

    Returns:
        Per-sample losses, shape (batch,).

    Example:
        >>> float(multiclass_hinge([0], [[2.0, 0.5, -1.0]])[0])
        0.0
    """
    logits = ops.convert_to_tensor(logits)
    y = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    true_mask = ops.one_hot(y, logits.shape[-1]) > 0
    f_y = ops.max(ops.where(true_mask, logits, ops.cast(-1e30, logits.dtype)), axis=-1)
    rivals = ops.where(true_mask, ops.cast(-1e30, logits.dtype), logits)
    return ops.relu(1.0 + ops.max(rivals, axis=-1) - f_y)


@keras.saving.register_keras_serializable(package="keras_margin")
def binary_hinge(y_true: Any, logits: Any):
    """Binary hinge `(1 - y f(x))_+` of eq. (14) for one logit; labels in {0, 1} or {-1, +1}.

    Returns:
        Per-sample losses, shape (batch,).

    Example:
        >>> float(binary_hinge([1], [[3.0]])[0])
        0.0
    """
    logits = ops.reshape(ops.convert_to_tensor(logits), (-1,))
    y = ops.reshape(ops.cast(y_true, logits.dtype), (-1,))
    y_pm = ops.where(y > 0, ops.ones_like(y), -ops.ones_like(y))
    return ops.relu(1.0 - y_pm * logits)


# Keras loss names that are right for class-index labels once applied to logits, and the
# number of logits they need (None: any k >= 2, 1: a binary model).
KERAS_LOSS_NAMES = {
    "sparse_categorical_crossentropy": (keras.losses.SparseCategoricalCrossentropy, None),
    "binary_crossentropy": (keras.losses.BinaryCrossentropy, 1),
    "binary_focal_crossentropy": (keras.losses.BinaryFocalCrossentropy, 1),
}


def get(spec: Any, num_outputs: int | None) -> keras.losses.Loss:
    """Resolves a loss spec to a Keras `Loss` on logits for a model with `num_outputs` logits.

    Args:
        spec: "hinge" (multiclass Crammer-Singer, or binary for one logit), "crossentropy"
            (softmax or sigmoid cross-entropy from logits), one of the Keras loss names in
            `KERAS_LOSS_NAMES` (applied with `from_logits=True`), a `Loss` (with
            `from_logits=True` where it has that argument) or a callable
            `(y_true, logits) -> per-sample loss`.
        num_outputs: number of logits k; 1 means a binary model; None when not known yet.

    Raises:
        ValueError: for a name or `Loss` that would read the logits as probabilities, or that
            needs one-hot labels or real-valued targets.
    """
    binary = num_outputs == 1
    if isinstance(spec, str):
        if spec == "hinge":
            return BinaryHinge() if binary else MulticlassHinge()
        if spec == "crossentropy":
            if binary:
                return keras.losses.BinaryCrossentropy(from_logits=True)
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if spec in KERAS_LOSS_NAMES:
            cls, needs = KERAS_LOSS_NAMES[spec]
            if needs == 1 and num_outputs not in (None, 1):
                raise ValueError(f"loss={spec!r} is for a model with one logit; this model has "
                                 f"{num_outputs}. Use 'crossentropy' or 'hinge'.")
            return cls(from_logits=True)
        raise ValueError(
            f"Invalid value for argument loss: {spec!r}. Expected one of "
            f"{set(BUILTIN_LOSSES) | set(KERAS_LOSS_NAMES)}: keras_margin passes class-index "
            "labels and logits to the loss, so losses on one-hot labels, on probabilities or "
            "on real-valued targets are refused. A Loss object or callable (y_true, logits) -> "
            "per-sample loss is used as given.")
    if isinstance(spec, dict):
        spec = keras.losses.deserialize(spec)
    if isinstance(spec, keras.losses.Loss):
        if isinstance(spec, ONE_HOT_LOSSES):
            raise ValueError(
                f"The loss {type(spec).__name__} needs one-hot labels, but keras_margin passes "
                "class indices (batch,) to the loss. Use keras.losses."
                "SparseCategoricalCrossentropy(from_logits=True) (or loss='crossentropy').")
        if getattr(spec, "from_logits", True) is False or \
                spec.get_config().get("from_logits", True) is False:
            raise ValueError(
                f"The loss {type(spec).__name__} has from_logits=False: it would read the "
                f"model's logits as probabilities. Pass {type(spec).__name__}(from_logits=True).")
        reduction(spec)
        return spec
    if callable(spec):
        return _wrap(spec)
    raise ValueError(
        f"Invalid value for argument loss: {spec!r}. Expected one of "
        f"{set(BUILTIN_LOSSES)}, a Keras loss or a callable (y_true, logits) -> loss."
    )


# Keras losses that take one-hot (or probability) targets: refused, labels are class indices.
ONE_HOT_LOSSES = (keras.losses.CategoricalCrossentropy, keras.losses.CategoricalFocalCrossentropy,
                  keras.losses.CategoricalHinge, keras.losses.KLDivergence)
# How the trainers reduce a Loss's per-sample values over the batch, by its `reduction`.
REDUCTIONS = {"sum_over_batch_size": "mean", "mean": "mean", None: "mean", "none": "mean",
              "sum": "sum"}


def reduction(loss: keras.losses.Loss) -> str:
    """"mean" or "sum": how a trainer reduces `loss` over the batch (its `reduction`; None and
    "none" leave it to the trainer, which takes the mean). Other reductions are refused."""
    value = getattr(loss, "reduction", "sum_over_batch_size")
    if value not in REDUCTIONS:
        raise ValueError(f"Invalid value for the loss's reduction: {value!r}. keras_margin's "
                         f"trainers support {sorted(str(r) for r in REDUCTIONS)} "
                         "('sum_over_batch_size', Keras's default, is the batch mean).")
    return REDUCTIONS[value]


class _FunctionLoss(keras.losses.Loss):
    """A per-sample loss function as a Keras `Loss` (mean over the batch, sample weights)."""

    def __init__(self, fn: Any, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name or getattr(fn, "__name__", "loss"), **kwargs)
        self.fn = fn

    def call(self, y_true: Any, y_pred: Any):
        return self.fn(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "reduction": self.reduction}


@keras.saving.register_keras_serializable(package="keras_margin")
class MulticlassHinge(_FunctionLoss):
    """`multiclass_hinge` as a Keras `Loss` (sparse labels, logits)."""

    def __init__(self, name: str = "multiclass_hinge", **kwargs: Any) -> None:
        super().__init__(multiclass_hinge, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="keras_margin")
class BinaryHinge(_FunctionLoss):
    """`binary_hinge` as a Keras `Loss` (labels in {0, 1} or {-1, +1}, one logit)."""

    def __init__(self, name: str = "binary_hinge", **kwargs: Any) -> None:
        super().__init__(binary_hinge, name=name, **kwargs)


def _wrap(fn: Any) -> keras.losses.Loss:
    return _FunctionLoss(fn)


@keras.saving.register_keras_serializable(package="keras_margin")
def logit_accuracy(y_true: Any, logits: Any):
    """Per sample 1.0 where the logits' class is the label: argmax for k >= 2 logits, logit > 0
    for one (labels in {0, 1} or {-1, +1}). What the trainers measure for "accuracy"."""
    labels = ops.reshape(y_true, (-1,))
    if logits.shape[-1] == 1:
        predicted = ops.reshape(logits, (-1,)) > 0
        return ops.cast(predicted == (ops.cast(labels, logits.dtype) > 0), "float32")
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    return ops.cast(predicted == ops.cast(labels, "int32"), "float32")


class LogitAccuracy(keras.metrics.MeanMetricWrapper):
    """`logit_accuracy` as a Keras metric (what "accuracy" means for the trainers)."""

    def __init__(self, name: str = "accuracy", dtype: Any = None) -> None:
        super().__init__(logit_accuracy, name=name, dtype=dtype)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype}


keras.saving.register_keras_serializable(package="keras_margin")(LogitAccuracy)
