"""Loaders on files the tests write (and on ../shared MNIST when present); models; ZCA."""

import gzip
import pickle

import numpy as np
import pytest
from conftest import write_idx

from keras_margin import architectures, datasets


@pytest.fixture
def fake_mnist(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return tmp_path


def test_mnist_from_local_idx_files(fake_mnist):
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = datasets.load("mnist", validation=10,
                                                               data_dir=str(fake_mnist))
    assert x_tr.shape == (50, 28, 28, 1) and x_val.shape == (10, 28, 28, 1)
    assert x_te.shape == (20, 28, 28, 1) and x_tr.dtype == np.float32
    assert x_tr.min() >= 0.0 and x_tr.max() <= 1.0 and y_tr.dtype == np.int32
    again = datasets.load("mnist", validation=10, data_dir=str(fake_mnist))
    np.testing.assert_array_equal(again[1][0], x_val)  # the split is reproducible from its seed
    other = datasets.load("mnist", validation=10, seed=1, data_dir=str(fake_mnist))
    assert not np.array_equal(other[1][1], y_val) or not np.array_equal(other[1][0], x_val)


def test_environment_variable_is_a_source(fake_mnist, monkeypatch):
    monkeypatch.setenv("KERAS_MARGIN_DATA", str(fake_mnist))
    assert datasets.load_split("mnist", "test")[0].shape == (20, 28, 28, 1)


def test_corrupt_files_name_the_file(fake_mnist):
    bad = fake_mnist / "t10k-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x09\x03" + b"\x00" * 20)
    with pytest.raises(ValueError, match="t10k-images.*magic"):
        datasets.load_split("mnist", "test", str(fake_mnist))
    write_idx(bad, np.zeros((20, 28, 28)))
    with gzip.open(bad, "rb") as f:
        data = f.read()
    with gzip.open(bad, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(ValueError, match="t10k-images.*truncated"):
        datasets.load_split("mnist", "test", str(fake_mnist))
    write_idx(bad, np.zeros((19, 28, 28)))
    with pytest.raises(ValueError, match="19 images.*20 labels"):
        datasets.load_split("mnist", "test", str(fake_mnist))


def test_missing_files_and_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="name"):
        datasets.load("imagenet")
    with pytest.raises(datasets.DatasetNotFoundError, match="train-images-idx3-ubyte.gz"):
        datasets.load_split("mnist", "train", str(tmp_path))


def test_cifar10_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in datasets.CIFAR_FILES["train"] + datasets.CIFAR_FILES["test"]:
        batch = {b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, 8))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    (x_tr, _), (x_val, _), (x_te, y_te) = datasets.load("cifar10", validation=8,
                                                        data_dir=str(tmp_path))
    assert x_tr.shape == (32, 32, 32, 3) and x_val.shape == (8, 32, 32, 3)
    assert x_te.shape == (8, 32, 32, 3) and y_te.shape == (8,)
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    np.testing.assert_array_equal(x_te[0, :, :, 0].ravel(), raw[0, :1024])  # red plane
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3"):
        datasets.load("cifar10", data_dir=str(tmp_path))


def test_real_mnist_test_set(mnist_t10k_dir):
    x, y = datasets.load_split("mnist", "test", mnist_t10k_dir)
    assert x.shape == (10000, 28, 28, 1) and y.shape == (10000,)
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                   974, 1009])


def test_zca_whitening_gives_identity_covariance(tmp_path):
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(12, 12))
    x = (rng.normal(size=(5000, 12)) @ mixing + 3.0).reshape(5000, 2, 2, 3)
    zca = datasets.ZCAWhitening(eps=1e-8).fit(x)
    white = zca(x).reshape(5000, -1)
    np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(12), atol=1e-3)
    zca.save(str(tmp_path / "zca.npz"))
    np.testing.assert_allclose(datasets.ZCAWhitening.load(str(tmp_path / "zca.npz"))(x[:5]),
                               zca(x[:5]))


def test_gcn_normalises_each_image():
    x = np.random.default_rng(0).normal(size=(4, 3, 3, 2)) * 7 + 2
    out = datasets.GlobalContrastNormalization(scale=55.0)(x).reshape(4, -1)
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 55.0, rtol=1e-5)


def test_augmented_dataset_keeps_shapes():
    x = np.random.default_rng(0).normal(size=(10, 32, 32, 3)).astype("float32")
    batch = next(iter(datasets.make_dataset(x, np.arange(10), batch_size=4, augmentation=True)))
    assert batch[0].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("build,input_shape,params", [
    (lambda: architectures.mlp(), (28, 28, 1), 2_797_010),
    # conv 5*5*32+32, conv 5*5*32*64+64, dense 4*4*64*512+512, dense 512*10+10
    (lambda: architectures.lenet5(dropout=0.5), (28, 28, 1), 582_026),
    (lambda: architectures.nin(), (32, 32, 3), None),
])
def test_architectures_output_logits(build, input_shape, params):
    model = build()
    out = model(np.zeros((2,) + input_shape, "float32"))
    assert out.shape == (2, 10)
    if params is not None:
        assert model.count_params() == params


