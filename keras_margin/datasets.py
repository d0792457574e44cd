"""MNIST, Fashion-MNIST and CIFAR-10 as the paper uses them, from local files or tfds.

Source order: an explicit `data_dir` alone (its missing files are an error, whatever else the
machine has); without one, local files in the folder named by the environment variable
KERAS_MARGIN_DATA, then in the keras.datasets cache (~/.keras/datasets), in their original
formats (IDX gz for the MNISTs, or keras.datasets' mnist.npz; the CIFAR-10 python batches),
Debian's /usr/share/datasets/fashion-mnist for Fashion-MNIST; then
tensorflow-datasets, but only where it can work at once (a copy already prepared in its data
folder, or its download server answering within a few seconds: no minutes of retries
offline); then, for MNIST, the sample of 10,000 real
digits embedded in the package (keras_margin/data/mnist-sample), with a one-line notice. Images
are float32, NHWC; the MNISTs are scaled to [0, 1] (or [0, 255/256] with `pixel_scale=256`).
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import socket
from collections.abc import Sequence
from typing import Any

import numpy as np

NAMES = ("mnist", "fashion_mnist", "cifar10")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
KERAS_MNIST = "mnist.npz"  # keras.datasets.mnist's file
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"
EMBEDDED_MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mnist-sample")
TFDS_SERVER = ("storage.googleapis.com", 443)

log = logging.getLogger("keras_margin.datasets")

Arrays = tuple[np.ndarray, np.ndarray]


class DatasetNotFoundError(FileNotFoundError):
    """No local files and no tensorflow-datasets copy of a data set."""


# -- file formats ------------------------------------------------------------------------------
def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) of unsigned bytes; checks magic number and length."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read it as a (gzipped) IDX file: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: wrong IDX magic number {data[:4]!r}; expected 0x0000 08 ndim "
                         "(unsigned bytes).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header.")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX header promises {expected} bytes for shape {shape}, the "
                         f"file holds {len(data) - header}; the file is truncated or corrupt.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_idx_pair(images_path: str, labels_path: str, pixel_scale: float = 255.0,
                  num_classes: int = 10) -> Arrays:
    """MNIST-style images (n, 28, 28, 1) float32 and int32 labels from two IDX files.

    Pixels are bytes / `pixel_scale`: 255 maps them onto [0, 1]; 256 onto [0, 255/256], as the
    paper's reference code (and the classic mnist.pkl.gz) does. Labels must be < `num_classes`.
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{images_path} / {labels_path}: expected images (n, h, w) and labels "
                         f"(n,); found {images.shape} and {labels.shape}.")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has "
                         f"{len(labels)} labels.")
    bad = labels >= num_classes
    if bad.any():
        raise ValueError(f"{labels_path}: label {int(labels[bad][0])} at index "
                         f"{int(np.flatnonzero(bad)[0])} is not a class in [0, {num_classes}); "
                         "the file is corrupt or not a labels file of this data set.")
    return (images[..., None].astype(np.float32) / np.float32(pixel_scale)), \
        labels.astype(np.int32)


def read_keras_npz(path: str, split: str, pixel_scale: float = 255.0,
                   num_classes: int = 10) -> Arrays:
    """One split of `keras.datasets.mnist`'s mnist.npz (x_train, y_train, x_test, y_test)."""
    prefix = "train" if split == "train" else "test"
    try:
        with np.load(path) as data:
            images, labels = data[f"x_{prefix}"], data[f"y_{prefix}"]
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not keras.datasets' mnist.npz ({err!r}).") from err
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels) or \
            (labels >= num_classes).any():
        raise ValueError(f"{path}: expected uint8 images (n, 28, 28) and n labels < "
                         f"{num_classes}; found {images.shape} {images.dtype} and "
                         f"{labels.shape}.")
    return (images[..., None].astype(np.float32) / np.float32(pixel_scale)), \
        labels.astype(np.int32)


