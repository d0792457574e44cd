"""RobustnessCallback: DeepFool rho_adv and FGSM error after each epoch, into Keras's logs."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from keras_margin._validation import check_batch
from keras_margin.evaluation import evaluate_robustness


class RobustnessCallback(keras.callbacks.Callback):
    """Measures robustness on a fixed validation subset and writes it into the epoch's logs.

    The numbers (`val_rho_adv`, `val_fgsm_error`, `val_deepfool_success`) land in
    `History.history`, `CSVLogger`, `TensorBoard` and the progress bar. Its cost is bounded: one
    FGSM step and at most `max_iter` DeepFool steps (each two forward and k - 1 backward passes) on
    `max_samples` points, every `every` epochs. Epochs in between get NaN, so CSV columns exist
    from the first epoch.

    Args:
        x_val, y_val: validation inputs and class indices.
        every: evaluate every this many epochs.
        fgsm_eps: FGSM budget; None skips FGSM.
        max_samples: a fixed random subset of this size (drawn once, with `seed`).
        batch_size: samples per attack batch.
        seed: seed of the subset.
        prefix: prefix of the log keys.
        **evaluate_kwargs: passed to `evaluate_robustness` (clip_min, norm, max_iter, ...).

    Example:
        >>> model.fit(x, y, callbacks=[RobustnessCallback(x_val, y_val, every=1)])
    """

    def __init__(self, x_val: Any, y_val: Any, every: int = 1, fgsm_eps: float | None = 0.2,
                 max_samples: int | None = 1000, batch_size: int = 500, seed: int = 0,
                 prefix: str = "val_", **evaluate_kwargs: Any) -> None:
        super().__init__()
        x_val, y_val = np.asarray(x_val), np.asarray(y_val).reshape(-1)
        check_batch(x_val, y_val)
        if int(every) < 1:
            raise ValueError(f"Invalid value for argument every: {every!r}. Expected >= 1.")
        if max_samples is not None and len(x_val) > max_samples:
            keep = np.sort(np.random.default_rng(seed).choice(len(x_val), max_samples,
                                                              replace=False))
            x_val, y_val = x_val[keep], y_val[keep]
        self.x_val, self.y_val = x_val, y_val
        self.every, self.fgsm_eps, self.batch_size = int(every), fgsm_eps, batch_size
        self.prefix, self.evaluate_kwargs = prefix, evaluate_kwargs
        self.last_report: dict[str, Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        keys = ("rho_adv", "fgsm_error", "deepfool_success")
        if (epoch + 1) % self.every:
            logs.update({self.prefix + key: math.nan for key in keys})
            return
        target = getattr(self.model, "base", self.model)
        report = evaluate_robustness(target, self.x_val, self.y_val, fgsm_eps=self.fgsm_eps,
                                     batch_size=self.batch_size, **self.evaluate_kwargs)
        self.last_report = report
        values = (report["rho_adv"], report["fgsm_error"], report["deepfool_success_rate"])
        logs.update({self.prefix + key: value for key, value in zip(keys, values)})
