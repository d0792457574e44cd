"""Trains one table row for one seed into its own folder; resumable, never mixing
configurations. Its data comes from `data`, the folder's place and files from `artifacts`, the
record of where it ran from `environment`, every write from `files`' atomic writer.

A run folder, `OUT/<table>/<row>/<configuration>/seed-<n>/` (`config_name`), holds
`config.json` (what ran), `environment.json` (where and on what it ran: backend, versions,
machine, one entry per start or resume), `history.csv` (per-epoch logs with the robustness
callback's numbers and the epoch's wall-clock and CPU seconds), `checkpoint.keras` +
`state.json` while training (saved after every epoch, atomically), and at the end
`model.keras`, `points.npz` (per-point numbers, compressed), `adversarial.npz` and
`metrics.json` (written last, atomically). A finished run is skipped; an interrupted one
resumes from its last epoch, so a killed process loses at most one epoch. Epoch e shuffles with
a generator seeded by (seed, e) and resets Keras's seeds, so a resumed run ends with the same
metrics as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

import keras_margin
from keras_margin import datasets, training  # noqa: F401 - registers the trainers (resume)
from keras_margin.backend import has_accelerator
from keras_margin.callbacks import RobustnessCallback
from keras_margin.evaluation import evaluate_robustness
from keras_margin.experiments.artifacts import (
    base_predictions,
    check_same_config,
    load_checkpoint,
    run_dir,
    save_arrays,
)
from keras_margin.experiments.data import QUICK, Data, load_data
from keras_margin.experiments.environment import code_version, record_environment, speed_advice
from keras_margin.experiments.files import read_json, run_lock, save_model, write_json, write_npz
from keras_margin.experiments.rows import Row, build_model, compile_row

log = logging.getLogger("keras_margin.experiments")

class ProgressLine(keras.callbacks.Callback):
    """One log line per epoch (run, seed, epoch k/n, time per epoch and ETA), and the epoch's
    wall-clock and CPU seconds (training, validation and the callbacks before this one) in its
    logs as `epoch_seconds` and `epoch_cpu_seconds`: put it before `CSVLogger`."""

    def __init__(self, name: str, seed: int, epochs: int) -> None:
        super().__init__()
        self.name, self.seed, self.epochs = name, seed, epochs
        self.start = self.cpu = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start, self.cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        took = time.perf_counter() - self.start
        if logs is not None:
            logs["epoch_seconds"] = took
            logs["epoch_cpu_seconds"] = time.process_time() - self.cpu
        eta = took * (self.epochs - epoch - 1)
        log.info("[%s seed %d] epoch %d/%d, %.1f s/epoch, ETA %dm%02ds", self.name, self.seed,
                 epoch + 1, self.epochs, took, eta // 60, eta % 60)


def _truncate_history(path: str, epochs: int) -> None:
    """Keeps the header and the first `epochs` rows (an epoch logged but not checkpointed)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows[: epochs + 1])


def check_epochs(epochs: int | None) -> int | None:
    """None (the row's) or an integer >= 1."""
    if epochs is not None and (isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1):
        raise ValueError(f"Invalid value for argument epochs: {epochs!r}. Expected an integer "
                         ">= 1 (or none for the row's own).")
    return epochs