def read_cifar_batches(paths: Sequence[str]) -> Arrays:
    """CIFAR-10 python batches as (n, 32, 32, 3) float32 in [0, 255] and int32 labels."""
    xs, ys = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], np.uint8)
            labels = np.asarray(batch[b"labels"], np.int32)
        except (OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError) as err:
            raise ValueError(f"{path}: not a CIFAR-10 python batch: {err!r}") from err
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise ValueError(f"{path}: expected data (n, 3072) and n labels; found "
                             f"{data.shape} and {labels.shape}.")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


# -- finding files -----------------------------------------------------------------------------
def keras_cache() -> str:
    """The folder where `keras.datasets` keeps what it downloads (~/.keras/datasets)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "datasets")


def _candidate_dirs(name: str, data_dir: str | None) -> list[str]:
    """The folders searched, in order: an explicit `data_dir` alone (it always wins: nothing
    else is searched), else KERAS_MARGIN_DATA, the keras.datasets cache, then Debian's
    Fashion-MNIST package."""
    if data_dir:
        roots = [data_dir]
    else:
        roots = [os.environ["KERAS_MARGIN_DATA"]] if os.environ.get("KERAS_MARGIN_DATA") else []
        roots.append(keras_cache())
    dirs = []
    for root in roots:
        dirs += [root, os.path.join(root, name), os.path.join(root, name.replace("_", "-"))]
    if name == "fashion_mnist" and not data_dir:
        dirs.append(DEBIAN_FASHION)
    return dirs


def _expected_files(name: str) -> str:
    if name == "cifar10":
        return f"{CIFAR_FOLDER}/{{{', '.join(CIFAR_FILES['train'] + CIFAR_FILES['test'])}}}"
    files = ", ".join(IDX_FILES["train"] + IDX_FILES["test"])
    return files + (f" (or keras.datasets' {KERAS_MNIST})" if name == "mnist" else "")


def load_split(name: str, split: str, data_dir: str | None = None,
               pixel_scale: float = 255.0) -> Arrays:
    """One split ("train" or "test") of a data set from local files.

    Raises `DatasetNotFoundError` when no searched folder holds the split's files, naming the
    file that is missing where a folder holds only one of the pair. `pixel_scale` divides the
    MNISTs' bytes (see `read_idx_pair`); CIFAR-10 stays in [0, 255].
    """
    _check_name(name)
    from keras_margin._validation import check_positive

    check_positive("pixel_scale", pixel_scale)
    if split not in ("train", "test"):
        raise ValueError(f"Invalid value for argument split: {split!r}. Expected one of "
                         "{'train', 'test'}.")
    for folder in _candidate_dirs(name, data_dir):
        if name == "cifar10":
            for base in (os.path.join(folder, CIFAR_FOLDER), folder):
                paths = [os.path.join(base, f) for f in CIFAR_FILES[split]]
                if all(os.path.exists(p) for p in paths):
                    return read_cifar_batches(paths)
        elif name == "mnist" and os.path.exists(os.path.join(folder, KERAS_MNIST)):
            return read_keras_npz(os.path.join(folder, KERAS_MNIST), split, pixel_scale)
        else:
            images, labels = (os.path.join(folder, f) for f in IDX_FILES[split])
            for img, lab in ((images, labels), (images[:-3], labels[:-3])):  # gzipped or not
                if os.path.exists(img) and os.path.exists(lab):
                    return read_idx_pair(img, lab, pixel_scale)
                if os.path.exists(img) != os.path.exists(lab):
                    present, missing = (img, lab) if os.path.exists(img) else (lab, img)
                    raise DatasetNotFoundError(
                        f"{present} is there but {missing} is missing: put both files of "
                        f"the {split} split of {name!r} in {folder}.")
    raise DatasetNotFoundError(
        f"No local {split} files of {name!r} in {_candidate_dirs(name, data_dir) or 'any folder'}"
        f". Put {_expected_files(name)} in a folder and pass data_dir= (--data-dir on the "
        "command line) or set KERAS_MARGIN_DATA, or install tensorflow-datasets "
        "(pip install 'keras-margin[data]') with network access.")


def _load_tfds(name: str, split: str, pixel_scale: float = 255.0) -> Arrays:
    """One split from tensorflow-datasets, only where that works at once."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetNotFoundError("tensorflow-datasets is not installed "
                                   "(pip install 'keras-margin[data]').") from err
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # its "Variant folder ... has no dataset_info.json": a probe
    try:
        prepared = tfds.builder(name).is_prepared()
    except Exception:  # an unusual tfds set-up: let load() below decide
        prepared = True
    finally:
        absl.setLevel(level)
    if not prepared and not _server_answers(*TFDS_SERVER):
        raise DatasetNotFoundError(
            f"tensorflow-datasets has no prepared copy of {name!r} and its download server "
            f"{TFDS_SERVER[0]} does not answer (offline?).")
    try:
        x, y = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, as_supervised=True))
    except Exception as err:
        raise DatasetNotFoundError(f"tensorflow-datasets could not provide {name!r}: {err}") \
            from err
    x = x.astype(np.float32)
    if name != "cifar10":
        x /= np.float32(pixel_scale)
    return x, y.astype(np.int32)


