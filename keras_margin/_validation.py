"""Checks shared by the functional core and the Keras wrappers.

Every check either passes silently or raises an error that names the bad value and what is
allowed. Checks of *values* (label ranges, finiteness, the input box) run once, eagerly, at the
public entry points; inside compiled steps a trainer gets a boolean `valid` instead and skips a
bad batch (`class_indices`), since no backend can raise from compiled code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
from keras import ops

PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid", "log_softmax")


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Raises `ValueError` unless `value` is one of `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"Invalid value for argument {name}: {value!r}. Expected one of {set(allowed)}."
        )
    return value


def check_non_negative(name: str, value: Any, maximum: float | None = None) -> float:
    """Raises `ValueError` unless `value` is a finite number >= 0 (and <= `maximum`); strings
    and booleans are not numbers here."""
    try:
        if isinstance(value, (str, bytes, bool, np.bool_)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"Invalid value for argument {name}: {value!r}. Expected a number >= 0."
        ) from None
    if not math.isfinite(number) or number < 0 or (maximum is not None and number > maximum):
        upper = "" if maximum is None else f" and <= {maximum:g}"
        raise ValueError(
            f"Invalid value for argument {name}: {value!r}. Expected a finite number >= 0"
            f"{upper}."
        )
    return number


def check_positive(name: str, value: Any, resolved: bool = False) -> float:
    """Raises `ValueError` unless `value` is a finite number > 0; with `resolved` (a size added
    to inputs scaled to about 1: a budget, a step, a finite-difference probe), also unless it
    is at least the working float type's resolution at 1 (float32: 1.19e-7), below which
    x + value rounds to x and the argument does nothing, as zero would."""
    number = check_non_negative(name, value)
    if number == 0:
        raise ValueError(f"Invalid value for argument {name}: {value!r}. Expected a number > 0.")
    if resolved:
        import keras

        floor = float(np.finfo(keras.backend.floatx()).eps)
        if number < floor:
            raise ValueError(
                f"Invalid value for argument {name}: {value!r}. Expected a number >= {floor:.3g}"
                f" ({keras.backend.floatx()}'s resolution at 1): below it, x + {name} rounds "
                "to x for inputs in [0, 1] and it does nothing.")
    return number


def check_integer(name: str, value: Any, minimum: int = 1) -> int:
    """Raises `ValueError` unless `value` is a whole number >= `minimum` (1.5 is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not float(value).is_integer() or value < minimum:
        raise ValueError(f"Invalid value for argument {name}: {value!r}. Expected an integer "
                         f">= {minimum}.")
    return int(value)


def check_candidates(candidates: int | None, minimum: int = 1,
                     rival: str = "jacobian") -> int | None:
    """None or an integer >= `minimum` (a number of classes searched); only the Jacobian rule
    searches (rival="logit" takes the runner-up logit, so `candidates` would be ignored)."""
    if candidates is not None and rival != "jacobian":
        raise ValueError(f"candidates={candidates!r} applies to rival='jacobian' only; with "
                         f"rival={rival!r} the rival is the runner-up logit. Drop candidates "
                         "or use rival='jacobian'.")
    return None if candidates is None else check_integer("candidates", candidates, minimum)


def _activation_name(activation: Any) -> str | None:
    if activation is None:
        return None
    if isinstance(activation, str):
        return activation
    return getattr(activation, "__name__", None)


def output_layer(model: Any) -> Any:
    """The layer that produces a Sequential or functional model's output, else None."""
    if isinstance(model, keras.Sequential) and model.layers:
        return model.layers[-1]
    from keras_margin._keras_compat import output_tensors

    outputs = output_tensors(model)
    if isinstance(model, keras.Model) and outputs and len(outputs) == 1:
        history = getattr(outputs[0], "_keras_history", None)
        if history is not None:
            return history[0]
    return None


def check_logits_model(model: Any) -> None:
    """Raises `ValueError` if `model` visibly ends in a softmax or sigmoid (probabilities).

    The method and the attacks need logits: the margin f_y - f_j is measured before any
    normalisation. Nested Sequential/functional models are followed to their last layer.
    Probabilities computed by `keras.ops.softmax` inside a graph or a subclassed `call` are
    invisible here; `check_probability_outputs` catches them on the first batch.
    """
    layer = output_layer(model)
    seen = 0
    while layer is not None and seen < 16:
        name = _activation_name(getattr(layer, "activation", None))
        if isinstance(layer, keras.layers.Softmax):
            name = "softmax"
        if name in PROBABILITY_ACTIVATIONS:
            raise ValueError(
                f"The model's output layer {layer.name!r} applies {name!r}: keras_margin needs "
                f"a model that outputs logits. {_logits_fix(layer, name)} The trainers take "
                "their loss on logits themselves (compile() takes no loss); for probabilities "
                f"at prediction time, apply keras.ops.{name} to model.predict(x)."
            )
        inner = output_layer(layer) if isinstance(layer, keras.Model) else None
        layer, seen = inner, seen + 1


def _logits_fix(layer: Any, name: str) -> str:
    """What to change in the code that built `layer`, in the words of that code."""
    if isinstance(layer, (keras.layers.Softmax, keras.layers.Activation)):
        return f"Remove the layer {layer.name!r} (its input is the logits)."
    units = getattr(layer, "units", None)
    if isinstance(layer, keras.layers.Dense) and units is not None:
        return (f"Build it as layers.Dense({units}) instead of layers.Dense({units}, "
                f"activation={name!r}).")
    return f"Build it with activation=None instead of activation={name!r}."


def check_single_input(model: Any) -> None:
    """Raises `ValueError` for a base with several inputs (not supported)."""
    inputs = getattr(model, "inputs", None) if isinstance(model, keras.Model) else None
    try:
        count = len(inputs) if inputs is not None else 1
    except (TypeError, ValueError, AttributeError):
        count = 1
    if count > 1:
        raise ValueError(
            f"The base model has {count} inputs; keras_margin differentiates the logits with "
            "respect to one input tensor. Concatenate the inputs into one tensor (and split "
            "them inside the model), or attack/regularize one input with the others fixed.")


def check_probability_outputs(logits: Any) -> None:
    """Raises `ValueError` when a batch of outputs looks like softmax probabilities.

    For models whose last layer cannot be inspected (subclassed models, `keras.ops.softmax`
    in a functional graph, plain callables). Rows of k >= 2 values in [0, 1] that sum to 1 are
    practically never logits.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2 or logits.shape[0] == 0:
        return
    in_unit = np.all((logits >= 0) & (logits <= 1))
    # Some value strictly inside (0, 1): a softmax never gives exact 0s and 1s, while logits
    # such as one-hot rows [1, 0] (a model that outputs its decision) are no probabilities.
    inside = np.any((logits > 0) & (logits < 1))
    if in_unit and inside and np.allclose(logits.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(
            "The model's outputs are in [0, 1] and every row sums to 1: these are probabilities "
            "(softmax), but keras_margin needs logits. Remove the final softmax.")


def check_batch(x: Any, y: Any | None = None) -> None:
    """Raises `ValueError` on an empty batch or on x and y of different lengths."""
    n = x.shape[0]
    if n is not None and n == 0:
        raise ValueError("Received an empty batch: x has 0 samples.")
    if y is not None and y.shape[0] is not None and n is not None and y.shape[0] != n:
        raise ValueError(
            f"x and y have different lengths: x has {n} samples, y has {y.shape[0]} labels.")


def check_fit_arrays(x: Any, y: Any, where: str) -> None:
    """The inputs of a trainer's `fit` / `evaluate`: one input tensor, and labels beside an
    array (a dataset yields its own)."""
    if isinstance(x, (list, tuple)):
        raise ValueError(
            f"{where} received x as a {type(x).__name__} of {len(x)} arrays: keras_margin's "
            "trainers take one input tensor (they differentiate the logits with respect to "
            "it). Concatenate the inputs into one array, and split them inside the model.")
    array_like = isinstance(x, np.ndarray) or (hasattr(x, "shape") and hasattr(x, "dtype")
                                               and not hasattr(x, "element_spec"))
    if array_like and y is None:
        raise ValueError(f"{where} needs the labels y beside the array x (class indices of "
                         "shape (batch,)); a tf.data.Dataset or PyDataset yields (x, y) pairs "
                         "itself.")


def as_float_inputs(x: Any, dtype: str | None = None):
    """Inputs as a float tensor; integer images (uint8) are cast, not rescaled."""
    x = ops.convert_to_tensor(x)
    if dtype is not None:
        return ops.cast(x, dtype)
    if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype)):
        x = ops.cast(x, keras.backend.floatx())
    return x


def label_array(y: Any) -> np.ndarray:
    """Labels as a 1-D numpy array; string and other non-numeric labels are refused."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"Labels must be class indices of shape (batch,) or (batch, 1); received shape "
            f"{y.shape}. One-hot labels are not accepted: pass argmax(y, axis=-1).")
    if y.dtype.kind not in "iufb":
        raise ValueError(f"Labels must be integer class indices; received dtype {y.dtype} "
                         f"(e.g. {y[:3].tolist()}). Map class names to 0..k-1 first.")
    return y


