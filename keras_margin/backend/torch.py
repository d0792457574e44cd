"""The backend seam on PyTorch: torch.autograd.grad; programs run eagerly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import torch


def vjp(fn: Callable, x: Any, has_aux: bool = False, create_graph: bool = False):
    """`fn(x)` and its pullback; `create_graph=True` keeps the gradient differentiable."""
    x = keras.ops.convert_to_tensor(x)
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        result = fn(x)
    out, aux = result if has_aux else (result, None)

    def pullback(cotangent: Any) -> torch.Tensor:
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(
                out, x, grad_outputs=keras.ops.cast(cotangent, out.dtype), retain_graph=True,
                create_graph=create_graph, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad

    return (out, pullback, aux) if has_aux else (out, pullback)


def value_and_weight_grad(fn: Callable, variables: list) -> tuple[Any, list]:
    """(fn(), d fn() / d variables) for a scalar `fn` of the current weights."""
    with torch.enable_grad():
        value = fn()
        grads = torch.autograd.grad(value, [v.value for v in variables], allow_unused=True)
    return value, [torch.zeros_like(v.value) if g is None else g
                   for v, g in zip(variables, grads)]


def compile_fn(fn: Callable, model: Any, jit_compile: bool = False) -> Callable:
    """PyTorch runs the attacks eagerly (`jit_compile` is accepted and ignored)."""
    del model, jit_compile
    return fn


def is_traced(x: Any) -> bool:
    """PyTorch runs eagerly: values are always known (but not for symbolic Keras tensors)."""
    return type(x).__name__ == "KerasTensor"


def map_in_order(fn: Callable, xs: Any, shape: tuple) -> tuple[Any, Any]:
    """fn over xs's first axis, one element at a time (PyTorch runs eagerly), fn returning a
    pair of tensors of `shape`: the pair stacked."""
    del shape
    pairs = [fn(x) for x in xs]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


class trainer:  # noqa: N801 - a namespace, as `keras_margin.backend.trainer`
    """RobustModel's steps on PyTorch: eager autograd; `create_graph=True` in the input
    gradient makes the penalty differentiable; an invalid batch raises before any update."""

    @staticmethod
    def train_step(model: Any, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        model.zero_grad()
        objective = model.objective(x, y, sample_weight, training=True)
        if not bool(objective.valid):
            raise ValueError("keras_margin: the batch holds NaN/Inf inputs, inputs outside "
                             "the trainer's box (AdversarialTrainingModel's clip) or labels "
                             "outside the model's classes, or its objective is not finite; "
                             "refusing to train on it.")
        loss = model.optimizer.scale_loss(objective.total)
        loss.backward()
        weights = model.trainable_weights[:]
        grads = [v.value.grad for v in weights]
        with torch.no_grad():
            model.optimizer.apply(grads, weights)
        return model.record(objective, x, sample_weight)

    @staticmethod
    def test_step(model: Any, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        objective = model.objective(x, y, sample_weight, training=False)
        return model.record(objective, x, sample_weight)


class Steps:
    """RobustModel's eager train and test steps as Keras's PyTorch trainer calls them."""

    def train_step(self, data: Any):
        return trainer.train_step(self, data)

    def test_step(self, data: Any):
        return trainer.test_step(self, data)
