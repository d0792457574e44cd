"""RobustnessCallback: robustness of the model after each epoch, into Keras's logs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_margin._validation import (
    check_batch,
    check_finite_array,
    check_integer,
    check_label_array,
    label_array,
    probe_model,
)
from keras_margin.attacks.apgd import APGD
from keras_margin.attacks.deepfool import DeepFool
from keras_margin.evaluation import (
    _deepfool_settings,
    budget_key,
    check_budgets,
    evaluate_robustness,
    resolve_attack,
)


class RobustnessCallback(keras.callbacks.Callback):
    """Measures robustness on a fixed validation subset and writes it into the epoch's logs.

    The numbers (`val_rho_adv`, `val_fgsm_error`, `val_deepfool_success`, and with stronger
    attacks `val_rho_<attack>`, `val_rho_min`, `val_robust_accuracy_<norm>_<eps>`) land in
    `History.history`, `CSVLogger`, `TensorBoard` and the progress bar. Keras hands the epoch's
    logs to the callbacks in list order, so another logger must come after this callback: the
    trainers of keras-margin (`MarginModel`, ...) put it first themselves; with a plain Keras
    model, list it before `CSVLogger` and `TensorBoard`. Epochs in between get NaN, so CSV
    columns exist from the first epoch.

    Its cost is bounded: one FGSM step and at most `max_iter` DeepFool steps (each two forward
    and k - 1 backward passes) on `max_samples` points every `every` epochs, plus the stronger
    attacks asked for; give them cheap settings (e.g. `attacks.FMN(steps=20)`,
    `apgd=attacks.APGD(steps=20)`).

    Args:
        x_val, y_val: validation inputs and class indices.
        every: evaluate every this many epochs.
        fgsm_eps: FGSM budget; None skips FGSM.
        max_samples: a fixed random subset of this size (drawn once, with `seed`); None: all.
        batch_size: samples attacked side by side.
        seed: seed of the subset.
        prefix: prefix of the log keys.
        clip_min, clip_max: optional input box for the attacks.
        attacks, linf_eps, l2_eps, apgd: the stronger attacks, as in `evaluate_robustness`.
        deepfool: DeepFool's settings, or give them as keywords (norm, max_iter, overshoot,
            step_clip, candidates).

    Every argument is checked here, and the labels against the model when training begins,
    so a mistake fails before the first epoch trains.

    Example:
        >>> model.fit(x, y, validation_data=(x_val, y_val),
        ...           callbacks=[RobustnessCallback(x_val, y_val, every=1)])
    """

    def __init__(self, x_val: Any, y_val: Any, every: int = 1, fgsm_eps: float | None = 0.2,
                 max_samples: int | None = 1000, batch_size: int = 500, seed: int = 0,
                 prefix: str = "val_", clip_min: float | None = None,
                 clip_max: float | None = None, attacks: Sequence[Any] = (),
                 linf_eps: Sequence[float] = (), l2_eps: Sequence[float] = (),
                 apgd: APGD | None = None, deepfool: DeepFool | None = None,
                 **deepfool_kwargs: Any) -> None:
        super().__init__()
        x_val, y_val = np.asarray(x_val), label_array(y_val)
        check_batch(x_val, y_val)
        check_finite_array(x_val, "x_val")
        self.every = check_integer("every", every)
        self.batch_size = check_integer("batch_size", batch_size)
        if max_samples is not None:
            max_samples = check_integer("max_samples", max_samples)
        if np.any(y_val < 0):
            raise ValueError(f"y_val holds negative labels {np.unique(y_val[y_val < 0])[:5]}; "
                             "expected class indices.")
        if max_samples is not None and len(x_val) > max_samples:
            keep = np.sort(np.random.default_rng(seed).choice(len(x_val), max_samples,
                                                              replace=False))
            x_val, y_val = x_val[keep], y_val[keep]
        self.x_val, self.y_val = x_val, y_val
        self.fgsm_eps, self.prefix = fgsm_eps, prefix
        self.settings = {
            "fgsm_eps": fgsm_eps, "batch_size": self.batch_size, "clip_min": clip_min,
            "clip_max": clip_max, "attacks": [resolve_attack(a) for a in attacks],
            "linf_eps": check_budgets("linf_eps", linf_eps),
            "l2_eps": check_budgets("l2_eps", l2_eps), "apgd": apgd,
            "deepfool": _deepfool_settings(deepfool, deepfool_kwargs)}
        self.keys = ["rho_adv", "fgsm_error", "deepfool_success"]
        if self.settings["attacks"]:
            self.keys += [f"rho_{a.name}" for a in self.settings["attacks"]] + ["rho_min"]
        self.keys += [budget_key(norm, eps) for norm in ("linf", "l2")
                      for eps in self.settings[f"{norm}_eps"]]
        self.last_report: dict[str, Any] | None = None

    def _target(self) -> Any:
        return getattr(self.model, "base", self.model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        k = probe_model(self._target(), self.x_val[:32])
        if k < 2:
            raise ValueError("RobustnessCallback needs a model with k >= 2 logits (DeepFool "
                             "attacks the label against the other classes); this model has "
                             "one. Measure a binary model with attacks.fgsm.")
        check_label_array(self.y_val, k)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        if (epoch + 1) % self.every:
            logs.update({self.prefix + key: math.nan for key in self.keys})
            return
        report = evaluate_robustness(self._target(), self.x_val, self.y_val, **self.settings)
        self.last_report = report
        values = {**report, "deepfool_success": report["deepfool_success_rate"]}
        logs.update({self.prefix + key: values.get(key, math.nan) for key in self.keys})
