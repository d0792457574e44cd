"""The checked inputs of one measurement: what every attack and every certificate takes in.

`check_inputs` runs the entry checks once (finite x inside the box, labels in range, logits not
probabilities, unscaled images warned about) and returns numpy arrays in the working float type;
`probe_model` runs the model once on a few of them (the checks that need its outputs);
`predictions` and `logits_of` read the model on them in batches. Below both the attacks and
certify, so that proofs do not lean on attack internals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin._validation import (
    check_batch,
    check_box,
    check_finite_array,
    check_label_array,
    check_logits_model,
    check_probability_outputs,
    check_single_input,
    label_array,
    warn_if_unscaled,
)
from keras_margin.jacobian import call_logits


def lp_norms(v: np.ndarray, norm: str) -> np.ndarray:
    """Per-sample l2, linf or l1 norms of a numpy batch."""
    flat = np.reshape(v, (len(v), int(np.prod(np.shape(v)[1:])))).astype(np.float64)
    if norm == "l2":
        return np.sqrt((flat ** 2).sum(axis=1))
    if norm == "linf":
        return np.abs(flat).max(axis=1) if flat.shape[1] else np.zeros(len(v))
    return np.abs(flat).sum(axis=1)


def working_dtype(x: Any) -> str:
    """The dtype an attack computes in: float64 inputs stay float64 where the backend computes
    in it, everything else (integers, half precision) runs in float32."""
    dtype = keras.backend.standardize_dtype(getattr(x, "dtype", "float32"))
    if dtype == "float64" and (backend.NAME != "jax" or _jax_x64()):
        return "float64"
    return "float32"


def _jax_x64() -> bool:
    import jax

    return bool(jax.config.jax_enable_x64)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The checked inputs of one attack call."""

    x: np.ndarray
    labels: np.ndarray
    num_classes: int
    clip_min: float | None
    clip_max: float | None

    @property
    def box(self) -> tuple[float, float]:
        lo = -np.inf if self.clip_min is None else self.clip_min
        hi = np.inf if self.clip_max is None else self.clip_max
        return lo, hi


def check_inputs(model: Callable, x: Any, y: Any, clip_min: float | None,
                 clip_max: float | None, where: str, min_classes: int = 2) -> Inputs:
    """The checks every attack runs once at its entry; returns the inputs as numpy arrays.

    Refuses NaN/Inf in x, a reversed box, x outside the box, probabilities instead of logits,
    labels out of range; warns about unscaled 8-bit images. float64 inputs are kept.
    """
    if y is None:
        raise ValueError(f"{where} needs the labels y.")
    x = np.asarray(keras.ops.convert_to_numpy(x) if not isinstance(x, np.ndarray) else x)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{where}: x must hold numbers; received dtype {x.dtype}.")
    check_finite_array(x)
    clip_min, clip_max = check_box(clip_min, clip_max, x)
    if clip_min is None and clip_max is None:
        warn_if_unscaled(x, where)
    labels = label_array(keras.ops.convert_to_numpy(y) if not isinstance(y, np.ndarray) else y)
    x = x.astype(working_dtype(x))
    k = probe_model(model, x, labels)
    if k < min_classes:
        raise ValueError(f"{where} needs a model with k >= {min_classes} logits; this one has "
                         f"{k}. For one logit use margin_sensitivity or fgsm.")
    return Inputs(x, labels.astype(np.int32), k, clip_min, clip_max)


def predictions(model: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    """int32 (n,): the model's predicted classes, in batches."""
    return np.concatenate([logits_of(model, x[start:start + batch_size]).argmax(axis=1)
                           for start in range(0, len(x), batch_size)]).astype(np.int32)


def logits_of(model: Callable, x: np.ndarray) -> np.ndarray:
    """The logits of one batch as a numpy array."""
    return ops.convert_to_numpy(ops.stop_gradient(call_logits(model, ops.convert_to_tensor(x))))


def probe_model(model: Callable, x: Any, y: Any | None = None) -> int:
    """Eager checks shared by the attacks and evaluation; returns the number of logits k.

    Lengths of x and y, probabilities instead of logits (on the first 32 samples), labels in
    range. Runs once per public call, never inside the compiled attack loops.
    """
    check_logits_model(model)
    check_single_input(model)
    if y is not None:
        y = label_array(y)
    check_batch(np.asarray(x) if not hasattr(x, "shape") else x, y)
    probe = ops.convert_to_numpy(ops.stop_gradient(call_logits(model,
                                                                ops.convert_to_tensor(x[:32]))))
    check_probability_outputs(probe)
    if y is not None:
        check_label_array(y, probe.shape[1])
    return probe.shape[1]