def _server_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_embedded(pixel_scale: float) -> tuple[Arrays, Arrays]:
    """The embedded MNIST sample: 8,000 training and 2,000 test digits (see its README)."""
    pair = {split: [os.path.join(EMBEDDED_MNIST, f) for f in IDX_FILES[split]]
            for split in ("train", "test")}
    return (read_idx_pair(*pair["train"], pixel_scale),
            read_idx_pair(*pair["test"], pixel_scale))


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"Invalid value for argument name: {name!r}. Expected one of "
                         f"{set(NAMES)}.")


SPLITS = ("random", "reference")


def split_validation(x: np.ndarray, y: np.ndarray, validation: int, seed: int = 0,
                     method: str = "random") -> tuple[Arrays, Arrays]:
    """Splits (x, y) into train and `validation` held-out samples, reproducibly from `seed`.

    "random": a `np.random.default_rng(seed)` permutation, the last `validation` held out.
    "reference": the paper's reference code (mnist/data.py): `np.random.RandomState(seed)
    .permutation(n)`, the first n - `validation` to train, the rest to validate; with seed 1
    and MNIST's 60,000 training images it is the paper's 50,000 / 10,000 split.
    """
    if method not in SPLITS:
        raise ValueError(f"Invalid value for argument split: {method!r}. Expected one of "
                         f"{set(SPLITS)}.")
    if not 0 <= validation < len(x):
        raise ValueError(f"validation={validation} must be in [0, {len(x)}).")
    if method == "reference":
        order = np.random.RandomState(seed).permutation(len(x))
    else:
        order = np.random.default_rng(seed).permutation(len(x))
    train, val = order[: len(x) - validation], order[len(x) - validation:]
    return (x[train], y[train]), (x[val], y[val])