def check_label_array(y: Any, num_classes: int) -> None:
    """Raises `ValueError` on labels outside [0, k) (or, for one logit, {0, 1} / {-1, +1})."""
    y = label_array(y)
    if y.size == 0:
        return
    if num_classes == 1:
        bad = ~np.isin(y, (-1, 0, 1))
        if bad.any():
            raise ValueError(
                f"Binary labels must be in {{0, 1}} or {{-1, +1}}; found {np.unique(y[bad])[:10]}.")
        return
    bad = (y < 0) | (y >= num_classes) | (y != np.round(y))
    if bad.any():
        raise ValueError(
            f"Labels must be integers in [0, {num_classes}); found {np.unique(y[bad])[:10]}.")


def class_indices(y: Any, num_classes: int):
    """(labels, valid): int32 class indices (batch,) and whether every label is a valid one.

    Accepts shapes (batch,) and (batch, 1). For one logit (binary, eq. 14) the labels must be in
    {0, 1} or {-1, +1} and are returned as {0, 1}. `valid` is a boolean scalar tensor, usable
    inside compiled steps where nothing can raise; invalid labels are returned as 0, so that
    the step computes something finite (and then discards it).
    """
    y = ops.convert_to_tensor(y)
    if len(y.shape) == 2 and y.shape[1] == 1:
        y = ops.squeeze(y, axis=1)
    if len(y.shape) != 1:
        raise ValueError(
            f"Labels must be class indices of shape (batch,) or (batch, 1); received shape "
            f"{tuple(y.shape)}. One-hot labels are not accepted: pass argmax(y, axis=-1).")
    values = ops.cast(y, "float32")
    if num_classes == 1:
        valid = ops.all((values == 0) | (values == 1) | (values == -1))
        return ops.cast(values > 0, "int32"), valid
    ok = (values >= 0) & (values < num_classes) & (values == ops.round(values))
    return ops.cast(ops.where(ok, values, 0.0), "int32"), ops.all(ok)


