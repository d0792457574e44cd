"""Evaluates finished runs again, with the stronger attacks: `keras-margin evaluate RUNS`.

A run's own evaluation (metrics.json) is the paper's: DeepFool's rho_adv and FGSM. This adds,
on the first `n` test points of the run's own data, the minimum-norm attacks (rho_min) and
robust accuracy under l_inf / l2 budgets from the APGD ensemble, with the sanity flags, into
`robustness<-tag>.json` beside metrics.json (per-sample arrays as .npy). `box` evaluates a model
trained without an input box inside [0, 1] instead (the "boxed" evaluation of a "reference" run,
to measure what the box changes). Finished evaluations with the same settings are skipped, so
the command resumes; one process per run folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import numpy as np

from keras_margin import training  # noqa: F401 - registers the trainers for loading
from keras_margin._validation import check_box_pair, check_choice, check_integer
from keras_margin.attacks import APGD
from keras_margin.evaluation import (
    EvaluationPlan,
    check_budgets,
    evaluate_robustness,
    resolve_attack,
)
from keras_margin.experiments.artifacts import (
    label_adversarials,
    load_checkpoint,
    record_fgsm_points,
    save_arrays,
)
from keras_margin.experiments.data import load_data
from keras_margin.experiments.files import read_json, run_lock, write_json
from keras_margin.experiments.rows import Row
from keras_margin.robustness_report import RobustnessReport

log = logging.getLogger("keras_margin.experiments")


@dataclasses.dataclass(frozen=True)
class StrongerEvaluation:
    """What `keras-margin evaluate` runs on each finished run."""

    n: int = 1000
    attacks: tuple[str, ...] = ("fmn", "ddn")
    linf_eps: tuple[float, ...] = (0.1, 0.2, 0.3)
    l2_eps: tuple[float, ...] = ()
    steps: int = 100
    box: tuple[float, float] | None = None
    tag: str = ""
    certify: str | None = None
    autoattack: bool = False

    def __post_init__(self) -> None:
        check_integer("n", self.n)
        check_integer("steps", self.steps)
        for name in ("linf_eps", "l2_eps"):
            object.__setattr__(self, name, check_budgets(name, getattr(self, name)))
        if self.box is not None:
            object.__setattr__(self, "box", check_box_pair("box", tuple(self.box)))
        if not isinstance(self.tag, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", self.tag):
            raise ValueError(f"Invalid value for --tag: {self.tag!r}. Expected letters, digits, "
                             "'-' or '_' (it names a file beside the run's metrics).")
        for name in self.attacks:
            resolve_attack(name)
        if self.certify is not None:
            from keras_margin.certify import METHODS

            check_choice("--certify", self.certify, METHODS)
        check_choice("--autoattack", self.autoattack, (True, False))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {**data, "attacks": list(self.attacks), "linf_eps": list(self.linf_eps),
                "l2_eps": list(self.l2_eps), "box": None if self.box is None else list(self.box)}

    def same_as(self, stored: dict[str, Any]) -> bool:
        """Whether settings stored by an earlier evaluation are these: a key that an older
        version did not write ran at its default (as `certify` and `autoattack`, added
        later: None and False)."""
        return bool(stored) and {**StrongerEvaluation().to_dict(), **stored} == self.to_dict()

    @property
    def filename(self) -> str:
        return f"robustness{'-' + self.tag if self.tag else ''}.json"

    def plan(self, row: Row) -> EvaluationPlan:
        """The row's own evaluation (`Row.plan`) with these attacks, budgets, steps, box and
        points."""
        lo, hi = self.box or row.input_box
        deepfool = row.deepfool
        attacks = [dataclasses.replace(resolve_attack(name, deepfool), steps=self.steps)
                   for name in self.attacks]
        return dataclasses.replace(row.plan(samples=self.n), attacks=tuple(attacks),
                                   linf_eps=self.linf_eps, l2_eps=self.l2_eps,
                                   apgd=APGD(steps=self.steps), clip_min=lo, clip_max=hi,
                                   certify=self.certify, autoattack=self.autoattack)


def _has_adversarial_classes(folder: str) -> bool:
    path = os.path.join(folder, "adversarial.npz")
    return not os.path.exists(path) or "adversarial_class" in np.load(path).files


def _has_fgsm_points(folder: str) -> bool:
    path = os.path.join(folder, "points.npz")
    return os.path.exists(path) and "fgsm_wrong" in np.load(path).files


def finished_runs(runs_dir: str) -> list[str]:
    """Folders under `runs_dir` that hold a finished run (metrics.json and model.keras)."""
    found = []
    for root, _, files in os.walk(runs_dir):
        if "metrics.json" in files and "model.keras" in files and "config.json" in files:
            found.append(root)
    return sorted(found)


def check_replaceable(folder: str, settings: StrongerEvaluation, force: bool = False) -> bool:
    """Whether `folder` holds this evaluation already (True: skip it). One made with other
    settings is an error unless `force` (it would be replaced: a 10-minute evaluation by a
    20-point look), with both settings in the message."""
    path = os.path.join(folder, settings.filename)
    if not os.path.exists(path):
        return False
    stored = read_json(path).get("settings", {})
    if settings.same_as(stored):
        return True
    if not force:
        ours = settings.to_dict()
        diff = {k: (stored.get(k), ours[k]) for k in ours if stored.get(k) != ours[k]}
        raise ValueError(
            f"{path} holds an evaluation with other settings ("
            + ", ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            + "); refusing to replace it. Give --tag NAME to keep both, or --force to "
            "replace it.")
    return False


def stored_config(folder: str, *keys: str) -> dict[str, Any]:
    """A run folder's config.json, with the keys the caller reads checked: a folder written by
    an older version that lacks one is a clear error, not a KeyError."""
    path = os.path.join(folder, "config.json")
    config = read_json(path)
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"{path} has no {', '.join(repr(k) for k in missing)}: it was written "
                         "by an older keras-margin that this one cannot read. Re-run the row "
                         "(keras-margin reproduce TABLE --rows ROW --out FOLDER) to make it "
                         "again.")
    return config


def evaluate_run(folder: str, settings: StrongerEvaluation, data_dir: str | None = None,
                 batch_size: int = 500, verbose: int = 0, force: bool = False) -> dict[str, Any]:
    """The stronger evaluation of one finished run (cached in its folder; one with other
    settings is replaced only with `force`)."""
    path = os.path.join(folder, settings.filename)
    with run_lock(folder):
        if not _has_adversarial_classes(folder):  # runs made before the runner recorded them
            model = load_checkpoint(os.path.join(folder, "model.keras"))
            label_adversarials(folder, getattr(model, "base", model))
        skip = check_replaceable(folder, settings, force)
        if skip and _has_fgsm_points(folder):
            log.info("[%s] evaluated already: skipped", folder)
            return read_json(path)
        config = stored_config(folder, "row", "quick")
        row = Row.from_dict(config["row"])
        data = load_data(row.dataset, data_dir, config["quick"], row.validation,
                         row.pixel_scale)
        model = load_checkpoint(os.path.join(folder, "model.keras"))
        if not _has_fgsm_points(folder):  # runs finished before the runner recorded them
            record_fgsm_points(folder, getattr(model, "base", model), data.x_test,
                               data.y_test, row)
        if skip:
            log.info("[%s] evaluated already: skipped", folder)
            return read_json(path)
        plan = settings.plan(row)
        report = evaluate_robustness(getattr(model, "base", model), data.x_test, data.y_test,
                                     plan, batch_size=batch_size, verbose=verbose)
        suffix = f"-{settings.tag}" if settings.tag else ""
        result = {**save_arrays(folder, report, suffix=f"-strong{suffix}"),
                  "settings": settings.to_dict(), "box": [plan.clip_min, plan.clip_max]}
        write_json(path, result)
    log.info("[%s]\n%s", folder, RobustnessReport.from_dict(result))
    return result
