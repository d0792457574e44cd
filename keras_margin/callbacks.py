"""RobustnessCallback: robustness after each epoch, in Keras's logs.

`SkippedBatchesLogger` and `with_helpers`, the callbacks the trainers add to `fit` themselves,
live below the measurements in `keras_margin.training.helpers` and are importable from here.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_margin._validation import (
    check_batch,
    check_box,
    check_choice,
    check_finite_array,
    check_integer,
    check_label_array,
    label_array,
)
from keras_margin.evaluation import EvaluationPlan, evaluate_robustness
from keras_margin.inputs import probe_model
from keras_margin.training.helpers import SkippedBatchesLogger, with_helpers


class RobustnessCallback(keras.callbacks.Callback):
    """Measures robustness on a fixed validation subset and writes it into the epoch's logs.

    The numbers (`val_rho_adv`, `val_fgsm_error`, `val_deepfool_success`, and with stronger
    attacks `val_rho_<attack>`, `val_rho_min`, `val_robust_accuracy_<norm>_<eps>`) land in
    `History.history`, `CSVLogger`, `TensorBoard` and the progress bar. Keras hands the epoch's
    logs to the callbacks in list order, so another logger must come after this callback: the
    trainers of keras-margin (`MarginModel`, ...) put it first themselves; with a plain Keras
    model, list it before `CSVLogger` and `TensorBoard`.

    It evaluates the first epoch of every `fit` and then every `every`-th epoch; the epochs in
    between carry no robustness numbers (CSVLogger, whose columns come from the first epoch,
    writes NA there; `History` lists hold the evaluated epochs only, and `self.history` holds
    them by epoch). Its cost is bounded: one FGSM step and at most `max_iter` DeepFool steps
    (each two forward and k - 1 backward passes) on `max_samples` points, plus the stronger
    attacks asked for; give them cheap settings (e.g. `attacks.FMN(steps=20)`,
    `apgd=attacks.APGD(steps=20)`).

    Args:
        x_val, y_val: validation inputs and class indices.
        every: evaluate every this many epochs.
        plan: an `EvaluationPlan` (default: the paper's, DeepFool and FGSM at 0.2).
        max_samples: a fixed random subset of this size (drawn once, with `seed`); None: all.
        batch_size: samples attacked side by side.
        seed: seed of the subset.
        prefix: prefix of the log keys.
        verbose: 1 shows each attack's progress, named, while the callback evaluates, as
            `fit` shows its own (a live bar, or with `fit(verbose=2)` one line per attack);
            0 is quiet.
        **settings: `EvaluationPlan` fields by keyword (fgsm_eps, clip_min, clip_max, attacks,
            linf_eps, l2_eps, apgd, deepfool, autoattack) or DeepFool's settings (max_iter,
            overshoot, step_clip, candidates), as for `evaluate_robustness`; with
            `autoattack=True` the ensemble's accuracy lands in History as
            `val_autoattack_accuracy_<norm>_<eps>`.

    Every argument is checked here, and the labels against the model when training begins,
    so a mistake fails before the first epoch trains.

    Example:
        >>> model.fit(x, y, validation_data=(x_val, y_val),
        ...           callbacks=[RobustnessCallback(x_val, y_val, every=1)])
    """

    writes_epoch_logs = True  # the trainers put it before the other callbacks

    def __init__(self, x_val: Any, y_val: Any, every: int = 1,
                 plan: EvaluationPlan | None = None, max_samples: int | None = 1000,
                 batch_size: int = 500, seed: int = 0, prefix: str = "val_",
                 verbose: int = 1, **settings: Any) -> None:
        super().__init__()
        x_val, y_val = np.asarray(x_val), label_array(y_val)
        check_batch(x_val, y_val)
        check_finite_array(x_val, "x_val")
        self.every = check_integer("every", every)
        self.batch_size = check_integer("batch_size", batch_size)
        self.verbose = check_choice("verbose", verbose, (0, 1))
        if max_samples is not None:
            max_samples = check_integer("max_samples", max_samples)
        check_integer("seed", seed, minimum=0)
        if not isinstance(prefix, str):
            raise ValueError(f"Invalid value for argument prefix: {prefix!r}. Expected a string.")
        if np.any(y_val < 0):
            raise ValueError(f"y_val holds negative labels {np.unique(y_val[y_val < 0])[:5]}; "
                             "expected class indices.")
        if max_samples is not None and len(x_val) > max_samples:
            keep = np.sort(np.random.default_rng(seed).choice(len(x_val), max_samples,
                                                              replace=False))
            x_val, y_val = x_val[keep], y_val[keep]
        self.x_val, self.y_val, self.prefix = x_val, y_val, prefix
        settings = {k: v for k, v in settings.items()
                    if not (k in ("apgd", "deepfool") and v is None)}
        self.plan = EvaluationPlan.resolve(plan, settings)
        check_box(self.plan.clip_min, self.plan.clip_max, x_val)  # x_val inside the box
        self.keys = ["rho_adv", "fgsm_error", "deepfool_success"]
        if self.plan.attacks:
            self.keys += [f"rho_{a.name}" for a in self.plan.attacks] + ["rho_min"]
        self.keys += [threat.key("robust_accuracy") for threat in self.plan.threat_models]
        if self.plan.autoattack:
            self.keys += [threat.key("autoattack_accuracy") for threat in self.plan.threat_models]
        self.last_report = None
        self.history: dict[str, list] = {}
        self._first = True

    def _target(self) -> Any:
        return getattr(self.model, "base", self.model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        expected = _input_shape(self._target())
        if expected is not None and (len(expected) != self.x_val.ndim or any(
                e is not None and e != s for e, s in zip(expected[1:], self.x_val.shape[1:]))):
            raise ValueError(f"RobustnessCallback: x_val has samples of shape "
                             f"{self.x_val.shape[1:]}, but the model takes {tuple(expected[1:])}.")
        k = probe_model(self._target(), self.x_val[:32])
        if k < 2:
            raise ValueError("RobustnessCallback needs a model with k >= 2 logits (DeepFool "
                             "attacks the label against the other classes); this model has "
                             "one. Measure a binary model with attacks.fgsm.")
        check_label_array(self.y_val, k)
        self._first = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None or not (self._first or (epoch + 1) % self.every == 0):
            return
        self._first = False
        shown = fit_verbosity(self.params) if self.verbose else 0
        report = evaluate_robustness(self._target(), self.x_val, self.y_val, self.plan,
                                     batch_size=self.batch_size, verbose=shown)
        self.last_report = report
        values = {**report.to_dict(), "deepfool_success": report.deepfool_success_rate}
        numbers = {self.prefix + key: values.get(key, float("nan")) for key in self.keys}
        logs.update(numbers)
        for key, value in {"epoch": epoch, **numbers}.items():
            self.history.setdefault(key, []).append(value)


def _input_shape(model: Any) -> tuple | None:
    """The model's input shape where it declares one (None: a subclassed model)."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None
    return tuple(shape) if isinstance(shape, (tuple, list)) and (
        not shape or not isinstance(shape[0], (tuple, list))) else None


def fit_verbosity(params: dict | None) -> int:
    """`fit`'s own verbosity as Keras's progress bar reads it: 1 live bars, 2 one line per
    attack at its end, 0 quiet. Keras hands callbacks the raw argument, so `"auto"` (the
    default of `fit`) means 1, as in `keras.callbacks.ProgbarLogger`."""
    verbose = (params or {}).get("verbose", 1)
    if isinstance(verbose, (bool, np.bool_)) or verbose not in (0, 1, 2):
        return 1 if verbose == "auto" or verbose is True else int(bool(verbose))
    return int(verbose)


__all__ = ["RobustnessCallback", "SkippedBatchesLogger", "with_helpers"]
