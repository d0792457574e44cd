"""Attacks that measure robustness: DeepFool (minimal perturbations) and FGSM (fixed budget)."""

from keras_margin.attacks.deepfool import DeepFoolResult, deepfool
from keras_margin.attacks.fgsm import fgsm

__all__ = ["DeepFoolResult", "deepfool", "fgsm"]
