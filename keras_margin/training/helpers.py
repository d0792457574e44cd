"""The callbacks that the trainers add to `fit` themselves, and their order.

Below the measurements: a callback that writes into the epoch's logs (`RobustnessCallback`)
says so by a class attribute, so the trainers order it first without importing it.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras


class SkippedBatchesLogger(keras.callbacks.Callback):
    """Warns at the end of an epoch in which batches were skipped (NaN/Inf inputs, labels out
    of range, a non-finite objective; compiled steps cannot raise): training batches, which
    left the weights untouched, and validation batches, which were left out of the val_*
    numbers, each by name. The trainers report `skipped_batches` (and `val_skipped_batches`)
    among their metrics, so CSVLogger and TensorBoard have the columns; they add this callback
    ahead of the user's."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        training, validation = (float(logs.get(key, 0.0) or 0.0)
                                for key in ("skipped_batches", "val_skipped_batches"))
        if training:
            warnings.warn(
                f"Epoch {epoch + 1}: {int(training)} training batch(es) left the weights "
                "untouched: they held NaN/Inf inputs, inputs outside the trainer's box (AT's "
                "clip), labels outside the model's classes, or "
                "gave a non-finite objective (too large a C or learning rate?). Check the "
                "input pipeline.", UserWarning, stacklevel=2)
        if validation:
            warnings.warn(
                f"Epoch {epoch + 1}: {int(validation)} validation batch(es) were left out of "
                "the val_* numbers: they held NaN/Inf inputs or labels outside the model's "
                "classes. Check validation_data.", UserWarning, stacklevel=2)


def with_helpers(callbacks: Any) -> list:
    """The trainers' callbacks for `fit`: the callbacks that write numbers into the epoch's
    logs first (a class attribute `writes_epoch_logs = True`, as `RobustnessCallback` has: the
    trainers need not import it), then the skipped-batch logger, then the user's others (Keras
    hands the epoch's logs to them in list order)."""
    if isinstance(callbacks, keras.callbacks.Callback):
        callbacks = [callbacks]
    callbacks = list(callbacks or [])
    robustness = [c for c in callbacks if getattr(c, "writes_epoch_logs", False)]
    others = [c for c in callbacks if not getattr(c, "writes_epoch_logs", False)
              and not isinstance(c, SkippedBatchesLogger)]
    return robustness + [SkippedBatchesLogger()] + others


__all__ = ["SkippedBatchesLogger", "with_helpers"]
