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


@pytest.fixture
def float64():
    """Skips the test where the backend computes float64 as float32: JAX, unless started with
    JAX_ENABLE_X64=1 (enabling it later leaves Keras's JAX layers in float32), and PyTorch
    (Keras 3.15's `result_type(torch.float64, torch.float64)` is float32, so its matmuls
    round to float32)."""
    if BACKEND == "torch":
        pytest.skip("Keras's PyTorch backend computes float64 matmuls in float32")
    if BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("float64 on JAX needs JAX_ENABLE_X64=1 at start")


def refusal(model):
    """What a bad batch inside a data pipeline must cause: an error where the step can raise
    (TensorFlow graphs without XLA, PyTorch), else a warning that it was skipped (XLA, JAX)."""
    if BACKEND == "torch":
        return pytest.raises(ValueError, match="refusing to train on it")
    if BACKEND == "tensorflow" and not model.jit_compile:
        import tensorflow as tf

        return pytest.raises(tf.errors.InvalidArgumentError, match="refusing to train on it")
    return pytest.warns(UserWarning, match="left the weights untouched")


def to_numpy(x):
    """A backend tensor (or array) as numpy (detached from any autograd graph)."""
    return keras.ops.convert_to_numpy(keras.ops.stop_gradient(x))

def _shared_data_candidates():
    """Where the project's offline data may be, from any clone: KERAS_MARGIN_DATA, then
    ../shared/data beside the repository root, beside the clone's origin (a clone of a local
    checkout), and beside the main working tree of a git worktree."""
    import subprocess

    if os.environ.get("KERAS_MARGIN_DATA"):
        yield os.environ["KERAS_MARGIN_DATA"]
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        try:
            out = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                                 timeout=10, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    roots = [git("rev-parse", "--show-toplevel") or os.path.dirname(here)]
    origin = git("remote", "get-url", "origin")
    if origin and os.path.isdir(origin):
        roots.append(origin)
    common = git("rev-parse", "--path-format=absolute", "--git-common-dir")
    if common:
        roots.append(os.path.dirname(common))
    for root in roots:
        yield os.path.join(os.path.abspath(root), "..", "shared", "data")


def find_mnist(kind: str):
    """A folder of real MNIST IDX files ("mnist": train and test, "mnist-t10k": the test set),
    or None. The test set alone is also found in a folder of the full set."""
    wanted = "train-images-idx3-ubyte.gz" if kind == "mnist" else "t10k-images-idx3-ubyte.gz"
    for base in _shared_data_candidates():
        for folder in (os.path.join(base, kind), os.path.join(base, "mnist"), base):
            if os.path.exists(os.path.join(folder, wanted)):
                return os.path.normpath(folder)
    return None


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


def _mnist_or_skip(name: str, what: str) -> str:
    path = find_mnist(name)
    if path is None:
        pytest.skip(f"no real MNIST {what} files here: set KERAS_MARGIN_DATA to a folder with "
                    f"the IDX .gz files (see the README's Data section)")
    return path


@pytest.fixture
def mnist_t10k_dir():
    return _mnist_or_skip("mnist-t10k", "test")


@pytest.fixture
def mnist_dir():
    return _mnist_or_skip("mnist", "training")


@pytest.fixture
def tiny_mnist(tmp_path):
    """A learnable fake MNIST: the label is the brightest of ten image bands."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    for split, n in (("train", 240), ("t10k", 60)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(y):
            x[i, label * 2: label * 2 + 3] += 150
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", y)
    return str(folder)


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


def trained_mnist_mlp(hidden: tuple, epochs: int) -> tuple:
    """A ReLU MLP (28 x 28 x 1 -> hidden -> 10 logits), seed 0, trained `epochs` epochs on the
    first 3,000 digits of the embedded MNIST sample; (model, test images, test labels)."""
    from keras_margin import datasets

    (x, y), _, (x_test, y_test) = datasets.load("mnist", validation=0)
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten()] +
                           [keras.layers.Dense(width, activation="relu") for width in hidden] +
                           [keras.layers.Dense(10)])
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x[:3000], y[:3000], epochs=epochs, batch_size=100, verbose=0)
    return net, x_test, y_test


def small_mlp(d: int = 6, k: int = 4, hidden: int = 8, activation: str = "tanh",
              dtype: str = "float32") -> keras.Model:
    return keras.Sequential([keras.Input((d,), dtype=dtype),
                             keras.layers.Dense(hidden, activation=activation, dtype=dtype),
                             keras.layers.Dense(k, dtype=dtype)])


class Batches(keras.utils.PyDataset):
    """A pipeline the array checks of fit cannot see into, on any backend."""

    def __init__(self, x, y, size):
        super().__init__()
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, i):
        return self.x[i * self.size:(i + 1) * self.size], self.y[i * self.size:(i + 1) * self.size]
