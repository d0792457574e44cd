"""Test set-up: the Keras backend (KERAS_BACKEND, TensorFlow by default), two logical CPU
devices for the tf.distribute tests, seeds, and small models and data shared by the tests."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow",
                                     reason="tf.data / tf.distribute / TensorBoard: TensorFlow")

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices, so MirroredStrategy can be tested on one CPU. Must run before
    # TF initialises its devices, hence at import time of the conftest.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(),
                   tf.config.LogicalDeviceConfiguration()])


def to_numpy(x):
    """A backend tensor (or array) as numpy."""
    return keras.ops.convert_to_numpy(x)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over two logical CPUs for the whole session: strategies created
    side by side in one process reuse collective instance keys and abort each other."""
    if BACKEND != "tensorflow":
        pytest.skip("tf.distribute needs the TensorFlow backend")
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2
    return tf.distribute.MirroredStrategy(devices)


@pytest.fixture
def mnist_t10k_dir():
    path = os.path.join(SHARED_DATA, "mnist-t10k")
    if not os.path.exists(os.path.join(path, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("../shared/data/mnist-t10k is not present")
    return path


def write_idx(path, array: np.ndarray) -> None:
    """Writes an unsigned-byte array as a gzipped IDX file (MNIST's format)."""
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def linear_model(w: np.ndarray, b: np.ndarray, dtype: str = "float32") -> keras.Model:
    """f(x) = W x + b as a Keras model, W given as (k, d)."""
    k, d = w.shape
    model = keras.Sequential([keras.Input((d,), dtype=dtype),
                              keras.layers.Dense(k, dtype=dtype)])
    model.layers[-1].set_weights([w.T.astype(dtype), b.astype(dtype)])
    return model


def small_mlp(d: int = 6, k: int = 4, hidden: int = 8, activation: str = "tanh",
              dtype: str = "float32") -> keras.Model:
    return keras.Sequential([keras.Input((d,), dtype=dtype),
                             keras.layers.Dense(hidden, activation=activation, dtype=dtype),
                             keras.layers.Dense(k, dtype=dtype)])