def load(name: str, validation: int = 10000, seed: int | None = None,
         data_dir: str | None = None, split: str = "random",
         pixel_scale: float = 255.0, allow_sample: bool = True) -> tuple[Arrays, Arrays, Arrays]:
    """Train, validation and test arrays of a data set (the paper: 50k/10k/10k on MNIST).

    Args:
        name: "mnist", "fashion_mnist" or "cifar10".
        validation: samples of the training split held out for validation.
        seed: seed of the validation split (default 0, or 1 with `split="reference"`, the
            reference code's).
        data_dir: folder with the original files; see the module docstring.
        split: "random" or "reference" (the paper's code); see `split_validation`.
        pixel_scale: the MNISTs' bytes are divided by it: 255 gives [0, 1], 256 the
            reference code's [0, 255/256].
        allow_sample: for MNIST with no `data_dir` given, fall back to the embedded sample
            (never when `data_dir` is given: then its missing files are an error).

    Returns:
        ((x_train, y_train), (x_val, y_val), (x_test, y_test)).

    Example:
        >>> (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = load("mnist", split="reference",
        ...                                                   data_dir="~/data/mnist")
    """
    _check_name(name)
    _check_load_arguments(validation, seed, split, pixel_scale, data_dir)
    if seed is None:
        seed = 1 if split == "reference" else 0
    train, test, embedded = _train_and_test(name, data_dir, pixel_scale, allow_sample)
    if embedded:
        validation = min(validation, len(train[0]) // 8)
        log.warning(
            "keras-margin: no MNIST files found and tensorflow-datasets cannot provide "
            "them; using the embedded sample of real MNIST digits (%d train, %d of them "
            "for validation, %d test). Pass data_dir= (--data-dir) for the full set.",
            len(train[0]), validation, len(test[0]))
    train, val = split_validation(*train, validation=validation, seed=seed, method=split)
    return train, val, test


def _train_and_test(name: str, data_dir: str | None, pixel_scale: float,
                    allow_sample: bool) -> tuple[Arrays, Arrays, bool]:
    """The training and test splits from the first source that has them (the module
    docstring's order), and whether they are the embedded sample."""
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    try:
        return (load_split(name, "train", data_dir, pixel_scale),
                load_split(name, "test", data_dir, pixel_scale), False)
    except DatasetNotFoundError as local_error:
        if data_dir is not None:  # an explicit folder wins: its missing files are the error
            raise
        try:
            return _load_tfds(name, "train", pixel_scale), _load_tfds(name, "test", pixel_scale), \
                False
        except DatasetNotFoundError as tfds_error:
            if name != "mnist" or not allow_sample:
                raise DatasetNotFoundError(f"{local_error}\n{tfds_error}") from None
            return (*_load_embedded(pixel_scale), True)


def load_data(name: str = "mnist", data_dir: str | None = None,
              allow_sample: bool = True) -> tuple[Arrays, Arrays]:
    """A data set in `keras.datasets`' form, a drop-in for `keras.datasets.mnist.load_data()`.

    Same sources as `load` (no download), but the arrays `keras.datasets` gives: two splits in
    the files' order, uint8 pixels in [0, 255] with no channel axis for the MNISTs ((n, 28, 28);
    CIFAR-10 (n, 32, 32, 3)), uint8 labels ((n,); CIFAR-10 (n, 1)). Scale them yourself
    (`x / 255`, a channel axis for convolutions), as with Keras. `load` instead gives three
    splits, float32 in [0, 1] and a channel axis, ready for the paper's protocol.

    Example:
        >>> (x_train, y_train), (x_test, y_test) = load_data("mnist", data_dir="~/data/mnist")
        >>> x_train = x_train[..., None].astype("float32") / 255   # as a Keras example does
    """
    _check_name(name)
    _check_load_arguments(0, None, "random", 1.0, data_dir)
    train, test, embedded = _train_and_test(name, data_dir, 1.0, allow_sample)
    if embedded:
        log.warning("keras-margin: no MNIST files found and tensorflow-datasets cannot provide "
                    "them; using the embedded sample of real MNIST digits (%d train, %d test). "
                    "Pass data_dir= for the full set.", len(train[0]), len(test[0]))

    def keras_form(x: np.ndarray, y: np.ndarray) -> Arrays:
        x = np.rint(x).clip(0, 255).astype(np.uint8)
        y = np.asarray(y).astype(np.uint8)
        return (x, y.reshape(-1, 1)) if name == "cifar10" else (x.reshape(x.shape[:3]), y)

    return keras_form(*train), keras_form(*test)


def _check_load_arguments(validation: Any, seed: Any, split: str, pixel_scale: Any,
                          data_dir: Any) -> None:
    from keras_margin._validation import check_choice, check_integer, check_positive

    check_integer("validation", validation, minimum=0)
    if seed is not None:
        check_integer("seed", seed, minimum=0)
    check_choice("split", split, SPLITS)
    check_positive("pixel_scale", pixel_scale)
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"Invalid value for argument data_dir: {data_dir!r}. Expected a "
                         "folder path or None.")
    if data_dir is not None and not os.path.isdir(os.path.expanduser(str(data_dir))):
        raise DatasetNotFoundError(f"data_dir={str(data_dir)!r} is not a folder.")


