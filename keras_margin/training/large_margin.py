"""LargeMarginModel: Elsayed et al.'s large margin loss ("Large Margin Deep Networks for
Classification", NeurIPS 2018), at the input and at hidden layers.

The first-order distance of x to the boundary between y and a rival j, measured at a layer's
output h_l (eq. 7 of that paper, on the softmax outputs as its reference code does),

    d_l = (p_y - p_j) / (||grad_{h_l} (p_y - p_j)||_* / s_l + epsilon),

||.||_* the dual of the distance norm and s_l the layer's scale, enters a hinge clipped both ways:

    loss_l = max(0, min(gamma - d_l, alpha * gamma)),

so points farther than gamma, or misclassified by more than (alpha - 1) gamma, do not train. The
rivals are the top_k other classes by probability (worst case: the smallest distance); the loss
is the mean over layers. With `approximate` (the reference's default) the gradient norm is a
constant to the weight gradient, so no double backprop is needed.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from keras_margin import taps as taps_module
from keras_margin._validation import check_choice, check_integer, check_non_negative, check_positive
from keras_margin.jacobian import flat_norm
from keras_margin.training.base import RobustModel

DISTANCE_NORMS = ("l2", "linf", "l1")
DUAL = {"l2": "l2", "linf": "l1", "l1": "linf"}
OUTPUTS = ("probabilities", "logits")


@keras.saving.register_keras_serializable(package="keras_margin")
class LargeMarginModel(RobustModel):
    """Elsayed et al. (2018)'s normalised margin: a hinge on the first-order distance to the
    boundary at the input and at hidden layers (see the module docstring for the formula).

    The defaults are the reference code's MNIST set-up (google-research/large_margin,
    mnist_config.py and train.py): gamma 1e4, alpha 4, top_k 1, epsilon 1e-6, the margin loss
    alone (`data_weight` 0), distances on the softmax outputs. Its MNIST runs measure l_inf
    distances with each layer scaled by its size (`norm="linf"`, `layer_scales="size"`);
    `norm` defaults to l2, its loss function's default.

    Args:
        base: a Keras model that outputs k >= 2 logits.
        layers: "input" and top-level layer names, layers or indices into `base.layers`
            (None: the input only); the reference trains at the input and after each
            convolution.
        gamma: the target distance (> 0); distances above it do not train.
        alpha: with gamma, the lower clip (> 0): distances below gamma (1 - alpha) do not train.
        top_k: the rivals, the top_k other classes by probability (1 <= top_k < k).
        norm: the distance norm, "l2", "linf" or "l1" (the gradient takes its dual).
        epsilon: > 0, added to the gradient norm.
        approximate: the gradient norm as a constant to the weight gradient (the reference's
            default; no double backprop); False differentiates through it.
        worst_case: the smallest distance of the top_k rivals (the reference's default), else
            the sum of their losses.
        layer_scales: one number > 0 per layer dividing its gradient norm, or "size" (each
            layer's number of units, as the reference does for l_inf); None: 1.
        outputs: "probabilities" (the reference code) or "logits" (the paper's f_i).
        data_weight: weight of the data loss `loss` (the reference: 0, the margin loss alone).
        loss: the data loss on logits (logged as `data_loss` whatever its weight).

    `fit` reports `loss`, `data_loss`, `margin_loss` (the mean of the layers' losses) and
    `distance_<layer>` (the batch mean of each layer's worst-case distance d_l).
    """

    extra_name = "margin_loss"

    def __init__(self, base: keras.Model, layers: Any = None, gamma: float = 1e4,
                 alpha: float = 4.0, top_k: int = 1, norm: str = "l2", epsilon: float = 1e-6,
                 approximate: bool = True, worst_case: bool = True, layer_scales: Any = None,
                 outputs: str = "probabilities", data_weight: float = 0.0,
                 loss: Any = "crossentropy", **kwargs: Any) -> None:
        gamma = check_positive("gamma", gamma)
        alpha = check_positive("alpha", alpha)
        top_k = check_integer("top_k", top_k)
        check_choice("norm", norm, DISTANCE_NORMS)
        epsilon = check_positive("epsilon", epsilon)
        check_choice("approximate", approximate, (True, False))
        check_choice("worst_case", worst_case, (True, False))
        check_choice("outputs", outputs, OUTPUTS)
        data_weight = check_non_negative("data_weight", data_weight)
        taps = taps_module.Taps(base, [taps_module.INPUT] if layers is None else layers)
        if layer_scales is not None and layer_scales != "size":
            taps_module.check_layer_weights(layer_scales, taps.layers, "layer_scales")
            if any(float(s) <= 0 for s in layer_scales):
                raise ValueError(f"Invalid value for argument layer_scales: {layer_scales!r}. "
                                 "Expected numbers > 0 (or 'size').")
        super().__init__(base, loss=loss, **kwargs)
        self.gamma, self.alpha, self.top_k, self.norm = gamma, alpha, top_k, norm
        self.epsilon, self.approximate, self.worst_case = epsilon, approximate, worst_case
        self.outputs, self.layer_scales = outputs, layer_scales
        self.data_weight = data_weight
        self.taps = taps
        if getattr(base, "outputs", None):
            self._check_top_k(base.outputs[0].shape[-1])
        self.distance_trackers = {name: keras.metrics.Mean(name=f"distance_{name}")
                                  for name in taps.names}

    def _check_top_k(self, k: int) -> None:
        if k < 2 or self.top_k > k - 1:
            raise ValueError(f"Invalid value for argument top_k: {self.top_k}. Expected 1 <= "
                             f"top_k <= k - 1 = {k - 1} rivals (LargeMarginModel needs k >= 2 "
                             "logits).")

    def _scales(self, shapes: list[tuple]) -> list[float]:
        if self.layer_scales == "size":
            return [float(math.prod(shape)) for shape in shapes]
        return [1.0] * len(shapes) if self.layer_scales is None \
            else [float(s) for s in self.layer_scales]

    def logits_and_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, ...]:
        shapes = self.taps.shapes(x.shape)
        logits, pullback = taps_module.logits_and_tapped_pullback(
            self.base, x, self.taps.layers, shapes, training=training,
            create_graph=not self.approximate)
        k = logits.shape[-1]
        self._check_top_k(k)
        scores = ops.softmax(logits, axis=-1) if self.outputs == "probabilities" else logits
        label_hot = ops.one_hot(labels, k, dtype=logits.dtype)
        others = ops.where(label_hot > 0, ops.cast(-math.inf, logits.dtype),
                           ops.stop_gradient(scores))
        rivals = ops.top_k(others, k=self.top_k)[1]  # (batch, top_k), no gradient
        own = ops.sum(scores * label_hot, axis=-1)
        distances = []
        for i in range(self.top_k):
            rival_hot = ops.one_hot(rivals[:, i], k, dtype=logits.dtype)
            gap = own - ops.sum(scores * rival_hot, axis=-1)  # p_y - p_j (batch,)
            grads = pullback(self._cotangent(scores, label_hot - rival_hot))
            per_layer = []
            for grad, scale in zip(grads, self._scales(shapes)):
                size = flat_norm(grad, DUAL[self.norm]) / scale
                if self.approximate:
                    size = ops.stop_gradient(size)
                per_layer.append(gap / (size + self.epsilon))
            distances.append(ops.stack(per_layer, axis=1))  # (batch, L)
        distance = ops.stack(distances, axis=2)  # (batch, L, top_k)
        if self.worst_case:
            distance = ops.min(distance, axis=2, keepdims=True)
        hinge = ops.relu(self.gamma - ops.maximum(distance, self.gamma * (1.0 - self.alpha)))
        extra = ops.mean(ops.sum(hinge, axis=2), axis=1)
        worst = ops.mean(ops.min(distance, axis=2), axis=0)  # (L,)
        aux = {name: worst[i] for i, name in enumerate(self.distance_trackers)}
        return logits, extra, aux

    def _cotangent(self, scores: Any, direction: Any) -> Any:
        """The logits' cotangent whose pullback is grad (s_y - s_j), s the scores: the
        direction itself for logits, J_softmax^T direction for probabilities."""
        if self.outputs == "logits":
            return direction
        inner = ops.sum(scores * direction, axis=-1, keepdims=True)
        cotangent = scores * (direction - inner)
        return ops.stop_gradient(cotangent) if self.approximate else cotangent

    def aux_trackers(self) -> dict[str, keras.metrics.Metric]:
        return dict(self.distance_trackers)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "layers": self.taps.names,
                "gamma": self.gamma, "alpha": self.alpha, "top_k": self.top_k,
                "norm": self.norm, "epsilon": self.epsilon, "approximate": self.approximate,
                "worst_case": self.worst_case, "layer_scales": self.layer_scales,
                "outputs": self.outputs, "data_weight": self.data_weight}
