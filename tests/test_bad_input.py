"""No mistake passes silently: loss names, probabilities, labels, arguments, data sources."""

import hashlib
import logging
import os

import keras
import numpy as np
import pytest
from conftest import BACKEND, small_mlp, to_numpy

from keras_margin import (
    AdversarialTrainingModel,
    EvaluationPlan,
    MarginModel,
    VATModel,
    attacks,
    datasets,
    losses,
)
from keras_margin.callbacks import RobustnessCallback


def _data(n=64, d=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, k, n)


def test_keras_loss_names_are_applied_on_logits():
    """loss="sparse_categorical_crossentropy" used to read the logits as probabilities."""
    model = MarginModel(small_mlp(), loss="sparse_categorical_crossentropy")
    logits = np.array([[2.0, -1.0, 0.5, 0.0]], "float32")
    expected = -np.log(np.exp(2.0) / np.exp(logits).sum())
    np.testing.assert_allclose(to_numpy(model.data_loss(np.array([0]), logits)), [expected],
                               rtol=1e-5)


@pytest.mark.parametrize("loss,match", [
    ("categorical_crossentropy", "one-hot labels"),
    ("mse", "real-valued targets"),
    (keras.losses.SparseCategoricalCrossentropy(), "from_logits=False"),
    ("binary_crossentropy", None),  # fine for a one-logit model, refused for k = 4 below
])
def test_losses_that_would_misread_logits_are_refused(loss, match):
    if match is None:
        model = MarginModel(small_mlp(), loss=loss)
        model.compile(optimizer="adam")
        with pytest.raises(ValueError, match="one logit"):
            model.fit(*_data(), epochs=1, verbose=0)
        return
    with pytest.raises(ValueError, match=match):
        MarginModel(small_mlp(), loss=loss)


class _Softmaxed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(4)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        return keras.ops.softmax(self.dense(x))


def test_probabilities_computed_by_ops_are_caught_at_the_first_fit():
    inputs = keras.Input((6,))
    functional = keras.Model(inputs, keras.ops.softmax(keras.layers.Dense(4)(inputs)))
    for base in (functional, _Softmaxed()):
        model = MarginModel(base, C=0.1)
        model.compile(optimizer="adam")
        with pytest.raises(ValueError, match="probabilities"):
            model.fit(*_data(), epochs=1, verbose=0)


def test_multi_input_bases_are_refused_clearly():
    a, b = keras.Input((3,)), keras.Input((3,))
    base = keras.Model([a, b], keras.layers.Dense(4)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(ValueError, match="2 inputs.*Concatenate the inputs"):
        MarginModel(base)


def test_channels_first_images_train():
    """(batch, channels, height, width) inputs: nothing in keras-margin assumes a layout.
    TensorFlow's CPU kernels have no NCHW convolution, so there the model transposes first."""
    if BACKEND == "tensorflow":
        convolve = [keras.layers.Permute((2, 3, 1)), keras.layers.Conv2D(4, 3, activation="relu")]
    else:
        convolve = [keras.layers.Conv2D(4, 3, data_format="channels_first", activation="relu")]
    base = keras.Sequential([keras.Input((1, 8, 8)), *convolve, keras.layers.Flatten(),
                             keras.layers.Dense(3)])
    x = np.random.default_rng(0).uniform(size=(32, 1, 8, 8)).astype("float32")
    model = MarginModel(base, C=0.1)
    model.compile(optimizer="adam")
    history = model.fit(x, np.arange(32) % 3, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["margin_sensitivity"][0])


@pytest.mark.parametrize("make,match", [
    (lambda: MarginModel(small_mlp(), C=1e30), "C"),
    (lambda: VATModel(small_mlp(), power_iterations=1.5), "power_iterations"),
])
def test_arguments_that_were_truncated_or_overflowed_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_string_labels_get_a_clear_error():
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam")
    x, _ = _data(n=4)
    with pytest.raises(ValueError, match="integer class indices"):
        model.fit(x, np.array(["cat", "dog", "cat", "dog"]), verbose=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"nrom": "l2"}, "Unknown keyword.*nrom"),
    ({"max_samples": 0}, "max_samples"),
    ({"max_samples": -5}, "max_samples"),
    ({"every": 1.5}, "every"),
    ({"attacks": ["fmn_l7"]}, "attacks"),
    ({"linf_eps": [0.1, -0.2]}, "linf_eps"),
])
def test_callback_mistakes_fail_at_construction(kwargs, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        RobustnessCallback(x, y, **kwargs)


@pytest.mark.parametrize("labels,base,match", [
    (np.full(64, 7), small_mlp(), r"\[0, 4\)"),
    (np.zeros(64, int), keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)]),
     "k >= 2 logits"),
])
def test_callback_mistakes_fail_before_the_first_epoch_trains(labels, base, match):
    x, y = _data()
    model = MarginModel(base, C=0.1)
    model.compile(optimizer="adam")
    model.build((None, 6))
    before = [to_numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError, match=match):
        model.fit(x, y % base.output_shape[-1], epochs=1, verbose=0,
                  callbacks=[RobustnessCallback(x, labels)])
    for a, w in zip(before, model.weights):
        np.testing.assert_array_equal(a, to_numpy(w))


