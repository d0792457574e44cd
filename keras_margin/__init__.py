"""keras-margin: margin maximization for robust classification (Matyasko & Chau, IJCNN 2017).

The functional core (`margin_sensitivity`, `multiclass_hinge`, the attacks) works with any Keras
model or callable that returns logits; `MarginModel` and the baseline trainers wrap it for `fit`.
"""

import keras as _keras

if _keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"keras_margin supports the Keras 'tensorflow' backend only; the active backend is "
        f"{_keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras."
    )

from keras_margin import architectures, attacks, datasets
from keras_margin.evaluation import evaluate_robustness, rho_adv
from keras_margin.losses import binary_hinge, multiclass_hinge
from keras_margin.sensitivity import margin_sensitivity
from keras_margin.training import (
    AdversarialTrainingModel,
    MarginModel,
    RobustModel,
    VATModel,
)

__version__ = "0.1.0"

__all__ = [
    "AdversarialTrainingModel",
    "MarginModel",
    "RobustModel",
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
