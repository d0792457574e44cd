"""Runs one table row for one seed into its own folder; resumable, never mixing configurations.

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
from keras_margin.callbacks import RobustnessCallback
from keras_margin.evaluation import evaluate_robustness
from keras_margin.experiments.files import read_json, run_identity, run_lock, write_json
from keras_margin.experiments.rows import Row, build_model, compile_row
from keras_margin.robustness_report import RobustnessReport

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


def load_data(dataset: str, data_dir: str | None, quick: bool, validation: int = 10000,
              pixel_scale: float = 255.0) -> Data:
    """The paper's splits, or with `quick` a subset (MNIST's test set alone when that is all).

    The MNISTs are split as the reference code does (`datasets.split_validation`, "reference");
    `pixel_scale` divides their bytes (256 under the "reference" protocol, 255 under "boxed").
    """
    key = (dataset, data_dir, quick, validation, pixel_scale)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    split = "random" if dataset == "cifar10" else "reference"
    try:
        train, val, test = datasets.load(dataset, validation=validation, data_dir=data_dir,
                                         split=split, pixel_scale=pixel_scale,
                                         allow_sample=False)
        protocol = f"{dataset} train {len(train[0])} / validation {len(val[0])} / test " \
                   f"{len(test[0])}, {split} split, pixels / {pixel_scale:g}"
        if quick:
            train, val, test = ((a[:n], b[:n]) for (a, b), n in (
                (train, QUICK["train"]), (val, QUICK["validation"]), (test, QUICK["test"])))
            protocol = f"QUICK: {dataset} subsets, train {len(train[0])} / validation " \
                       f"{len(val[0])} / test {len(test[0])}"
    except datasets.DatasetNotFoundError:
        if not quick or dataset == "cifar10":
            raise
        n_fit = QUICK["train"] + QUICK["validation"]
        try:
            (x, y), test = datasets.split_test_set(dataset, data_dir, train=n_fit, seed=0,
                                                   pixel_scale=pixel_scale)
        except datasets.DatasetNotFoundError:
            if dataset != "mnist" or data_dir is not None:
                raise
            return _embedded_quick(pixel_scale)
        train, val = (x[:QUICK["train"]], y[:QUICK["train"]]), (x[QUICK["train"]:],
                                                                y[QUICK["train"]:])
        protocol = f"QUICK: {dataset}'s test set only (no training files here), cut into " \
                   f"train {len(train[0])} / validation {len(val[0])} / test {len(test[0])}, " \
                   f"pixels / {pixel_scale:g}"
    if dataset == "cifar10":
        gcn = datasets.GlobalContrastNormalization()
        zca = datasets.ZCAWhitening().fit(gcn(train[0]))
        train, val, test = ((zca(gcn(a)), b) for a, b in (train, val, test))
        protocol += ", GCN + ZCA fitted on train"
    data = Data(*train, *val, *test, protocol=protocol)
    _DATA_CACHE[key] = data
    return data


def _embedded_quick(pixel_scale: float) -> Data:
    """QUICK on the MNIST sample embedded in the package (no files, no network)."""
    (x, y), (x_val, y_val), test = datasets.load(
        "mnist", validation=QUICK["validation"], split="reference", pixel_scale=pixel_scale)
    return Data(x, y, x_val, y_val, *test,
                protocol=f"QUICK: the MNIST sample embedded in keras-margin, train {len(x)} / "
                         f"validation {len(x_val)} / test {len(test[0])}, pixels / "
                         f"{pixel_scale:g}")


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


def load_checkpoint(path: str) -> keras.Model:
    try:
        return keras.models.load_model(path)
    except Exception as err:  # Keras says "File not found" for a truncated zip
        raise ValueError(
            f"{path} exists but cannot be loaded ({type(err).__name__}: {err}); it is "
            "truncated or corrupt. A checkpoint: delete it and state.json beside it to "
            "restart the run from epoch 0; a finished run's model.keras: delete the run's "
            "metrics.json too, and the runner trains it again.") from None


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
        info = _record_environment(folder, start)["machine"]
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


def machine() -> dict[str, Any]:
    """The processor (model, cores, bfloat16 support) and the backend's devices."""
    import platform

    info: dict[str, Any] = {"platform": platform.platform(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.startswith("model name")), None)
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), [])
        info.update(cpu=model, avx512_bf16="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags)
    except OSError:
        info["cpu"] = platform.processor() or None
    if keras.backend.backend() == "jax":
        import jax

        info["devices"] = sorted({d.device_kind for d in jax.devices()})
    return info


def has_accelerator() -> bool:
    """Whether the backend computes on a GPU (or another accelerator) rather than the CPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return False


def speed_advice(architecture: str, dtype_policy: str, backend: str, accelerator: bool,
                 cpu_bfloat16: bool) -> list[str]:
    """Why a run is about to be slower than it needs to be on this machine, as measured in
    docs/results/benchmarks/step_cost.md (empty when nothing is known)."""
    if accelerator:
        return []
    notes = []
    if backend == "jax" and architecture in ("lenet5", "nin"):
        notes.append("JAX runs convolutions on a CPU about 3x slower than TensorFlow (a LeNet-5 "
                     "margin step: 665 ms against 221 ms on 2 cores): for convolutional "
                     "networks on a CPU, set KERAS_BACKEND=tensorflow")
    if dtype_policy != "float32" and not cpu_bfloat16:
        notes.append("this CPU has no bfloat16 arithmetic (AVX-512 BF16 or AMX), so "
                     f"{dtype_policy} is no faster than float32 here (LeNet-5 on TensorFlow: "
                     "several times slower); it pays on chips that have it")
    return notes


def environment() -> dict[str, Any]:
    """What a run ran on: backend and its version, Keras, keras-margin, Python, the machine."""
    import importlib
    import platform

    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    version = getattr(importlib.import_module(module), "__version__", None) if module else None
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backend": backend, "backend_version": version, "keras": keras.__version__,
            "keras_margin": _code_version(), "python": platform.python_version(),
            "numpy": np.__version__, "dtype_policy": keras.config.dtype_policy().name,
            "machine": machine()}


def _record_environment(folder: str, start: int) -> dict[str, Any]:
    """Appends this start (or resume, from epoch `start`) to the folder's environment.json;
    returns it."""
    path = os.path.join(folder, "environment.json")
    sessions = read_json(path).get("sessions", []) if os.path.exists(path) else []
    sessions.append({**environment(), "from_epoch": start})
    write_json(path, {"sessions": sessions})
    return sessions[-1]


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
        model.save(checkpoint + ".tmp.keras")
        os.replace(checkpoint + ".tmp.keras", checkpoint)
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


def save_arrays(folder: str, report: RobustnessReport, suffix: str = "") -> dict[str, Any]:
    """Saves the report's per-point arrays into `points<suffix>.npz` (compressed) in
    `folder`; returns its scalars and flags (what metrics.json holds)."""
    arrays = report.arrays()
    if arrays:
        path = os.path.join(folder, f"points{suffix}.npz")
        with open(path + ".tmp", "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(path + ".tmp", path)
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
    with open(path + ".tmp", "wb") as f:
        np.savez_compressed(f, **data)
    os.replace(path + ".tmp", path)
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
    with open(path + ".tmp", "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(path + ".tmp", path)
    return True


def _code_version() -> str:
    """keras_margin's version, in a git checkout the commit, and the Keras backend (for the
    results' provenance)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(keras_margin.__file__))
    version = f"{keras_margin.__version__}"
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)
        version += f" ({commit.stdout.strip()})"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{version}, Keras {keras.__version__} on {keras.backend.backend()}"


def _finish(row: Row, model: keras.Model, data: Data, folder: str,
            config: dict[str, Any]) -> dict[str, Any]:
    base = getattr(model, "base", model)
    lo, hi = row.input_box
    report = save_arrays(folder, evaluate_robustness(base, data.x_test, data.y_test,
                                                     row.plan()))
    shown = data.x_test[:10]
    adversarial = row.deepfool(base, shown, data.y_test[:10], clip_min=lo, clip_max=hi)
    x_adv = shown + adversarial.perturbation
    np.savez_compressed(os.path.join(folder, "adversarial.npz"), x=shown, y=data.y_test[:10],
                        x_adv=x_adv, success=adversarial.success,
                        adversarial_class=base_predictions(base, x_adv))
    model.save(os.path.join(folder, "model.keras"))
    metrics = {**report, "row": row.name, "table": row.table, "label": row.label,
               "seed": config["seed"], "quick": config["quick"], "protocol": row.protocol,
               "data": config["data"], "code": _code_version(),
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
