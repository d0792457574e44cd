"""The backend seam on JAX: jax.vjp, and jax.jit with the model's weights as arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import keras


def vjp(fn: Callable, x: Any, has_aux: bool = False, create_graph: bool = False):
    """`fn(x)` and its pullback; JAX differentiates the pullback again whenever asked."""
    del create_graph
    x = jax.numpy.asarray(x)
    if has_aux:
        out, pull, aux = jax.vjp(fn, x, has_aux=True)
        return out, (lambda cotangent: pull(keras.ops.cast(cotangent, out.dtype))[0]), aux
    out, pull = jax.vjp(fn, x)
    return out, (lambda cotangent: pull(keras.ops.cast(cotangent, out.dtype))[0])


def value_and_weight_grad(fn: Callable, variables: list) -> tuple[Any, list]:
    """(fn(), d fn() / d variables) for a scalar `fn` of the current weights (stateless)."""
    def of_values(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn()

    value, grads = jax.value_and_grad(of_values)([v.value for v in variables])
    return value, list(grads)


def compile_fn(fn: Callable, model: Any, jit_compile: bool = True) -> Callable:
    """`fn` under jax.jit, reading `model`'s weights as arguments at every call.

    A jitted function would otherwise bake the weights of its first call in as constants; the
    weights go in through a `keras.StatelessScope`, so the same program serves a model whose
    weights change between calls (as during training). Without `jit_compile` it runs eagerly.
    """
    variables = list(getattr(model, "variables", None) or [])
    if not jit_compile:
        return fn

    def stateless(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    jitted = jax.jit(stateless)
    return lambda *args: jitted([v.value for v in variables], *args)


def is_traced(x: Any) -> bool:
    """A JAX tracer (inside jit, grad or vmap): the values are not known."""
    return isinstance(x, jax.core.Tracer) or type(x).__name__ == "KerasTensor"


class trainer:  # noqa: N801 - a namespace, as `keras_margin.backend.trainer`
    """RobustModel's steps on JAX: stateless and jitted by Keras, double backprop by nesting
    jax.vjp inside jax.value_and_grad; an invalid batch leaves weights and optimizer as they
    were (the update is selected away, as XLA cannot raise)."""

    @staticmethod
    def _objective(model: Any, trainable: list, non_trainable: list, x: Any, y: Any,
                   sample_weight: Any, training: bool):
        mapping = list(zip(model.trainable_variables, trainable)) + \
            list(zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            objective = model.objective(x, y, sample_weight, training=training)
        non_trainable = [_current(scope, v, value)
                         for v, value in zip(model.non_trainable_variables, non_trainable)]
        return objective, non_trainable

    @staticmethod
    def _record(model: Any, metrics: list, objective: dict, x: Any, sample_weight: Any):
        with keras.StatelessScope(state_mapping=list(zip(model.metrics_variables,
                                                         metrics))) as scope:
            logs = model.record(objective, x, sample_weight)
        return logs, [_current(scope, v, value)
                      for v, value in zip(model.metrics_variables, metrics)]

    @staticmethod
    def train_step(model: Any, state: Any, data: Any):
        trainable, non_trainable, optimizer_vars, metrics = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

        def loss_fn(trainable, non_trainable):
            objective, non_trainable = trainer._objective(
                model, trainable, non_trainable, x, y, sample_weight, training=True)
            with keras.StatelessScope(state_mapping=list(zip(model.optimizer.variables,
                                                             optimizer_vars))):
                loss = model.optimizer.scale_loss(objective.total)
            return loss, (objective, non_trainable)

        (_, (objective, new_non_trainable)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(trainable, non_trainable)
        new_trainable, new_optimizer_vars = model.optimizer.stateless_apply(
            optimizer_vars, grads, trainable)
        valid = objective.valid
        keep = jax.tree_util.tree_map
        trainable = keep(lambda new, old: jax.numpy.where(valid, new, old), new_trainable,
                         trainable)
        optimizer_vars = keep(lambda new, old: jax.numpy.where(valid, new, old),
                              new_optimizer_vars, optimizer_vars)
        non_trainable = keep(lambda new, old: jax.numpy.where(valid, new, old),
                             new_non_trainable, non_trainable)
        logs, metrics = trainer._record(model, metrics, objective, x, sample_weight)
        return logs, (trainable, non_trainable, optimizer_vars, metrics)

    @staticmethod
    def test_step(model: Any, state: Any, data: Any):
        trainable, non_trainable, metrics = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        objective, non_trainable = trainer._objective(model, trainable, non_trainable, x, y,
                                                      sample_weight, training=False)
        logs, metrics = trainer._record(model, metrics, objective, x, sample_weight)
        return logs, (trainable, non_trainable, metrics)


class Steps:
    """RobustModel's stateless train and test steps as Keras's JAX trainer calls them."""

    def train_step(self, state: Any, data: Any):
        return trainer.train_step(self, state, data)

    def test_step(self, state: Any, data: Any):
        return trainer.test_step(self, state, data)


def _current(scope: Any, variable: Any, default: Any) -> Any:
    value = scope.get_current_value(variable)
    return default if value is None else value
