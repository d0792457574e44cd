"""Runs one table row for one seed into its own folder; resumable, never mixing configurations.

A run folder holds `config.json` (what ran), `history.csv` (per-epoch logs with the robustness
callback's numbers), `checkpoint.keras` + `state.json` while training (saved after every epoch,
atomically), and at the end `model.keras`, `distances.npy`, `adversarial.npz` and `metrics.json`
(written last, atomically). A finished run is skipped; an interrupted one resumes from its last
epoch, so a killed process loses at most one epoch. Epoch e shuffles with a generator seeded by
(seed, e) and resets Keras's seeds, so a resumed run ends with the same metrics as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

import keras_margin
from keras_margin import datasets
from keras_margin.callbacks import RobustnessCallback
from keras_margin.evaluation import evaluate_robustness
from keras_margin.experiments.rows import Row, build_model, compile_row

log = logging.getLogger("keras_margin.experiments")

QUICK = {"epochs": 10, "train": 7000, "validation": 1000, "test": 2000, "monitor": 200}


class ConfigMismatchError(ValueError):
    """An output folder holds a run of a different configuration."""


@dataclasses.dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    protocol: str


_DATA_CACHE: dict[tuple, Data] = {}


def load_data(dataset: str, data_dir: str | None, quick: bool, validation: int = 10000) -> Data:
    """The paper's splits, or with `quick` a subset (MNIST's test set alone when that is all)."""
    key = (dataset, data_dir, quick, validation)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    try:
        train, val, test = datasets.load(dataset, validation=validation, seed=0,
                                         data_dir=data_dir)
        protocol = f"{dataset} train {len(train[0])} / validation {len(val[0])} / test " \
                   f"{len(test[0])}"
        if quick:
            train, val, test = ((a[:n], b[:n]) for (a, b), n in (
                (train, QUICK["train"]), (val, QUICK["validation"]), (test, QUICK["test"])))
            protocol = f"QUICK: {dataset} subsets, train {len(train[0])} / validation " \
                       f"{len(val[0])} / test {len(test[0])}"
    except datasets.DatasetNotFoundError:
        if not quick or dataset == "cifar10":
            raise
        n_fit = QUICK["train"] + QUICK["validation"]
        (x, y), test = datasets.split_test_set(dataset, data_dir, train=n_fit, seed=0)
        train, val = (x[:QUICK["train"]], y[:QUICK["train"]]), (x[QUICK["train"]:],
                                                                y[QUICK["train"]:])
        protocol = f"QUICK: {dataset}'s test set only (no training files here), cut into " \
                   f"train {len(train[0])} / validation {len(val[0])} / test {len(test[0])}"
    if dataset == "cifar10":
        gcn = datasets.GlobalContrastNormalization()
        zca = datasets.ZCAWhitening().fit(gcn(train[0]))
        train, val, test = ((zca(gcn(a)), b) for a, b in (train, val, test))
        protocol += ", GCN + ZCA fitted on train"
    data = Data(*train, *val, *test, protocol=protocol)
    _DATA_CACHE[key] = data
    return data


def run_dir(out: str, row: Row, seed: int) -> str:
    return os.path.join(out, row.table, row.name, f"seed-{seed}")


def _write_json(path: str, payload: Any) -> None:
    """Atomic: write a temporary file, then rename it over the target."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_same_config(path: str, config: dict[str, Any]) -> None:
    """Raises `ConfigMismatchError` naming the keys where the stored config differs."""
    with open(path) as f:
        stored = _flatten(json.load(f))
    ours = _flatten(config)
    differ = sorted(k for k in set(stored) | set(ours) if stored.get(k) != ours.get(k))
    if differ:
        detail = ", ".join(f"{k}: {stored.get(k)!r} there vs {ours.get(k)!r} now"
                           for k in differ[:5])
        raise ConfigMismatchError(
            f"{os.path.dirname(path)} holds a run of a different configuration ({detail}). "
            "Use another --out folder; nothing was overwritten.")


class ProgressLine(keras.callbacks.Callback):
    """One log line per epoch: run, seed, epoch k/n, time per epoch and ETA."""

    def __init__(self, name: str, seed: int, epochs: int) -> None:
        super().__init__()
        self.name, self.seed, self.epochs = name, seed, epochs
        self.start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        took = time.perf_counter() - self.start
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


