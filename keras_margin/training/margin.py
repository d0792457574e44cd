"""MarginModel: margin maximization, mean_b L(f(x_b), y_b) + C * eps(x_b, y_b) (eq. 18)."""

from __future__ import annotations

from typing import Any

import keras

from keras_margin import taps as taps_module
from keras_margin._validation import check_candidates, check_choice, check_non_negative
from keras_margin.sensitivity import (
    NORMS,
    RIVALS,
    check_rival_dtype,
    logits_and_layer_sensitivity,
    logits_and_sensitivity,
)
from keras_margin.training.base import RobustModel

MAX_C = 1e6  # larger weights overflow float32 in the first steps


@keras.saving.register_keras_serializable(package="keras_margin")
class MarginModel(RobustModel):
    """Margin maximization: mean_b L(f(x_b), y_b) + C * eps(x_b, y_b) (eq. 18; eq. 14 binary).

    Args:
        base: a Keras model that outputs logits, k >= 2 units or 1 unit (binary, eq. 14).
        C: weight of the margin sensitivity (reference code: 0.1 for squared l2, 0.01 for l1).
        norm: the penalty's norm, "l2" or "l1" (the dual norm; defends l_inf perturbations).
        loss: "hinge" (Crammer-Singer; binary hinge for one logit), "crossentropy", or a Keras
            loss on logits.
        rival: "jacobian" (the reference code's j* from the full input Jacobian) or "logit".
        squared: None for the reference code's choice (squared l2, plain l1).
        candidates: with rival="jacobian", search j* among the top-`candidates` rival logits
            only (cheaper; None, the reference, searches all k - 1 rivals).
        rival_dtype: with rival="jacobian", search j* in "bfloat16" or "float16" (see
            `margin_sensitivity`); None, the reference, in the model's precision.
        layers: where the margin sensitivity is taken: None (the paper, the input only), or
            a list of top-level layer names, layers or indices into `base.layers`, and "input"
            for the input (hidden-layer margins, as Elsayed et al. 2018): eps_l =
            ||grad_{h_l} (f_y - f_j*)|| at each listed layer's output h_l, j* chosen at that
            layer by `rival`'s rule.
        layer_weights: one weight >= 0 per entry of `layers` (None: all 1); the extra term is
            sum_l w_l eps_l.

    `fit` reports `loss` (the whole objective), `data_loss` and `margin_sensitivity` (batch mean
    of eps; with `layers`, of sum_l w_l eps_l, and each eps_l as `margin_sensitivity_<layer>`),
    on every Keras backend. Layers run in training mode in the penalty as in the data loss
    (it is the same forward pass): batch-norm statistics are updated once per step, as a
    plain `fit` updates them.

    Example:
        >>> base = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
        ...                          keras.layers.Dense(10)])
        >>> model = MarginModel(base, C=0.1)
        >>> model.compile(optimizer="adam", metrics=["accuracy"])
        >>> model.fit(x, y, batch_size=100, epochs=1)
    """

    extra_name = "margin_sensitivity"

    def __init__(self, base: keras.Model, C: float = 0.1, norm: str = "l2",
                 loss: Any = "hinge", rival: str = "jacobian", squared: bool | None = None,
                 candidates: int | None = None, rival_dtype: str | None = None,
                 layers: Any = None, layer_weights: Any = None, **kwargs: Any) -> None:
        C = check_non_negative("C", C, maximum=MAX_C)
        check_choice("norm", norm, NORMS)
        check_choice("rival", rival, RIVALS)
        check_choice("squared", squared, (None, True, False))
        check_candidates(candidates, rival=rival)
        check_rival_dtype(rival_dtype, rival, base)
        taps = None if layers is None else taps_module.Taps(base, layers)
        if taps is None and layer_weights is not None:
            raise ValueError("layer_weights needs layers=[...]: one weight per listed layer.")
        weights = None if taps is None else \
            taps_module.check_layer_weights(layer_weights, taps.layers)
        if taps is not None and rival_dtype is not None:
            raise ValueError(f"rival_dtype={rival_dtype!r} applies to the input margin only "
                             "(layers=None).")
        super().__init__(base, loss=loss, **kwargs)
        self.C, self.norm, self.rival, self.squared = C, norm, rival, squared
        self.candidates, self.rival_dtype = candidates, rival_dtype
        self.taps, self.layer_weights = taps, weights
        self.layer_trackers = {} if taps is None else {
            name: keras.metrics.Mean(name=f"margin_sensitivity_{name}") for name in taps.names}

    @property
    def extra_weight(self) -> float:  # type: ignore[override]
        return self.C

    def logits_and_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, ...]:
        if self.taps is not None:
            return self._logits_and_layer_extra(x, labels, training)
        return logits_and_sensitivity(self.base, x, labels, norm=self.norm, rival=self.rival,
                                      squared=self.squared, training=training,
                                      candidates=self.candidates, rival_dtype=self.rival_dtype)

    def _logits_and_layer_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, ...]:
        logits, eps = logits_and_layer_sensitivity(
            self.base, x, labels, self.taps.layers, self.taps.shapes(x.shape), norm=self.norm,
            rival=self.rival, squared=self.squared, training=training,
            candidates=self.candidates)
        weights = keras.ops.convert_to_tensor(self.layer_weights, dtype=eps.dtype)
        means = keras.ops.mean(eps, axis=0)
        aux = {name: means[i] for i, name in enumerate(self.layer_trackers)}
        return logits, keras.ops.sum(eps * weights[None], axis=1), aux

    def aux_trackers(self) -> dict[str, keras.metrics.Metric]:
        return dict(self.layer_trackers)

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "C": self.C, "norm": self.norm, "rival": self.rival,
                  "squared": self.squared, "candidates": self.candidates,
                  "rival_dtype": self.rival_dtype}
        if self.taps is not None:  # absent before hidden-layer margins: older files load
            config.update(layers=self.taps.names,
                          layer_weights=list(self.layer_weights))
        return config