def run(row: Row, seed: int, out: str, epochs: int | None = None, quick: bool = False,
        data_dir: str | None = None, dataset: str | None = None, verbose: int = 2,
        stop_after: int | None = None, protocol: str | None = None,
        build: Callable[[Row], keras.Model] | None = None,
        dtype_policy: str = "float32",
        monitor_every: int | None = None) -> dict[str, Any] | None:
    """Trains and evaluates `row` with `seed` into its folder under `out`; returns its metrics.

    Args:
        epochs: overrides the row's epochs (default: the row's, or 10 with `quick`).
        quick: a CPU-sized run on data subsets; labelled QUICK in its config and report.
        dataset: overrides the row's data set (e.g. "fashion_mnist" for Table I).
        stop_after: stop (as if killed) after this many epochs of this call; for tests.
        protocol: overrides the row's protocol ("reference" or "boxed").
        build: makes the model from the row (default `rows.build_model`); the examples pass
            their own, written with the public API.
        dtype_policy: Keras's dtype policy for the layers ("float32", the paper's precision,
            or "mixed_bfloat16"); the margin penalty stays float32 either way.
        monitor_every: overrides the row's period of the per-epoch robustness callback
            (recorded in the run's config; the final evaluation is the same).

    Returns:
        The metrics dict, or None when stopped by `stop_after` before the end.

    Raises:
        RunLockedError: another process is training this run now.
        ConfigMismatchError: the folder holds a run of another configuration.
    """
    check_epochs(epochs)
    dtype_policy = check_dtype_policy(dtype_policy)
    changes = {key: value for key, value in (("dataset", dataset), ("protocol", protocol),
                                             ("monitor_every", monitor_every)) if value}
    row = dataclasses.replace(row, **changes)
    row = dataclasses.replace(row, epochs=epochs or (QUICK["epochs"] if quick else row.epochs))
    folder = run_dir(out, row, seed, quick, dtype_policy)
    data = load_data(row.dataset, data_dir, quick, row.validation, row.pixel_scale)
    config = json.loads(json.dumps({"row": row.to_dict(), "seed": seed, "quick": quick,
                                    "data": data.protocol, "dtype_policy": dtype_policy,
                                    "keras_margin": keras_margin.__version__}))
    metrics_path = os.path.join(folder, "metrics.json")
    if os.path.exists(metrics_path) and os.path.exists(os.path.join(folder, "config.json")):
        # Finished runs never change: skipped without the lock (works on read-only media).
        check_same_config(os.path.join(folder, "config.json"), config)
        log.info("[%s seed %d] finished already: skipped", row.name, seed)
        return read_json(metrics_path)
    with run_lock(folder), _policy(dtype_policy):
        if _claim_folder(folder, config) and os.path.exists(metrics_path):
            log.info("[%s seed %d] finished already: skipped", row.name, seed)
            return read_json(metrics_path)
        model, start = _model_at_start(row, folder, seed, len(data.x_train), build)
        info = record_environment(folder, start)["machine"]
        for note in speed_advice(row.architecture, dtype_policy, keras.backend.backend(),
                                 has_accelerator(), info.get("avx512_bf16") or
                                 info.get("amx_bf16")):
            log.warning("[%s seed %d] %s", row.name, seed, note)
        if not _train(row, model, data, folder, seed, start, quick, verbose, stop_after):
            return None
        return _finish(row, model, data, folder, config)


DTYPE_POLICIES = ("float32", "mixed_bfloat16")


def check_dtype_policy(name: str) -> str:
    """One of `DTYPE_POLICIES`."""
    if name not in DTYPE_POLICIES:
        raise ValueError(f"Invalid value for argument dtype_policy: {name!r}. Expected one of "
                         f"{set(DTYPE_POLICIES)}.")
    return name


