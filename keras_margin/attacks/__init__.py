"""Attacks that measure robustness, for any Keras model (or callable) that returns logits.

Two kinds, each a frozen dataclass of its settings on one base class (`attacks.base`):
minimum-norm attacks (`MinimumNormAttack`: the smallest perturbation that flips each
prediction) `DeepFool` (the paper's), `FMN`, `DDN` and `FAB` (AutoAttack's FAB-T); budgeted
attacks (`BudgetAttack`: any perturbation within eps) `FGSM` (the paper's, one step) and `APGD`
(Auto-PGD, the core of AutoAttack). The functions `deepfool`, `fmn`, `ddn`, `fab`, `apgd` build
and call them; `fgsm` returns the adversarial examples themselves; `Square` (Square Attack,
score-based: no gradients, the check on the gradient attacks); `AutoAttack` / `autoattack` (the
standard ensemble APGD-CE, APGD-T, FAB-T, Square, with who fooled each point). `norm` is always the
threat model's norm here.
"""

from keras_margin.attacks.apgd import APGD, apgd
from keras_margin.attacks.autoattack import AutoAttack, AutoAttackResult, autoattack
from keras_margin.attacks.base import AttackResult, BudgetAttack, MinimumNormAttack
from keras_margin.attacks.ddn import DDN, ddn
from keras_margin.attacks.deepfool import DeepFool, deepfool
from keras_margin.attacks.fab import FAB, fab
from keras_margin.attacks.fgsm import FGSM, fgsm
from keras_margin.attacks.fmn import FMN, fmn
from keras_margin.attacks.square import Square, square

__all__ = ["APGD", "DDN", "FAB", "FGSM", "FMN", "AttackResult", "AutoAttack", "AutoAttackResult",
           "BudgetAttack", "DeepFool", "MinimumNormAttack", "Square", "apgd", "autoattack", "ddn",
           "deepfool", "fab", "fgsm", "fmn", "square"]