def test_fashion_mnist_is_found_in_debians_folder():
    import os

    if not os.path.exists(os.path.join(datasets.DEBIAN_FASHION, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    (x_tr, y_tr), (x_val, _), (x_te, _) = datasets.load("fashion_mnist")
    assert x_tr.shape == (50000, 28, 28, 1) and x_val.shape == (10000, 28, 28, 1)
    assert x_te.shape == (10000, 28, 28, 1) and set(np.unique(y_tr)) == set(range(10))


@pytest.mark.parametrize("name", datasets.NAMES)
def test_an_explicit_folder_wins_for_every_data_set(name, tmp_path, monkeypatch):
    """Whatever the machine has (Debian's Fashion-MNIST, KERAS_MARGIN_DATA, tfds), a folder
    given as data_dir is the only source: empty, it is an error; full, its files are read."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("KERAS_MARGIN_DATA", str(elsewhere))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(datasets.DatasetNotFoundError, match=str(empty)):
        datasets.load_split(name, "train", str(empty))
    with pytest.raises(datasets.DatasetNotFoundError):
        datasets.load(name, data_dir=str(empty))
    given = tmp_path / "given"
    given.mkdir()
    if name == "cifar10":
        folder = given / datasets.CIFAR_FOLDER
        folder.mkdir()
        for batch in datasets.CIFAR_FILES["test"]:
            with open(folder / batch, "wb") as f:
                pickle.dump({b"data": np.full((3, 3072), 7, np.uint8), b"labels": [1, 2, 3]}, f)
        x, y = datasets.load_split(name, "test", str(given))
        assert x.shape == (3, 32, 32, 3) and (x == 7).all() and list(y) == [1, 2, 3]
    else:
        write_idx(given / "t10k-images-idx3-ubyte.gz", np.full((3, 28, 28), 51))
        write_idx(given / "t10k-labels-idx1-ubyte.gz", np.array([4, 5, 6]))
        x, y = datasets.load_split(name, "test", str(given))
        assert x.shape == (3, 28, 28, 1) and np.allclose(x, 0.2) and list(y) == [4, 5, 6]


@pytest.mark.parametrize("kwargs,match", [
    ({"validation": -1}, "validation"), ({"validation": 1.5}, "validation"),
    ({"split": "rand"}, "split"), ({"pixel_scale": 0}, "pixel_scale"),
    ({"pixel_scale": float("nan")}, "pixel_scale"), ({"seed": -2}, "seed"),
    ({"data_dir": 3}, "data_dir"),
])
def test_load_refuses_bad_arguments(kwargs, match, fake_mnist):
    with pytest.raises(ValueError, match=match):
        datasets.load("mnist", **{"data_dir": str(fake_mnist), **kwargs})


def test_keras_datasets_mnist_npz_and_cache_are_sources(tmp_path, monkeypatch):
    """keras.datasets.mnist.load_data() leaves mnist.npz in ~/.keras/datasets: found there
    (KERAS_HOME here) and in any data_dir."""
    rng = np.random.default_rng(2)
    cache = tmp_path / "keras-home" / "datasets"
    cache.mkdir(parents=True)
    arrays = {"x_train": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 30).astype(np.uint8),
              "x_test": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 12).astype(np.uint8)}
    np.savez(cache / "mnist.npz", **arrays)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.delenv("KERAS_MARGIN_DATA", raising=False)
    x, y = datasets.load_split("mnist", "test")
    np.testing.assert_array_equal(y, arrays["y_test"])
    np.testing.assert_allclose(x[..., 0], arrays["x_test"] / 255.0, rtol=1e-6)
    (x_tr, _), (x_val, _), _ = datasets.load("mnist", validation=5, data_dir=str(cache))
    assert len(x_tr) == 25 and len(x_val) == 5


def test_load_data_is_keras_datasets_form(fake_mnist, tmp_path):
    # keras.datasets.mnist.load_data(): two splits in file order, uint8 (n, 28, 28), uint8
    # labels; the bytes are the files' own (read here with gzip, independently).
    (x_tr, y_tr), (x_te, y_te) = datasets.load_data("mnist", data_dir=str(fake_mnist))
    with gzip.open(fake_mnist / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read()[16:], np.uint8).reshape(60, 28, 28)
    with gzip.open(fake_mnist / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], np.uint8)
    assert x_tr.dtype == np.uint8 and y_tr.dtype == np.uint8 and x_te.shape == (20, 28, 28)
    np.testing.assert_array_equal(x_tr, raw)
    np.testing.assert_array_equal(y_te, labels)
    folder = tmp_path / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in datasets.CIFAR_FILES["train"] + datasets.CIFAR_FILES["test"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 4))}, f)
    (x_tr, y_tr), (x_te, y_te) = datasets.load_data("cifar10", data_dir=str(tmp_path / "c"))
    assert x_tr.shape == (20, 32, 32, 3) and y_tr.shape == (20, 1) and x_te.dtype == np.uint8
    with pytest.raises(ValueError, match="name"):
        datasets.load_data("mnsit")


def test_images_scaled_twice_are_warned_about():
    from keras_margin import MarginModel, attacks
    from keras_margin._validation import warn_if_unscaled

    (x, y), _, _ = datasets.load("mnist", validation=100)
    twice = x[:64] / 255  # a script that divides load()'s [0, 1] images by 255 again
    with pytest.warns(UserWarning, match="divided by 255 twice"):
        assert warn_if_unscaled(twice, "fit")
    assert not warn_if_unscaled(x[:64], "fit") and not warn_if_unscaled(np.zeros((2, 3)), "f")
    model = MarginModel(architectures.lenet5(), C=0.1)
    model.compile(optimizer="adam")
    with pytest.warns(UserWarning, match="MarginModel.fit: .*divided by 255 twice"):
        model.fit(twice, y[:64], epochs=1, batch_size=64, verbose=0)
    with pytest.warns(UserWarning, match="divided by 255 twice"):
        attacks.fgsm(model.base, twice, y[:64], eps=0.2)
