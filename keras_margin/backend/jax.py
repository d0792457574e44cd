"""The backend seam on JAX: jax.vjp, and jax.jit with the model's weights as arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import keras

from keras_margin import _keras_compat


def vjp(fn: Callable, x: Any, has_aux: bool = False, create_graph: bool = False):
    """`fn(x)` and its pullback; JAX differentiates the pullback again whenever asked.

    Variable updates made by `fn` (batch-norm statistics, dropout's seed) come out of the
    transformation as values and are applied where `fn` would have applied them (the enclosing
    `keras.StatelessScope`, or the variables), instead of leaking its tracers.
    """
    del create_graph
    x = jax.numpy.asarray(x)
    outer = _keras_compat.stateless_scope()
    updated: list = []

    def recorded(z):
        scope = _Recording(outer)
        with scope:
            result = fn(z)
        out, aux = result if has_aux else (result, None)
        updated.extend(scope.updated)
        return out, (aux, [scope.get_current_value(v) for v in scope.updated], scope.losses)

    out, pull, (aux, values, losses) = jax.vjp(recorded, x, has_aux=True)
    for variable, value in zip(updated, values):
        if outer is not None:
            outer.add_update((variable, value))
        else:
            variable.assign(value)
    for loss in losses:
        outer.add_loss(loss)

    def pullback(cotangent):
        return pull(keras.ops.cast(cotangent, out.dtype))[0]

    return (out, pullback, aux) if has_aux else (out, pullback)


class _Recording(keras.StatelessScope):
    """A stateless scope that reads through to `outer`'s values and lists the variables
    assigned inside it, in order."""

    def __init__(self, outer: Any) -> None:
        super().__init__()
        if outer is not None:
            self.state_mapping = dict(outer.state_mapping)
            self.collect_losses = outer.collect_losses  # its losses are returned, as values
        self.updated: list = []

    def add_update(self, update: Any) -> None:
        if all(update[0] is not v for v in self.updated):
            self.updated.append(update[0])
        super().add_update(update)


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


def map_in_order(fn: Callable, xs: Any, shape: tuple) -> tuple[Any, Any]:
    """fn over xs's first axis, one element at a time (`lax.map`: a loop in the compiled
    program), fn returning a pair of tensors of `shape`: the pair stacked."""
    del shape
    return jax.lax.map(fn, xs)


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
