"""keras-margin: margin maximization for robust classification (Matyasko & Chau, IJCNN 2017).

The functional core (`margin_sensitivity`, `multiclass_hinge`, the attacks) works with any Keras
model or callable that returns logits; `MarginModel` and the baseline trainers wrap it for `fit`.

Importing the package registers its Keras classes (trainers, losses), so that
`keras.models.load_model` reads the `.keras` files they save; the other names are imported on
first use. The `keras-margin` command imports only what a subcommand needs, so that `--help`
answers without starting the Keras backend.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = ("architectures", "attacks", "callbacks", "datasets", "evaluation", "losses",
               "robustness_report", "sensitivity", "threat", "training")
_NAMES = {
    "AdversarialTrainingModel": "training",
    "CertifiedTrainingModel": "training",
    "EvaluationPlan": "evaluation",
    "LargeMarginModel": "training",
    "RobustnessCallback": "callbacks",
    "RobustnessReport": "robustness_report",
    "MarginModel": "training",
    "RobustModel": "training",
    "ThreatModel": "threat",
    "VATModel": "training",
    "binary_hinge": "losses",
    "evaluate_robustness": "evaluation",
    "margin_sensitivity": "sensitivity",
    "multiclass_hinge": "losses",
    "rho_adv": "evaluation",
}

__all__ = [
    "AdversarialTrainingModel",
    "CertifiedTrainingModel",
    "EvaluationPlan",
    "LargeMarginModel",
    "RobustnessCallback",
    "RobustnessReport",
    "MarginModel",
    "RobustModel",
    "ThreatModel",
    "VATModel",
    "architectures",
    "attacks",
    "binary_hinge",
    "datasets",
    "evaluate_robustness",
    "margin_sensitivity",
    "multiclass_hinge",
    "rho_adv",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_margin.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"keras_margin.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'keras_margin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))


def _command_line() -> bool:
    """Running as the `keras-margin` command (its subcommands import what they need)."""
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == "keras-margin"


if not _command_line():
    from keras_margin._quiet import import_tensorflow

    import_tensorflow()  # without its start-up noise (a real error still shows)
    importlib.import_module("keras_margin.training")  # registers the Keras classes

if TYPE_CHECKING:  # for type checkers and IDEs
    from keras_margin import architectures, attacks, datasets
    from keras_margin.callbacks import RobustnessCallback
    from keras_margin.evaluation import EvaluationPlan, evaluate_robustness, rho_adv
    from keras_margin.losses import binary_hinge, multiclass_hinge
    from keras_margin.robustness_report import RobustnessReport
    from keras_margin.sensitivity import margin_sensitivity
    from keras_margin.threat import ThreatModel
    from keras_margin.training import (
        AdversarialTrainingModel,
        CertifiedTrainingModel,
        MarginModel,
        RobustModel,
        VATModel,
    )
