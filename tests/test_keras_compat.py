"""The private Keras (and TensorFlow) names that _keras_compat.py uses still exist, and the
version check says where this Keras stands."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, small_mlp

from keras_margin import _keras_compat


def test_this_keras_is_a_tested_one():
    assert _keras_compat.check_keras_version()


def test_outside_the_tested_versions_it_warns_once(monkeypatch):
    monkeypatch.setattr(_keras_compat, "KERAS_TESTED", ((2, 0), (2, 1)))
    monkeypatch.setattr(_keras_compat, "_WARNED", [])
    with pytest.warns(UserWarning, match="tested with Keras 2.0 to 2.1"):
        assert not _keras_compat.check_keras_version()
    assert _keras_compat._WARNED


def test_the_private_names_are_where_they_were():
    model = small_mlp()
    model.compile(optimizer="adam", loss="mse")
    assert isinstance(_keras_compat.loss_tracker(model), keras.metrics.Mean)
    assert _keras_compat.output_tensors(model)
    functional = keras.Model(model.inputs, model.outputs)
    assert len(_keras_compat.output_tensors(functional)) == 1
    assert callable(getattr(keras.Model, "_symbolic_build", None))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        assert callable(getattr(keras.Model, "_maybe_symbolic_build", None))
        function = _keras_compat.without_retracing_warning(tf.function(lambda v: v + 1))
        assert function._omit_frequent_tracing_warning is True
        graph_tensors = []
        tf.function(lambda v: graph_tensors.append(_keras_compat.is_symbolic_tensor(v)) or v)(
            tf.constant(np.ones(2)))
        assert graph_tensors == [True] and not _keras_compat.is_symbolic_tensor(tf.ones(2))