def test_embedded_sample_when_nothing_else_can_provide_mnist(tmp_path, monkeypatch, caplog):
    def no_tfds(*args, **kwargs):
        raise datasets.DatasetNotFoundError("no tfds here")

    monkeypatch.setattr(datasets, "_load_tfds", no_tfds)
    monkeypatch.delenv("KERAS_MARGIN_DATA", raising=False)
    with caplog.at_level(logging.WARNING, logger="keras_margin.datasets"):
        (x, y), (x_val, y_val), (x_te, y_te) = datasets.load("mnist")
    assert (len(x), len(x_val), len(x_te)) == (7000, 1000, 2000)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert sorted(np.unique(y_te)) == list(range(10))
    notices = [r.getMessage() for r in caplog.records if "embedded sample" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0] and "--data-dir" in notices[0]
    # A folder the user named is a promise: its missing files stay an error, never the sample.
    with pytest.raises(datasets.DatasetNotFoundError, match=str(tmp_path)):
        datasets.load("mnist", data_dir=str(tmp_path))
    with pytest.raises(datasets.DatasetNotFoundError):
        datasets.load("mnist", allow_sample=False)


def test_embedded_sample_matches_its_readme_and_size_budget():
    folder = datasets.EMBEDDED_MNIST
    with open(os.path.join(folder, "README.md")) as f:
        readme = f.read()
    files = [f for f in os.listdir(folder) if f.endswith(".gz")]
    assert len(files) == 4
    assert sum(os.path.getsize(os.path.join(folder, f)) for f in files) < 2_000_000
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            assert f"{hashlib.sha256(f.read()).hexdigest()}  {name}" in readme
    assert "CC BY-SA 3.0" in readme


def test_offline_tfds_fails_at_once_instead_of_retrying(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    class Unprepared:
        def is_prepared(self):
            return False

    monkeypatch.setattr(tfds, "builder", lambda name: Unprepared())
    monkeypatch.setattr(datasets, "_server_answers", lambda *a, **k: False)
    monkeypatch.setattr(tfds, "load", lambda *a, **k: pytest.fail("tfds.load was tried"))
    with pytest.raises(datasets.DatasetNotFoundError, match="does not answer"):
        datasets._load_tfds("mnist", "train")


def test_missing_files_name_the_command_line_flag(tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError, match="--data-dir"):
        datasets.load_split("fashion_mnist", "train", str(tmp_path))


def test_losses_module_lists_what_it_accepts():
    with pytest.raises(ValueError, match="sparse_categorical_crossentropy"):
        losses.get("nonsense", 4)


@pytest.mark.parametrize("name,build", [
    ("eps", lambda v: AdversarialTrainingModel(small_mlp(), eps=v)),
    ("eps", lambda v: VATModel(small_mlp(), eps=v)),
    ("xi", lambda v: VATModel(small_mlp(), xi=v)),
    ("step_clip", lambda v: attacks.DeepFool(step_clip=v)),
    ("init_epsilon", lambda v: attacks.DDN(init_epsilon=v)),
    ("max_stepsize", lambda v: attacks.FMN(max_stepsize=v, min_stepsize=0.0)),
    ("fgsm_eps", lambda v: EvaluationPlan(fgsm_eps=v)),
    ("linf_eps", lambda v: EvaluationPlan(linf_eps=[0.1, v])),
    ("eps", lambda v: attacks.fgsm(small_mlp(), np.zeros((2, 6), "float32"), [0, 1], eps=v)),
    ("eps", lambda v: attacks.FGSM()(small_mlp(), np.zeros((2, 6), "float32"), [0, 1], eps=v)),
])
def test_sizes_below_the_float_resolution_are_refused_as_zero_is(name, build):
    # Issue 23: zero was refused but 1e-12 accepted, where x + 1e-12 rounds to x in float32.
    for value in (0.0, 1e-12, 1e-8):
        with pytest.raises(ValueError, match=f"argument {name}: {value!r}"):
            build(value)
    build(1e-6)  # VAT's default xi, and any size float32 resolves at 1


def test_the_readmes_build_time_promises_are_kept_at_build_time():
    # Issue 23: each of these failed only after an epoch had trained or every attack had run.
    from keras_margin import certify, evaluate_robustness

    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (32, 6)).astype("float32"), rng.integers(0, 4, 32)
    with pytest.raises(ValueError, match="outside the input box"):
        RobustnessCallback(x + 2, y, clip_min=0.0, clip_max=1.0)
    model = small_mlp()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [to_numpy(w).copy() for w in model.weights]
    for wrong in (x[:, :4], x[:, :, None]):
        with pytest.raises(ValueError, match=r"x_val has samples of shape .* model takes \(6,\)"):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[RobustnessCallback(wrong, y)])
    for old, new in zip(before, model.weights):  # refused before the first epoch trained
        np.testing.assert_array_equal(old, to_numpy(new))
    # certify: an unsupported layer (tanh) is named before any attack runs ...
    attacked = []

    class Counting(attacks.FMN):
        def run(self, *args, **kwargs):
            attacked.append(1)
            return super().run(*args, **kwargs)

    with pytest.raises(ValueError, match="cannot bound layer .*tanh"):
        evaluate_robustness(model, x, y, attacks=[Counting()], certify="crown")
    assert not attacked
    # ... a trainer is certified through its base, as the attacks treat it ...
    relu = small_mlp(activation="relu")
    trainer = MarginModel(relu, C=0.1)
    np.testing.assert_array_equal(certify.certify(trainer, x, y, eps=0.01),
                                  certify.certify(relu, x, y, eps=0.01))

    # ... and a subclassed model, whose call is code, is refused by name.
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, inputs):
            return self.dense(inputs) * 2.0

    sub = Sub()
    sub(x)
    with pytest.raises(ValueError, match="Sub has no defined input.*subclassed"):
        certify.certified_radius(sub, x, y)