def check_finite_array(x: Any, name: str = "x") -> None:
    """Raises `ValueError` if a numpy (or eager) array holds NaN or Inf."""
    array = np.asarray(x)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        count = int((~np.isfinite(array)).reshape(len(array), -1).any(axis=1).sum())
        raise ValueError(f"{name} contains NaN or Inf ({count} of {len(array)} samples); "
                         "keras_margin refuses to use such inputs.")


def check_box(clip_min: float | None, clip_max: float | None, x: Any | None = None
              ) -> tuple[float | None, float | None]:
    """Checks an input box: finite numbers with clip_min < clip_max, and x inside it.

    Inputs outside the box are refused rather than projected first: projecting them would count
    the projection itself as adversarial perturbation.
    """
    for name, value in (("clip_min", clip_min), ("clip_max", clip_max)):
        if value is not None and (not isinstance(value, (int, float, np.number))
                                  or not math.isfinite(value)):
            raise ValueError(f"Invalid value for argument {name}: {value!r}. Expected a finite "
                             "number or None.")
    if clip_min is not None and clip_max is not None and not clip_min < clip_max:
        raise ValueError(f"The input box is empty or reversed: clip_min={clip_min!r} must be "
                         f"smaller than clip_max={clip_max!r}.")
    if x is not None and (clip_min is not None or clip_max is not None):
        array = np.asarray(x)
        low, high = float(array.min()), float(array.max())
        if (clip_min is not None and low < clip_min) or (clip_max is not None and high > clip_max):
            raise ValueError(
                f"x has values in [{low:g}, {high:g}], outside the input box [{clip_min}, "
                f"{clip_max}]. keras_margin measures perturbations from x itself, so x must lie "
                "in the box: rescale x, or widen or drop the box.")
    return (None if clip_min is None else float(clip_min),
            None if clip_max is None else float(clip_max))


def check_box_pair(name: str, value: Any) -> tuple[float, float]:
    """A (min, max) box given as one argument: two finite numbers with min < max."""
    pair = value.tolist() if isinstance(value, np.ndarray) else value
    numbers = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)
        for v in pair)
    if not numbers or not pair[0] < pair[1]:
        raise ValueError(f"Invalid value for argument {name}: {value!r}. Expected a pair "
                         "(min, max) of finite numbers with min < max, or None.")
    return float(pair[0]), float(pair[1])


def warn_if_unscaled(x: Any, where: str) -> bool:
    """Warns (and returns True) when x looks like raw 8-bit images (integers or values in
    [0, 255]) or like images scaled twice (all in [0, 1.5/255]). The paper's budgets (FGSM
    eps 0.2, DeepFool's step clip 0.5) assume [0, 1]."""
    array = np.asarray(x)
    if array.size == 0:
        return False
    if array.dtype.kind in "iu" and array.max() > 1:
        kind = f"integer ({array.dtype}) inputs with values up to {array.max()}"
    elif array.dtype.kind == "f" and array.min() >= 0 and array.max() > 2:
        kind = f"inputs in [0, {float(array.max()):g}]"
    elif array.dtype.kind == "f" and array.min() >= 0 and 0 < array.max() <= 1.5 / 255:
        warnings.warn(
            f"{where}: inputs in [0, {float(array.max()):.3g}] look like images divided by 255 "
            "twice (keras_margin.datasets.load already scales them to [0, 1]; "
            "datasets.load_data gives keras.datasets' uint8 arrays). Losses, margins and the "
            "attacks' budgets assume images in [0, 1].", UserWarning, stacklevel=3)
        return True
    else:
        return False
    warnings.warn(
        f"{where}: {kind} look like unscaled 8-bit images. Losses, margins and the attacks' "
        "budgets (FGSM eps 0.2, DeepFool step clip 0.5) assume images scaled to [0, 1]: "
        "divide x by 255.", UserWarning, stacklevel=3)
    return True

