"""VATModel: virtual adversarial training (Miyato et al., 2016), the paper's "VAT" baseline."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_margin import _keras_compat, backend
from keras_margin._validation import (
    check_choice,
    check_integer,
    check_non_negative,
    check_positive,
)
from keras_margin.jacobian import call_logits
from keras_margin.norms import normalize
from keras_margin.threat import ThreatModel, resolve
from keras_margin.training.base import RobustModel


def _class_log_probabilities(logits: Any):
    """log softmax over classes; one logit f means the two classes (0, f)."""
    if logits.shape[-1] == 1:
        logits = ops.concatenate([ops.zeros_like(logits), logits], axis=-1)
    return ops.log_softmax(logits, axis=-1)


def _kl_divergence(log_p: Any, logits_q: Any):
    """KL(p || q) per sample, p given by its log-probabilities, q by logits."""
    log_q = _class_log_probabilities(logits_q)
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


HVP_METHODS = ("finite_difference", "exact")


@keras.saving.register_keras_serializable(package="keras_margin")
class VATModel(RobustModel):
    """Virtual adversarial training (Miyato et al., 2016), the paper's "VAT" baseline.

    Minimises L(x, y) + alpha * KL(p(x) || p(x + r_vadv)), r_vadv = eps * the direction found by
    `power_iterations` power iterations d <- H d / ||H d|| from a random start, H the Hessian of
    r -> KL(p(x) || p(x + r)) at r = 0.

    Args:
        base: a Keras model that outputs logits.
        eps: l2 norm of the virtual adversarial perturbation, > 0 (default 2.0, the paper's on
            MNIST); or `threat=ThreatModel("l2", eps)` (not both), which `.threat` gives back.
        xi: finite-difference step of the power iteration (the paper: 1e-6); > 0 (at 0 the
            finite difference is exactly 0 for most samples).
        power_iterations: power iterations (the paper: 1).
        alpha: weight of the KL term.
        loss: the data loss.
        seed: seed of the random start.
        hvp: how H d is taken. "finite_difference" (the paper and Miyato et al.'s code):
            grad_r KL at r = xi d, which in float32 with xi = 1e-6 is mostly rounding noise;
            "exact": the Hessian-vector product by double backprop (one more backward pass).

    `fit` reports `loss`, `data_loss` and `vat_loss` (the KL term). The random start's
    generator state is saved with the model, so a resumed run draws what an uninterrupted one
    would.
    """

    extra_name = "vat_loss"

    def __init__(self, base: keras.Model, eps: float | None = None, xi: float = 1e-6,
                 power_iterations: int = 1, alpha: float = 1.0, loss: Any = "crossentropy",
                 seed: int | None = None, hvp: str = "finite_difference",
                 threat: ThreatModel | None = None, **kwargs: Any) -> None:
        if threat is not None:
            if threat.norm != "l2" or threat.bounded:
                raise ValueError(f"Invalid value for argument threat: {threat}. VAT perturbs "
                                 "in an l2 ball with no input box: ThreatModel('l2', eps).")
            eps = resolve(threat, eps, budget=True)[0]
        eps = check_positive("eps", 2.0 if eps is None else eps, True)
        xi = check_positive("xi", xi, True)
        alpha = check_non_negative("alpha", alpha)
        power_iterations = check_integer("power_iterations", power_iterations, minimum=0)
        check_choice("hvp", hvp, HVP_METHODS)
        if seed is not None:
            seed = check_integer("seed", seed, minimum=0)
        super().__init__(base, loss=loss, **kwargs)
        self.eps, self.xi, self.alpha, self.hvp = eps, xi, alpha, hvp
        self.power_iterations, self.seed = power_iterations, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def extra_weight(self) -> float:  # type: ignore[override]
        return self.alpha

    @property
    def threat(self) -> ThreatModel:
        """Its virtual adversary's threat model: `ThreatModel("l2", eps)`."""
        return ThreatModel("l2", self.eps)

    def _kl_gradient(self, x: Any, log_p: Any, r: Any, training: bool,
                     create_graph: bool = False):
        """grad_r sum_b KL(p(x_b) || p(x_b + r_b)); with `create_graph`, differentiable again."""
        def kl(z):
            return _kl_divergence(log_p, call_logits(self.base, x + z, training=training))

        return backend.value_and_grad(kl, r, create_graph=create_graph)[1]

    def _hessian_vector(self, x: Any, log_p: Any, d: Any, training: bool):
        """H d (up to a positive factor, which the power iteration normalises away)."""
        if self.hvp == "finite_difference":
            return self._kl_gradient(x, log_p, self.xi * normalize(d, "l2"), training)
        axes = tuple(range(1, len(x.shape)))

        def directional(r):
            return ops.sum(self._kl_gradient(x, log_p, r, training, create_graph=True) * d,
                           axis=axes)

        return backend.value_and_grad(directional, ops.zeros_like(x))[1]

    def virtual_adversarial_perturbation(self, x: Any, logits: Any, training: bool = False):
        """r_vadv = eps * d, d from power iterations on KL(p(x) || p(x + r))."""
        log_p = ops.stop_gradient(_class_log_probabilities(logits))
        d = keras.random.normal(ops.shape(x), seed=self.seed_generator, dtype=x.dtype)
        for _ in range(self.power_iterations):
            d = ops.stop_gradient(self._hessian_vector(x, log_p, d, training))
        return self.eps * normalize(d, "l2")

    def logits_and_extra(self, x: Any, labels: Any, training: bool) -> tuple[Any, Any]:
        logits = call_logits(self.base, x, training=training)
        with _keras_compat.keeping_layer_state(self.base):  # the clean pass updates them
            r_vadv = self.virtual_adversarial_perturbation(x, logits, training=training)
            adv_logits = call_logits(self.base, x + r_vadv, training=training)
        log_p = ops.stop_gradient(_class_log_probabilities(logits))
        return logits, _kl_divergence(log_p, adv_logits)

    # The seed generator's state is not among the variables Keras saves for a Model.
    def save_own_variables(self, store: Any) -> None:
        super().save_own_variables(store)
        store["seed_generator_state"] = keras.ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store: Any) -> None:
        keys = list(store.keys())  # a Keras H5 store, not a dict
        super().load_own_variables({key: store[key] for key in keys
                                    if key != "seed_generator_state"})
        if "seed_generator_state" in keys:
            self.seed_generator.state.assign(store["seed_generator_state"][...])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "eps": self.eps, "xi": self.xi,
                "power_iterations": self.power_iterations, "alpha": self.alpha,
                "seed": self.seed, "hvp": self.hvp}
