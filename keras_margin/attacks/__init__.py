"""Attacks that measure robustness, for any Keras model (or callable) that returns logits.

Minimum-norm attacks (the smallest perturbation that flips the prediction): `deepfool` (the
paper's), `fmn` and `ddn`. Fixed-budget attacks: `fgsm` (the paper's, one step) and `apgd`
(Auto-PGD, the core of AutoAttack). Each iterative attack is also a frozen dataclass of its
settings (`DeepFool`, `FMN`, `DDN`, `APGD`), which `evaluate_robustness` and
`RobustnessCallback` accept. `norm` is always the threat model's norm here.
"""

from keras_margin.attacks.apgd import APGD, apgd
from keras_margin.attacks.base import AttackResult
from keras_margin.attacks.ddn import DDN, ddn
from keras_margin.attacks.deepfool import DeepFool, DeepFoolResult, deepfool
from keras_margin.attacks.fgsm import fgsm
from keras_margin.attacks.fmn import FMN, fmn

__all__ = ["APGD", "DDN", "FMN", "AttackResult", "DeepFool", "DeepFoolResult", "apgd", "ddn",
           "deepfool", "fgsm", "fmn"]
