"""A run folder's place and its files: the folder of a (row, seed, configuration), the check
that it holds the same run, the checkpoint and model, the per-point arrays (each written
atomically, by `files`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import keras
import numpy as np

from keras_margin.experiments.files import read_json, run_identity, write_npz
from keras_margin.experiments.rows import Row
from keras_margin.robustness_report import RobustnessReport

log = logging.getLogger("keras_margin.experiments")


class ConfigMismatchError(ValueError):
    """An output folder holds a run of a different configuration."""


def config_name(row: Row, quick: bool = False, dtype_policy: str = "float32") -> str:
    """The folder name of a row's configuration: data set, epochs, protocol, precision.

    For example `mnist-e20-reference-float32`; QUICK runs end in `-quick`.
    """
    name = f"{row.dataset}-e{row.epochs}-{row.protocol}-{dtype_policy}"
    return name + ("-quick" if quick else "")


def run_dir(out: str, row: Row, seed: int, quick: bool = False,
            dtype_policy: str = "float32") -> str:
    """`out/<table>/<row>/<configuration>/seed-<seed>`."""
    return os.path.join(out, row.table, row.name, config_name(row, quick, dtype_policy),
                        f"seed-{seed}")


def check_same_config(path: str, config: dict[str, Any]) -> None:
    """Raises `ConfigMismatchError` naming the keys where the stored config differs."""
    stored = run_identity(read_json(path))
    ours = run_identity(config)
    differ = sorted(k for k in set(stored) | set(ours) if stored.get(k) != ours.get(k))
    if differ:
        detail = ", ".join(f"{k}: {stored.get(k)!r} there vs {ours.get(k)!r} now"
                           for k in differ[:5])
        raise ConfigMismatchError(
            f"{os.path.dirname(path)} holds a run of a different configuration ({detail}). "
            "Use another --out folder; nothing was overwritten.")


def load_checkpoint(path: str) -> keras.Model:
    try:
        return keras.models.load_model(path)
    except Exception as err:  # Keras says "File not found" for a truncated zip
        raise ValueError(
            f"{path} exists but cannot be loaded ({type(err).__name__}: {err}); it is "
            "truncated or corrupt. A checkpoint: delete it and state.json beside it to "
            "restart the run from epoch 0; a finished run's model.keras: delete the run's "
            "metrics.json too, and the runner trains it again.") from None


def save_arrays(folder: str, report: RobustnessReport, suffix: str = "") -> dict[str, Any]:
    """Saves the report's per-point arrays into `points<suffix>.npz` (compressed) in
    `folder`; returns its scalars and flags (what metrics.json holds)."""
    arrays = report.arrays()
    if arrays:
        write_npz(os.path.join(folder, f"points{suffix}.npz"), arrays)
    return report.scalars()


def base_predictions(model: Any, x: np.ndarray) -> np.ndarray:
    """The classes `model` gives `x`, int32."""
    logits = keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(x), training=False))
    return logits.argmax(axis=1).astype(np.int32)


def label_adversarials(folder: str, model: Any) -> bool:
    """Adds the class the model gives each adversarial example to a run's adversarial.npz
    (runs made before the runner recorded it); True if it did."""
    path = os.path.join(folder, "adversarial.npz")
    if not os.path.exists(path):
        return False
    data = dict(np.load(path))
    if "adversarial_class" in data:
        return False
    data["adversarial_class"] = base_predictions(model, data["x_adv"])
    write_npz(path, data)
    return True


def record_fgsm_points(folder: str, model: Any, x: np.ndarray, y: np.ndarray,
                       row: Row) -> bool:
    """Adds each test point's FGSM outcome ("fgsm_wrong") to points.npz of a run finished
    before the runner recorded it, so that its FGSM error recomputes from points; only when
    the recomputed error equals metrics.json's (else warns, and writes nothing). True if it
    wrote."""
    from keras_margin.attacks import base as attack_base
    from keras_margin.attacks.fgsm import FGSM

    path = os.path.join(folder, "points.npz")
    arrays = dict(np.load(path)) if os.path.exists(path) else {}
    if "fgsm_wrong" in arrays:
        return False
    stored = read_json(os.path.join(folder, "metrics.json"))["fgsm_error"]
    lo, hi = row.input_box
    inputs = attack_base.check_inputs(model, x, y, lo, hi, "FGSM")
    lanes = attack_base.check_lanes(500, len(inputs.x))  # as evaluate_robustness's default
    wrong = FGSM().run(model, inputs, [row.fgsm_eps], lanes)[row.fgsm_eps].success
    if float(wrong.mean()) != stored:
        log.warning("[%s] FGSM again gives an error of %.6f where metrics.json holds %.6f; "
                    "its per-point outcomes are not recorded.", folder, wrong.mean(), stored)
        return False
    arrays["fgsm_wrong"] = np.asarray(wrong, bool)
    write_npz(path, arrays)
    return True
