"""Robustness measures of the paper: rho_adv (eq. 20) by DeepFool, and error under FGSM."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_margin._validation import check_batch, check_label_array, check_logits_model
from keras_margin.attacks.deepfool import deepfool
from keras_margin.attacks.fgsm import fgsm
from keras_margin.jacobian import call_logits


def relative_norms(x: np.ndarray, perturbation: np.ndarray) -> np.ndarray:
    """||r(x)||_2 / ||x||_2 per sample (the summand of eq. 20)."""
    n = len(x)
    r = np.linalg.norm(np.reshape(perturbation, (n, -1)), axis=1)
    scale = np.linalg.norm(np.reshape(x, (n, -1)), axis=1)
    return np.divide(r, scale, out=np.zeros_like(r), where=scale > 0)


def rho_adv(x: np.ndarray, perturbation: np.ndarray, correct: np.ndarray) -> float:
    """Eq. (20): mean of ||r(x)||_2 / ||x||_2 over the correctly classified points (nan if none)."""
    correct = np.asarray(correct, bool)
    if not correct.any():
        return math.nan
    return float(relative_norms(x, perturbation)[correct].mean())


def evaluate_robustness(model: Callable, x: Any, y: Any, fgsm_eps: float | None = 0.2,
                        batch_size: int = 500, clip_min: float | None = None,
                        clip_max: float | None = None, verbose: int = 0,
                        **deepfool_kwargs: Any) -> dict[str, Any]:
    """Clean error, error under FGSM and DeepFool robustness rho_adv (eq. 20) of a model.

    Args:
        model: a Keras model or callable returning logits (k >= 2).
        x, y: inputs and class indices.
        fgsm_eps: FGSM budget (the paper: 0.2 on MNIST, 0.05 on CIFAR-10); None skips FGSM.
        batch_size: samples per attack batch.
        clip_min, clip_max: optional input box for both attacks.
        verbose: 1 shows a progress bar.
        **deepfool_kwargs: passed to `attacks.deepfool` (norm, max_iter, overshoot, ...).

    Returns:
        dict with "error", "fgsm_error" (over all points, as the paper), "rho_adv" (over the
        correctly classified points), "deepfool_success_rate" (over the correctly classified
        points), "distances" (numpy, ||r||/||x|| per sample, 0 where misclassified) and "n".

    Example:
        >>> report = evaluate_robustness(model, x_test, y_test, fgsm_eps=0.2)
        >>> report["rho_adv"], report["fgsm_error"]
    """
    check_logits_model(model)
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1)
    check_batch(x, y)
    if int(batch_size) < 1:
        raise ValueError(f"Invalid value for argument batch_size: {batch_size!r}. Expected >= 1.")
    n = len(x)
    wrong, fgsm_wrong = np.zeros(n, bool), np.zeros(n, bool)
    perturbation = np.zeros(x.shape, np.float32)
    success = np.zeros(n, bool)
    progbar = keras.utils.Progbar(n, unit_name="sample", verbose=verbose)
    clip = None if clip_min is None and clip_max is None else (
        -np.inf if clip_min is None else clip_min, np.inf if clip_max is None else clip_max)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        xb, yb = tf.convert_to_tensor(x[sl], tf.float32), y[sl]
        if start == 0:
            check_label_array(yb, call_logits(model, xb[:1]).shape[-1])
        wrong[sl] = np.argmax(call_logits(model, xb).numpy(), axis=1) != yb
        if fgsm_eps is not None:
            x_adv = fgsm(model, xb, yb, eps=fgsm_eps, clip=clip)
            fgsm_wrong[sl] = np.argmax(call_logits(model, x_adv).numpy(), axis=1) != yb
        res = deepfool(model, xb, yb, target="label", clip_min=clip_min, clip_max=clip_max,
                       **deepfool_kwargs)
        perturbation[sl] = res.perturbation.numpy()
        success[sl] = res.success.numpy()
        progbar.update(sl.stop)
    correct = ~wrong
    distances = relative_norms(x.astype(np.float32), perturbation)
    distances[wrong] = 0.0
    return {
        "error": float(wrong.mean()),
        "fgsm_error": float(fgsm_wrong.mean()) if fgsm_eps is not None else math.nan,
        # eq. (20) from the distances just computed (what `rho_adv` would compute again)
        "rho_adv": float(distances[correct].mean()) if correct.any() else math.nan,
        "deepfool_success_rate": float(success[correct].mean()) if correct.any() else math.nan,
        "distances": distances,
        "n": n,
    }