@contextlib.contextmanager
def _policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy set to `name` while a run builds and trains its model."""
    before = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def _claim_folder(folder: str, config: dict[str, Any]) -> bool:
    """Writes config.json, or checks the one there; True if the folder held this run already."""
    config_path = os.path.join(folder, "config.json")
    if os.path.exists(config_path):
        check_same_config(config_path, config)
        return True
    write_json(config_path, config)
    return False


def _model_at_start(row: Row, folder: str, seed: int, n_train: int,
                    build: Callable[[Row], keras.Model] | None) -> tuple[keras.Model, int]:
    """The checkpointed model and its epoch, or a new compiled model at epoch 0."""
    checkpoint, state_path = (os.path.join(folder, name)
                              for name in ("checkpoint.keras", "state.json"))
    history_path = os.path.join(folder, "history.csv")
    if os.path.exists(checkpoint) and os.path.exists(state_path):
        start = read_json(state_path).get("epoch")
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= row.epochs:
            raise ValueError(f"{state_path} holds no epoch count from 0 to {row.epochs} "
                             f"({start!r}): it is damaged. Delete it and checkpoint.keras "
                             "beside it to restart this run from epoch 0.")
        model = load_checkpoint(checkpoint)
        _truncate_history(history_path, start)
        log.info("[%s seed %d] resuming after epoch %d", row.name, seed, start)
        return model, start
    keras.utils.set_random_seed(seed)
    model = (build or build_model)(row)
    compile_row(row, model, int(np.ceil(n_train / row.batch_size)))
    if os.path.exists(history_path):
        os.remove(history_path)
    return model, 0


def _train(row: Row, model: keras.Model, data: Data, folder: str, seed: int, start: int,
           quick: bool, verbose: int, stop_after: int | None) -> bool:
    """Epochs `start`..row.epochs, each seeded by (seed, epoch) and checkpointed atomically.

    Returns False when `stop_after` stopped it early.
    """
    monitor = RobustnessCallback(data.x_val, data.y_val, plan=row.plan(),
                                 max_samples=QUICK["monitor"] if quick else 1000)
    checkpoint = os.path.join(folder, "checkpoint.keras")
    every_epoch = [ProgressLine(f"{row.table}/{row.name}", seed, row.epochs),
                   keras.callbacks.CSVLogger(os.path.join(folder, "history.csv"), append=True)]
    validation = (data.x_val, data.y_val)
    monitored, unmonitored = [monitor], [NotMonitored(monitor)]
    if not len(data.x_val):  # every training digit trains (validation=0): nothing to monitor
        validation, monitored, unmonitored = None, [], []
    for epoch in range(start, row.epochs):
        if stop_after is not None and epoch - start >= stop_after:
            return False
        callbacks = (monitored if monitored_epoch(row, epoch) else unmonitored) + every_epoch
        keras.utils.set_random_seed(seed * 100003 + epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(data.x_train))
        x, y = data.x_train[order], data.y_train[order]
        if row.augmentation:
            train = datasets.make_dataset(x, y, row.batch_size, shuffle=False, augmentation=True)
            model.fit(train, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                      validation_data=validation, callbacks=callbacks, verbose=verbose)
        else:
            model.fit(x, y, batch_size=row.batch_size, epochs=epoch + 1, initial_epoch=epoch,
                      shuffle=False, validation_data=validation, callbacks=callbacks,
                      verbose=verbose)
        save_model(model, checkpoint)
        write_json(os.path.join(folder, "state.json"), {"epoch": epoch + 1})
    return True


def monitored_epoch(row: Row, epoch: int) -> bool:
    """Whether the robustness callback runs after `epoch` (0-based): every
    `row.monitor_every`-th, the first and the last."""
    return epoch == 0 or (epoch + 1) % row.monitor_every == 0 or epoch + 1 == row.epochs


class NotMonitored(keras.callbacks.Callback):
    """On an epoch the robustness callback skips: its keys as NaN, so that CSVLogger (which
    takes its columns from each `fit` call's first epoch) keeps the same columns."""

    def __init__(self, monitor: RobustnessCallback) -> None:
        super().__init__()
        self.keys = [monitor.prefix + key for key in monitor.keys]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs.update({key: float("nan") for key in self.keys})


def _finish(row: Row, model: keras.Model, data: Data, folder: str,
            config: dict[str, Any]) -> dict[str, Any]:
    base = getattr(model, "base", model)
    lo, hi = row.input_box
    report = save_arrays(folder, evaluate_robustness(base, data.x_test, data.y_test,
                                                     row.plan()))
    shown = data.x_test[:10]
    adversarial = row.deepfool(base, shown, data.y_test[:10], clip_min=lo, clip_max=hi)
    x_adv = shown + adversarial.perturbation
    write_npz(os.path.join(folder, "adversarial.npz"),
              {"x": shown, "y": data.y_test[:10], "x_adv": x_adv,
               "success": adversarial.success,
               "adversarial_class": base_predictions(base, x_adv)})
    save_model(model, os.path.join(folder, "model.keras"))
    metrics = {**report, "row": row.name, "table": row.table, "label": row.label,
               "seed": config["seed"], "quick": config["quick"], "protocol": row.protocol,
               "data": config["data"], "code": code_version(),
               "dataset": row.dataset, "epochs": row.epochs, "paper": row.paper,
               "architecture": row.architecture, "trainer": row.trainer,
               "dropout": row.dropout, "augmentation": row.augmentation,
               "trainer_kwargs": config["row"]["trainer_kwargs"]}
    write_json(os.path.join(folder, "metrics.json"), metrics)
    for leftover in ("checkpoint.keras", "state.json"):
        if os.path.exists(os.path.join(folder, leftover)):
            os.remove(os.path.join(folder, leftover))
    log.info("[%s seed %d] error %.4f, FGSM error %.4f, rho_adv %.4f", row.name,
             config["seed"], metrics["error"], metrics["fgsm_error"], metrics["rho_adv"])
    return metrics
