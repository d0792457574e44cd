"""The private Keras (and TensorFlow) API that keras-margin touches, and its workarounds.

Everything here is checked against the Keras versions it was written for (`KERAS_TESTED`, the
oldest and newest minor versions tested): `check_keras_version` warns once outside them, and
tests/test_keras_compat.py fails if a private name used here moves.

* `loss_tracker(model)`: Keras's own "loss" metric (`Trainer._loss_tracker`), which the trainers
  update with the whole objective so that `loss` in the logs is what was minimised.
* `output_tensors(model)`: a functional model's output tensors (`Functional._outputs`), to find
  the layer that makes them (a final softmax is refused).
* `maybe_symbolic_build` and `multi_worker_logs`: Keras 3 fails in `fit` under
  `MultiWorkerMirroredStrategy` (keras-team/keras#20585): it builds the model from a
  `strategy.reduce` of a `PerReplica` batch (`Trainer._symbolic_build`), and reduces scalar logs
  along an axis they lack.
* `layers_computing_in(model, policy)`: every layer of a model (`Layer._flatten_layers`) under
  another dtype policy for a block: the low-precision rival search.
* TensorFlow: `without_retracing_warning` (the attacks' programs are traced once per model and
  configuration, which TF's retracing detector, keyed by the Python code, reports after a few
  models) and `is_symbolic_tensor` (`tf.__internal__.SymbolicTensor`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import keras

KERAS_TESTED = ((3, 8), (3, 15))
_WARNED: list[bool] = []


def keras_version() -> tuple[int, int]:
    major, minor = keras.__version__.split(".")[:2]
    return int(major), int(minor)


def check_keras_version() -> bool:
    """True if this Keras lies within `KERAS_TESTED`; else warns once (the private names used
    here may have moved) and returns False."""
    lowest, highest = KERAS_TESTED
    inside = lowest <= keras_version() <= highest
    if not inside and not _WARNED:
        _WARNED.append(True)
        warnings.warn(f"keras-margin was tested with Keras {lowest[0]}.{lowest[1]} to "
                      f"{highest[0]}.{highest[1]}; this is Keras {keras.__version__}. If "
                      "training fails inside keras_margin/_keras_compat.py, a private Keras "
                      "name it uses has moved.", UserWarning, stacklevel=2)
    return inside


def output_tensors(model: Any) -> list | None:
    """A functional model's output tensors, or None."""
    return getattr(model, "_outputs", None) or getattr(model, "outputs", None)


def stateless_scope() -> Any:
    """The innermost active `keras.StatelessScope`, or None."""
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    return get_stateless_scope()


def without_retracing_warning(function: Any) -> Any:
    """A tf.function whose frequent-retracing warning is off (a private TF attribute)."""
    function._omit_frequent_tracing_warning = True
    return function


def is_symbolic_tensor(x: Any) -> bool:
    """A TensorFlow graph tensor (inside a tf.function or a Keras functional graph)."""
    import tensorflow as tf

    return isinstance(x, tf.__internal__.SymbolicTensor)


def loss_tracker(model: keras.Model) -> keras.metrics.Metric:
    """Keras's "loss" tracker of a compiled model (`Trainer._loss_tracker`)."""
    return model._loss_tracker


def multi_worker_logs(logs: dict[str, Any]) -> dict[str, Any]:
    """Scalars as shape (1,) under multi-worker MultiWorkerMirroredStrategy (TensorFlow).

    Keras 3 reduces each returned log across workers with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on scalars (keras-team/keras#20585); a (1,) tensor reduces to the scalar mean.
    """
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()):
        return logs
    return {key: tf.reshape(value, [1]) for key, value in logs.items()}


def maybe_symbolic_build(model: keras.Model, iterator: Any = None,
                         data_batch: Any = None) -> None:
    """`Trainer._maybe_symbolic_build`, building from one replica's batch (TensorFlow).

    Keras 3's version fails under MultiWorkerMirroredStrategy ("Attempt to convert a value
    (PerReplica...)", keras-team/keras#20585); building needs shapes only, which any local
    replica's batch has.
    """
    import tensorflow as tf

    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
            break
    with strategy.scope():
        model._symbolic_build(data_batch=data_batch)


def replicas_in_sync() -> int:
    """The replicas a TensorFlow step's loss is summed over (1 off tf.distribute)."""
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


@contextlib.contextmanager
def layers_computing_in(model: Any, policy: str) -> Iterator[None]:
    """Every layer of `model` (nested ones too) computes under the dtype policy `policy`
    (e.g. "mixed_bfloat16": bfloat16 arithmetic, float32 variables) inside the block; each
    layer's own policy is restored after it."""
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    before = [layer.dtype_policy for layer in layers]
    for layer in layers:
        layer.dtype_policy = policy
    try:
        yield
    finally:
        for layer, old in zip(layers, before):
            layer.dtype_policy = old


@contextlib.contextmanager
def keeping_layer_state(model: Any) -> Iterator[None]:
    """Inside the block `model`'s layers may run in training mode, but its non-trainable state
    (batch-norm moving statistics) is, at the end, what it was before: the extra passes of
    robust training (attacks, rival searches, VAT's power iteration) leave the statistics to
    the data pass, as a plain `fit` updates them. Dropout's seeds move on as usual.

    Under a `keras.StatelessScope` (JAX's compiled steps) the scope's values are put back;
    otherwise the variables are assigned their earlier values (TensorFlow orders the reads
    and assignments of one variable as written, inside a tf.function too).
    """
    seeds = {id(v) for v in _seed_states(model)}
    kept = [v for v in getattr(model, "non_trainable_variables", []) if id(v) not in seeds]
    scope = stateless_scope()
    if scope is not None:
        before = {id(v): scope.state_mapping.get(id(v)) for v in kept}
    else:
        before = {id(v): keras.ops.copy(v.value) for v in kept}
    try:
        yield
    finally:
        for variable in kept:
            value = before[id(variable)]
            if scope is None:
                variable.assign(value)
            elif value is None:
                scope.state_mapping.pop(id(variable), None)
            else:
                scope.state_mapping[id(variable)] = value


def _seed_states(model: Any) -> list:
    """The state variables of the seed generators of `model`'s layers (nested ones too)."""
    layers = model._flatten_layers(include_self=True, recursive=True) \
        if hasattr(model, "_flatten_layers") else []
    return [generator.state for layer in layers
            for generator in getattr(layer, "_seed_generators", [])]
