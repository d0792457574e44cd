"""AdversarialTrainingModel: FGSM adversarial training (Goodfellow et al., 2015), "AT"."""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from keras_margin import _keras_compat
from keras_margin._validation import (
    as_float_inputs,
    check_box,
    check_box_pair,
    check_choice,
    check_non_negative,
    check_positive,
    class_indices,
)
from keras_margin.gradient_steps import fgsm_examples
from keras_margin.jacobian import call_logits
from keras_margin.threat import ThreatModel
from keras_margin.training.base import RobustModel, budget_and_box


@keras.saving.register_keras_serializable(package="keras_margin")
class AdversarialTrainingModel(RobustModel):
    """FGSM adversarial training (Goodfellow et al., 2015), the paper's "AT" baseline.

    Minimises clean_weight * L(x) + (1 - clean_weight) * L(x + eps * sign(grad_x L(x))), the
    adversarial example regenerated from the current weights at every step by
    `attacks.fgsm`'s core (no gradient through it).

    Args:
        base: a Keras model that outputs logits.
        eps: the perturbation budget, > 0 (default 0.2, the paper's on MNIST in [0, 1]).
        clean_weight: weight of the clean loss, in [0, 1] (Goodfellow et al.'s alpha; the
            paper: 0.5, equal weights). `alpha=` is its deprecated older name (VATModel's
            `alpha` weighs the other term, the KL).
        norm: the threat model's norm, "linf" (the default: the sign of the gradient, FGSM) or
            "l2" (the normalised gradient).
        loss: the data loss, also the loss the adversary ascends.
        clip: optional (min, max) box for the adversarial examples, min < max; the training
            inputs must lie in it (checked at `fit`).
        threat: the budget, norm and box as one `ThreatModel(norm, eps, clip_min, clip_max)`
            instead of eps=, norm= and clip= (not both); `.threat` gives it back.

    `fit` reports `loss`, `data_loss` (clean) and `adversarial_loss`.
    """

    extra_name = "adversarial_loss"

    def __init__(self, base: keras.Model, eps: float | None = None,
                 clean_weight: float | None = None, norm: str | None = None,
                 loss: Any = "crossentropy", clip: tuple[float, float] | None = None,
                 alpha: float | None = None, threat: ThreatModel | None = None,
                 **kwargs: Any) -> None:
        if alpha is not None:
            if clean_weight is not None:
                raise ValueError("Pass clean_weight only (alpha is its deprecated name).")
            warnings.warn("AdversarialTrainingModel(alpha=...) is deprecated: the clean loss's "
                          "weight is now clean_weight= (VATModel's alpha weighs the other "
                          "term).", DeprecationWarning, stacklevel=2)
            clean_weight = alpha
        clean_weight = 0.5 if clean_weight is None else clean_weight
        eps, norm, clip = budget_and_box(threat, eps, norm, clip,
                                         "adversarial training clips to")
        eps = check_positive("eps", 0.2 if eps is None else eps, resolved=True)
        clean_weight = check_non_negative("clean_weight", clean_weight, maximum=1)
        norm = "linf" if norm is None else norm
        check_choice("norm", norm, ("linf", "l2"))
        self.clip = None if clip is None else check_box_pair("clip", clip)
        super().__init__(base, loss=loss, **kwargs)
        self.eps, self.clean_weight, self.norm = eps, clean_weight, norm

    @property
    def threat(self) -> ThreatModel:
        """The threat model it trains against: `ThreatModel(norm, eps, *clip)`."""
        return ThreatModel(self.norm, self.eps, *(self.clip or (None, None)))

    @property
    def alpha(self) -> float:
        """Deprecated name of `clean_weight`."""
        return self.clean_weight

    @property
    def data_weight(self) -> float:  # type: ignore[override]
        return self.clean_weight

    @property
    def extra_weight(self) -> float:  # type: ignore[override]
        return 1.0 - self.clean_weight

    def adversarial_examples(self, x: Any, y: Any, training: bool = False):
        """x + eps * sign(grad_x L(f(x), y)) for the current weights (l2: normalised gradient).
        x must lie in `clip` (the projection of x itself would count as perturbation)."""
        if self.clip is not None:
            check_box(*self.clip, np.asarray(keras.ops.convert_to_numpy(x)))
        x = as_float_inputs(x)
        if not self.built:
            self.build(x.shape)
        labels, _ = class_indices(y, self.num_outputs)
        return self._logits_and_adversarial(x, labels, training)[1]

    def _logits_and_adversarial(self, x: Any, labels: Any, training: bool):
        """One forward pass gives the clean logits and, by its input gradient, x_adv."""
        return fgsm_examples(self.base, x, labels, self.eps, norm=self.norm,
                             clip=self.clip or (None, None),
                             loss=lambda y, logits: self.data_loss(y, logits),
                             training=training)

    def logits_and_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, Any]:
        logits, x_adv = self._logits_and_adversarial(x, labels, training)
        with _keras_compat.keeping_layer_state(self.base):  # the clean pass updates them
            adv_logits = call_logits(self.base, x_adv, training=training)
        return logits, self.data_loss(labels, adv_logits)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "eps": self.eps, "clean_weight": self.clean_weight,
                "norm": self.norm, "clip": self.clip}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AdversarialTrainingModel:
        config = dict(config)
        if "alpha" in config:  # saved before clean_weight had its name
            config["clean_weight"] = config.pop("alpha")
        return super().from_config(config)
