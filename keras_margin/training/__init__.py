"""Keras trainers on one base class: MarginModel (eq. 18) and the paper's baselines.

`RobustModel` (base.py) owns the objective, the metrics and the checks at `fit`; each trainer
adds one term: `MarginModel` (margin.py) the margin sensitivity, `AdversarialTrainingModel`
(adversarial.py) the loss on FGSM examples, `VATModel` (vat.py) the virtual adversarial KL,
`CertifiedTrainingModel` (certified.py) the loss on the proven lower margins (IBP, CROWN-IBP),
`LargeMarginModel` (large_margin.py) Elsayed et al.'s hinge on first-order distances at hidden
layers.
Importing this package registers them for `keras.models.load_model`.
"""

from keras_margin.training.adversarial import AdversarialTrainingModel
from keras_margin.training.base import Objective, RobustModel
from keras_margin.training.certified import CertifiedTrainingModel
from keras_margin.training.large_margin import LargeMarginModel
from keras_margin.training.margin import MAX_C, MarginModel
from keras_margin.training.vat import VATModel

__all__ = ["MAX_C", "AdversarialTrainingModel", "CertifiedTrainingModel", "LargeMarginModel",
           "MarginModel", "Objective", "RobustModel", "VATModel"]