# -- preprocessing (CIFAR-10) ------------------------------------------------------------------
class GlobalContrastNormalization:
    """Per-image GCN: subtract the image mean, divide by its l2 norm / scale (pylearn2's recipe).

    Stateless: `scale` and `min_divisor` are its whole configuration.
    """

    def __init__(self, scale: float = 55.0, min_divisor: float = 1e-8) -> None:
        from keras_margin._validation import check_positive

        self.scale = check_positive("scale", scale)
        self.min_divisor = check_positive("min_divisor", min_divisor)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float64)
        flat = flat - flat.mean(axis=1, keepdims=True)
        norms = np.sqrt((flat ** 2).sum(axis=1, keepdims=True)) / self.scale
        norms[norms < self.min_divisor] = 1.0
        return (flat / norms).reshape(x.shape).astype(np.float32)

    def get_config(self) -> dict[str, Any]:
        return {"scale": self.scale, "min_divisor": self.min_divisor}


class ZCAWhitening:
    """ZCA whitening fitted on training data: (x - mean) U diag(1/sqrt(s + eps)) U^T.

    Fit it on the training split only; `save`/`load` keep its statistics (an .npz file).
    """

    def __init__(self, eps: float = 1e-2) -> None:
        from keras_margin._validation import check_positive

        self.eps = check_positive("eps", eps)
        self.mean: np.ndarray | None = None
        self.matrix: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> ZCAWhitening:
        flat = x.reshape(len(x), -1).astype(np.float64)
        self.mean = flat.mean(axis=0)
        centred = flat - self.mean
        s, u = np.linalg.eigh(centred.T @ centred / len(flat))
        self.matrix = (u * (1.0 / np.sqrt(np.maximum(s, 0) + self.eps))) @ u.T
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.mean is None or self.matrix is None:
            raise ValueError("ZCAWhitening must be fitted (fit(x_train)) or loaded before use.")
        flat = x.reshape(len(x), -1).astype(np.float64)
        return ((flat - self.mean) @ self.matrix).reshape(x.shape).astype(np.float32)

    def save(self, path: str) -> None:
        np.savez(path, eps=self.eps, mean=self.mean, matrix=self.matrix)

    @classmethod
    def load(cls, path: str) -> ZCAWhitening:
        stats = np.load(path)
        zca = cls(float(stats["eps"]))
        zca.mean, zca.matrix = stats["mean"], stats["matrix"]
        return zca


def augment(image: Any, label: Any, max_shift: int = 2) -> tuple[Any, Any]:
    """The paper's CIFAR-10 augmentation for tf.data: random horizontal flip and translation."""
    import tensorflow as tf

    height, width = image.shape[0], image.shape[1]
    image = tf.image.random_flip_left_right(image)
    padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]],
                    mode="REFLECT")
    return tf.image.random_crop(padded, [height, width, image.shape[2]]), label


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = 100, shuffle: bool = True,
                 augmentation: bool = False, seed: int = 0) -> Any:
    """A prefetched `tf.data.Dataset` of (x, y) batches, optionally shuffled and augmented."""
    import tensorflow as tf

    from keras_margin._validation import check_batch, check_finite_array, check_integer

    x, y = np.asarray(x), np.asarray(y)
    check_batch(x, y)
    check_finite_array(x)
    check_integer("batch_size", batch_size)
    check_integer("seed", seed, minimum=0)

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if augmentation:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def split_test_set(name: str, data_dir: str | None = None, train: int = 8000,
                   seed: int = 0, pixel_scale: float = 255.0) -> tuple[Arrays, Arrays]:
    """The test split alone, cut into `train` samples to train on and the rest to evaluate.

    For machines without the training files (e.g. only MNIST's t10k files at hand): a quick,
    clearly smaller stand-in for the paper's 50k/10k/10k protocol. The cut is seeded.
    """
    x, y = load_split(name, "test", data_dir, pixel_scale)
    from keras_margin._validation import check_integer

    check_integer("train", train)
    if not 0 < train < len(x):
        raise ValueError(f"train={train} must be in (0, {len(x)}) for {name!r}'s test split.")
    held_out, kept = split_validation(x, y, validation=len(x) - train, seed=seed)
    return held_out, kept