def run(row: Row, seed: int, out: str, epochs: int | None = None, quick: bool = False,
        data_dir: str | None = None, dataset: str | None = None, verbose: int = 2,
        stop_after: int | None = None,
        build: Callable[[Row], keras.Model] | None = None) -> dict[str, Any] | None:
    """Trains and evaluates `row` with `seed` into its folder under `out`; returns its metrics.

    Args:
        epochs: overrides the row's epochs (default: the row's, or 10 with `quick`).
        quick: a CPU-sized run on data subsets; labelled QUICK in its config and report.
        dataset: overrides the row's data set (e.g. "fashion_mnist" for Table I).
        stop_after: stop (as if killed) after this many epochs of this call; for tests.
        build: makes the model from the row (default `rows.build_model`); the examples pass
            their own, written with the public API.

    Returns:
        The metrics dict, or None when stopped by `stop_after` before the end.
    """
    if dataset:
        row = dataclasses.replace(row, dataset=dataset)
    epochs = epochs or (QUICK["epochs"] if quick else row.epochs)
    row = dataclasses.replace(row, epochs=epochs)
    folder = run_dir(out, row, seed)
    data = load_data(row.dataset, data_dir, quick, row.validation)
    config = json.loads(json.dumps({"row": row.to_dict(), "seed": seed, "quick": quick,
                                    "protocol": data.protocol,
                                    "keras_margin": keras_margin.__version__}))
    config_path = os.path.join(folder, "config.json")
    metrics_path = os.path.join(folder, "metrics.json")
    if os.path.exists(config_path):
        check_same_config(config_path, config)
        if os.path.exists(metrics_path):
            log.info("[%s seed %d] finished already: skipped", row.name, seed)
            with open(metrics_path) as f:
                return json.load(f)
    os.makedirs(folder, exist_ok=True)
    _write_json(config_path, config)

    checkpoint, state_path = os.path.join(folder, "checkpoint.keras"), \
        os.path.join(folder, "state.json")
    history_path = os.path.join(folder, "history.csv")
    steps = int(np.ceil(len(data.x_train) / row.batch_size))
    if os.path.exists(checkpoint) and os.path.exists(state_path):
        model = keras.models.load_model(checkpoint)
        with open(state_path) as f:
            start = json.load(f)["epoch"]
        _truncate_history(history_path, start)
        log.info("[%s seed %d] resuming after epoch %d", row.name, seed, start)
    else:
        keras.utils.set_random_seed(seed)
        model = (build or build_model)(row)
        compile_row(row, model, steps)
        start = 0
        if os.path.exists(history_path):
            os.remove(history_path)

    lo, hi = row.input_box
    monitor = RobustnessCallback(data.x_val, data.y_val, fgsm_eps=row.fgsm_eps,
                                 max_samples=QUICK["monitor"] if quick else 1000,
                                 clip_min=lo, clip_max=hi, **row.deepfool)
    callbacks = [monitor, keras.callbacks.CSVLogger(history_path, append=True),
                 ProgressLine(f"{row.table}/{row.name}", seed, epochs)]
    for epoch in range(start, epochs):
        if stop_after is not None and epoch - start >= stop_after:
            return None
        keras.utils.set_random_seed(seed * 100003 + epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(data.x_train))
        x, y = data.x_train[order], data.y_train[order]
        if row.augmentation:
            train = datasets.make_dataset(x, y, row.batch_size, shuffle=False, augmentation=True)
            model.fit(train, epochs=epoch + 1, initial_epoch=epoch,
                      validation_data=(data.x_val, data.y_val), callbacks=callbacks,
                      verbose=verbose)
        else:
            model.fit(x, y, batch_size=row.batch_size, epochs=epoch + 1, initial_epoch=epoch,
                      shuffle=False, validation_data=(data.x_val, data.y_val),
                      callbacks=callbacks, verbose=verbose)
        model.save(checkpoint + ".tmp.keras")
        os.replace(checkpoint + ".tmp.keras", checkpoint)
        _write_json(state_path, {"epoch": epoch + 1})

    return _finish(row, model, data, folder, config)


def _finish(row: Row, model: keras.Model, data: Data, folder: str,
            config: dict[str, Any]) -> dict[str, Any]:
    base = getattr(model, "base", model)
    lo, hi = row.input_box
    report = evaluate_robustness(base, data.x_test, data.y_test, fgsm_eps=row.fgsm_eps,
                                 clip_min=lo, clip_max=hi, **row.deepfool)
    np.save(os.path.join(folder, "distances.npy"), report.pop("distances"))
    shown = data.x_test[:10]
    adversarial = keras_margin.attacks.deepfool(base, shown, data.y_test[:10], clip_min=lo,
                                                clip_max=hi, **row.deepfool)
    np.savez(os.path.join(folder, "adversarial.npz"), x=shown, y=data.y_test[:10],
             x_adv=shown + adversarial.perturbation.numpy(),
             success=adversarial.success.numpy())
    model.save(os.path.join(folder, "model.keras"))
    metrics = {**report, "row": row.name, "table": row.table, "label": row.label,
               "seed": config["seed"], "quick": config["quick"], "protocol": config["protocol"],
               "dataset": row.dataset, "epochs": row.epochs, "paper": row.paper,
               "architecture": row.architecture, "trainer": row.trainer,
               "dropout": row.dropout, "augmentation": row.augmentation,
               "trainer_kwargs": config["row"]["trainer_kwargs"]}
    _write_json(os.path.join(folder, "metrics.json"), metrics)
    for leftover in ("checkpoint.keras", "state.json"):
        if os.path.exists(os.path.join(folder, leftover)):
            os.remove(os.path.join(folder, leftover))
    log.info("[%s seed %d] error %.4f, FGSM error %.4f, rho_adv %.4f", row.name,
             config["seed"], metrics["error"], metrics["fgsm_error"], metrics["rho_adv"])
    return metrics
