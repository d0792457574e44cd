"""The backend seam on TensorFlow: gradient tapes and tf.function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf


def vjp(fn: Callable, x: Any, has_aux: bool = False, create_graph: bool = False):
    """`fn(x)` and a pullback cotangent -> grad_x <cotangent, fn(x)>, callable many times.

    A persistent tape records `fn`; an enclosing tape (a train step's) records the pullback's
    own operations, so its result is differentiable again whatever `create_graph` says.
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        result = fn(x)
    out, aux = result if has_aux else (result, None)

    def pullback(cotangent: Any) -> tf.Tensor:
        return tape.gradient(out, x, output_gradients=tf.cast(cotangent, out.dtype),
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return (out, pullback, aux) if has_aux else (out, pullback)


def value_and_weight_grad(fn: Callable, variables: list) -> tuple[Any, list]:
    """(fn(), d fn() / d variables) for a scalar `fn` of the current weights."""
    with tf.GradientTape() as tape:
        value = fn()
    return value, tape.gradient(value, [v.value for v in variables],
                                unconnected_gradients=tf.UnconnectedGradients.ZERO)


def compile_fn(fn: Callable, model: Any, jit_compile: bool | str = False) -> Callable:
    """`fn` as a tf.function (XLA with `jit_compile=True`); TensorFlow reads variables live.

    Each attack configuration on each model traces its programs once, which TensorFlow's
    frequent-retracing detector (keyed by the Python code, so shared by every model) would
    report as retracing after a few models: the warning is switched off for these functions.
    """
    from keras_margin import _keras_compat

    del model
    function = tf.function(fn, jit_compile=jit_compile is True, reduce_retracing=True)
    return _keras_compat.without_retracing_warning(function)


def is_traced(x: Any) -> bool:
    """Inside a tf.function (or a Keras functional graph): the values are not known."""
    from keras_margin import _keras_compat

    return not tf.executing_eagerly() or _keras_compat.is_symbolic_tensor(x) \
        or type(x).__name__ == "KerasTensor"


def map_in_order(fn: Callable, xs: Any, shape: tuple) -> tuple[Any, Any]:
    """fn over xs's first axis, one element at a time (a while loop, no two iterations in
    flight), fn returning a pair of tensors of `shape` in xs's dtype: the pair stacked."""
    spec = tf.TensorSpec(shape, xs.dtype)
    return tf.map_fn(fn, xs, fn_output_signature=(spec, spec), parallel_iterations=1)


class trainer:  # noqa: N801 - a namespace, as `keras_margin.backend.trainer`
    """RobustModel's steps on TensorFlow: nested tapes (double backprop), tf.distribute, XLA."""

    @staticmethod
    def train_step(model: Any, data: Any) -> dict[str, Any]:
        import keras

        from keras_margin import _keras_compat

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            objective = model.objective(x, y, sample_weight, training=True)
            # Scaled like Keras's compiled losses: the replicas' gradients are summed.
            loss = model.optimizer.scale_loss(
                objective.total / _keras_compat.replicas_in_sync())
        weights = model.trainable_weights
        grads = tape.gradient(loss, weights)
        if not model.optimizer.built:
            model.optimizer.build(weights)
        if model.jit_compile:  # XLA drops assertions: skip the update instead
            tf.cond(objective.valid, lambda: _apply(model, grads, weights), tf.no_op)
        else:
            check = tf.debugging.Assert(objective.valid, [
                "keras_margin: the batch holds NaN/Inf inputs, inputs outside the trainer's box "
                "(AdversarialTrainingModel's clip) or labels outside the model's classes, or "
                "its objective is not finite; refusing to train on it"])
            with tf.control_dependencies([check]):
                _apply(model, grads, weights)
        return _keras_compat.multi_worker_logs(model.record(objective, x, sample_weight))

    @staticmethod
    def test_step(model: Any, data: Any) -> dict[str, Any]:
        import keras

        from keras_margin import _keras_compat

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        objective = model.objective(x, y, sample_weight, training=False)
        return _keras_compat.multi_worker_logs(model.record(objective, x, sample_weight))


class Steps:
    """RobustModel's train and test steps as Keras's TensorFlow trainer calls them."""

    def train_step(self, data: Any):
        return trainer.train_step(self, data)

    def test_step(self, data: Any):
        return trainer.test_step(self, data)

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        """Keras's build before `fit`, fixed under MultiWorkerMirroredStrategy (see
        `_keras_compat.maybe_symbolic_build`)."""
        from keras_margin import _keras_compat

        _keras_compat.maybe_symbolic_build(self, iterator, data_batch)


def _apply(model: Any, grads: list, weights: list) -> tf.Operation:
    model.optimizer.apply_gradients(zip(grads, weights))
    return tf.no_op()
