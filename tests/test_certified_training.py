"""Certified training (IBP, CROWN-IBP, issue 27) against independent truths: the closed form on a
linear model, sampled points of the ball, finite differences of the robust loss, certify's own
bounds, and attacks on a certified-trained network."""

import keras
import numpy as np
import pytest
from conftest import linear_model
from test_certify import _random_inside

from keras_margin import CertifiedTrainingModel, ThreatModel, attacks, backend, certify
from keras_margin.propagation.bounds import margin_bounds
from keras_margin.propagation.margins import training_margins
from keras_margin.propagation.network import chain


def _margins(net, x, y, eps, norm, method, beta=1.0, box=(None, None)):
    return keras.ops.convert_to_numpy(training_margins(
        chain(net), keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y), eps, norm,
        method, box, beta))


@pytest.mark.parametrize("norm,dual", [("linf", 1), ("l2", 2)])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_on_a_linear_model_the_margins_are_the_closed_form(norm, dual, method):
    """f = W x + b: min over the ball of f_y - f_j is (w_y - w_j) x + b_y - b_j
    - eps ||w_y - w_j||_dual, exactly; m_y = 0. Labels are not the predictions."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    x, y = rng.normal(size=(9, 6)), rng.integers(0, 4, 9)
    with backend.float64():
        got = _margins(linear_model(w, b, "float64"), x, y, 0.3, norm, method, beta=0.4)
    gaps = (x @ w.T + b)[np.arange(9), y][:, None] - (x @ w.T + b)
    lengths = np.linalg.norm(w[y][:, None, :] - w[None], ord=dual, axis=2)
    np.testing.assert_allclose(got, gaps - 0.3 * lengths, rtol=1e-10, atol=1e-12)


def _conv_net(seed=2):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1), dtype="float64"),
        keras.layers.Conv2D(4, 3, activation="relu", dtype="float64"),
        keras.layers.MaxPooling2D(2, dtype="float64"),
        keras.layers.Conv2D(4, 2, padding="same", activation="relu", dtype="float64"),
        keras.layers.Flatten(dtype="float64"),
        keras.layers.Dense(8, activation="relu", dtype="float64"),
        keras.layers.Dense(3, dtype="float64")])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_training_bounds_are_certifys_bounds(norm):
    """IBP's margins are certify's "ibp" bound; CROWN-IBP's pure bound (beta 1), where it beats
    IBP's, is certify's "crown-ibp" (which takes the better of the two), on a network with
    convolutions and max pooling; float64, so certify's rounding allowance is ~1e-13."""
    with backend.float64():
        _compare_with_certify(_conv_net(), norm)


def _compare_with_certify(net, norm):
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 1, size=(6, 8, 8, 1)), rng.integers(0, 3, 6)
    box, eps = (0.0, 1.0), 0.05 if norm == "linf" else 0.3
    rivals = np.arange(3)[None] != y[:, None]

    def certified(method):
        return keras.ops.convert_to_numpy(margin_bounds(
            chain(net), keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y),
            np.full(6, eps), norm, method, box))[rivals]

    ibp = _margins(net, x, y, eps, norm, "ibp", box=box)[rivals]
    crown = _margins(net, x, y, eps, norm, "crown-ibp", beta=1.0, box=box)[rivals]
    mixed = _margins(net, x, y, eps, norm, "crown-ibp", beta=0.25, box=box)[rivals]
    np.testing.assert_allclose(ibp, certified("ibp"), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.maximum(ibp, crown), certified("crown-ibp"), rtol=1e-9,
                               atol=1e-9)
    np.testing.assert_allclose(mixed, 0.75 * ibp + 0.25 * crown, rtol=1e-9, atol=1e-9)
    assert (crown != ibp).any()  # the two bounds differ: the mix is a real choice


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_no_point_of_the_ball_has_a_margin_below_its_bound(norm):
    """Every sampled x' of the ball (l_inf: its corners in the box; l2: its sphere) has
    f_y(x') - f_j(x') >= m_j, for IBP and every beta of CROWN-IBP."""
    keras.utils.set_random_seed(1)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(10, 4)).astype("float32")
    y = rng.integers(0, 3, 10)
    eps, box = 0.2, ((0.0, 1.0) if norm == "linf" else (None, None))
    bounds = [_margins(net, x, y, eps, norm, "ibp", box=box)] + \
        [_margins(net, x, y, eps, norm, "crown-ibp", beta=beta, box=box) for beta in (0, .5, 1)]
    lowest = np.full((10, 3), np.inf)
    for _ in range(300):
        if norm == "linf":
            point = np.clip(x + eps * np.sign(rng.normal(size=x.shape)), 0, 1)
        else:
            delta = rng.normal(size=x.shape)
            point = x + eps * delta / np.linalg.norm(delta, axis=1, keepdims=True)
        f = keras.ops.convert_to_numpy(net(point.astype("float32")))
        lowest = np.minimum(lowest, f[np.arange(10), y][:, None] - f)
    for bound in bounds:
        assert (bound <= lowest + 1e-5).all(), (bound - lowest).max()
        assert (bound[np.arange(10), y] == 0).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_robust_loss_gradient_matches_finite_differences(norm):
    """d/dW of the mean robust cross-entropy on CROWN-IBP's margins (beta 0.5), float64,
    against central differences of every weight; the l2 ball's zero row (j = y) must not
    give a NaN (sqrt's derivative at 0)."""
    with backend.float64():
        _check_gradient(norm)


def _check_gradient(norm):
    keras.utils.set_random_seed(4)
    net = keras.Sequential([keras.Input((3,), dtype="float64"),
                            keras.layers.Dense(5, activation="relu", dtype="float64"),
                            keras.layers.Dense(5, activation="relu", dtype="float64"),
                            keras.layers.Dense(3, dtype="float64")])
    rng = np.random.default_rng(4)
    # Weights from numpy, biases nonzero: Keras's zero biases put a pre-activation bound
    # exactly on ReLU's kink wherever a sample's layer below is dead on its ball, where the
    # loss has no derivative for finite differences to check.
    net.set_weights([rng.normal(size=w.shape) for w in net.get_weights()])
    x, y = rng.uniform(0, 1, size=(6, 3)), rng.integers(0, 3, 6)
    operations = chain(net)

    def loss():
        m = training_margins(operations, keras.ops.convert_to_tensor(x),
                             keras.ops.convert_to_tensor(y), 0.1, norm, "crown-ibp",
                             (0.0, 1.0), 0.5)
        # (a sum, not ops.mean: Keras's PyTorch backend means float64 in float32)
        return keras.ops.sum(keras.ops.logsumexp(-m, axis=-1)) / len(y)

    _, grads = backend.value_and_weight_grad(loss, net.trainable_variables)
    h = 1e-6
    for variable, grad in zip(net.trainable_variables, grads):
        grad = keras.ops.convert_to_numpy(grad)
        assert np.isfinite(grad).all()
        value = keras.ops.convert_to_numpy(variable).copy()
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            for sign in (1, -1):
                moved = value.copy()
                moved[index] += sign * h
                variable.assign(moved)
                numeric[index] += sign * float(keras.ops.convert_to_numpy(loss())) / (2 * h)
            variable.assign(value)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def _digits(n=500):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    x = rng.uniform(0, 0.2, (n, 6, 6, 1)).astype("float32")
    for i, label in enumerate(y):  # the label is the brightest of ten cells
        x[i, label // 5 * 3:label // 5 * 3 + 3, label % 5, 0] += 0.7
    return x, y


def _mlp(seed=0, k=10):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(32, activation="relu"), keras.layers.Dense(k)])


def test_the_schedule_ramps_eps_kappa_and_beta_by_training_step(tmp_path):
    """One step per epoch, ramp (1, 3): eps 0, 0, eps/2, eps, eps; kappa 1 -> 0.5 alike; the
    logged loss is kappa * data_loss + (1 - kappa) * robust_loss; the clock is saved."""
    x, y = _digits(64)
    model = CertifiedTrainingModel(_mlp(), threat=ThreatModel("linf", 0.1, 0.0, 1.0),
                                   ramp=(1, 3), kappa=(1.0, 0.5), beta=(1.0, 0.0))
    model.compile(optimizer="adam")
    logs = model.fit(x, y, batch_size=64, epochs=5, verbose=0).history
    t = np.array([0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(logs["eps"], 0.1 * t, rtol=1e-6)
    kappa = 1 - 0.5 * t
    np.testing.assert_allclose(
        logs["loss"], kappa * np.array(logs["data_loss"]) +
        (1 - kappa) * np.array(logs["robust_loss"]), rtol=1e-5)
    # eps 0: the robust loss is the clean loss (the ball is the point).
    np.testing.assert_allclose(logs["robust_loss"][:2], logs["data_loss"][:2], rtol=1e-5)
    assert float(keras.ops.convert_to_numpy(model.schedule_step)) == 5
    path = str(tmp_path / "certified.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert float(keras.ops.convert_to_numpy(loaded.schedule_step)) == 5
    assert (loaded.ramp, loaded.kappa, loaded.threat) == ((1, 3), (1.0, 0.5), model.threat)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.schedule()["eps"]), 0.1)


@pytest.fixture(scope="module")
def mnist_pair():
    """The same MLP (784-64-64-10, seed 0) trained 5 epochs on 3,000 digits of the embedded
    MNIST sample by CROWN-IBP at l_inf 0.1 (ramp over steps 30-120) and with kappa held at 1
    (the clean loss alone, same steps); and 100 test digits."""
    from keras_margin import datasets

    (x, y), _, (x_test, y_test) = datasets.load("mnist", validation=0)
    models = {}
    for name, kappa in (("certified", (1.0, 0.0)), ("clean", (1.0, 1.0))):
        keras.utils.set_random_seed(0)
        base = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(64, activation="relu"),
                                 keras.layers.Dense(64, activation="relu"),
                                 keras.layers.Dense(10)])
        model = CertifiedTrainingModel(base, threat=ThreatModel("linf", 0.1, 0.0, 1.0),
                                       ramp=(30, 120), kappa=kappa)
        model.compile(optimizer="adam")
        model.fit(x[:3000], y[:3000], batch_size=100, epochs=5, verbose=0)
        models[name] = model
    return models, x_test[:100], y_test[:100]


@pytest.mark.slow
def test_certified_training_raises_the_certified_accuracy(mnist_pair):
    """Same network, data and steps: certify (CROWN) proves a good share of the test digits at
    l_inf 0.1 after certified training (a third on TensorFlow) and none after clean
    training."""
    models, x, y = mnist_pair
    certified = {name: certify.certify(model, x, y, eps=0.1, norm="linf", clip_min=0.0,
                                       clip_max=1.0).mean() for name, model in models.items()}
    assert certified["certified"] > 0.2 and certified["clean"] < 0.05, certified


@pytest.mark.slow
def test_no_attack_finds_an_adversarial_inside_a_certified_trained_models_radius(mnist_pair):
    """The soundness check of test_certify on the CROWN-IBP-trained MLP: FMN, APGD and random
    points never get inside the certified l_inf radius."""
    models, x, y = mnist_pair
    model, base = models["certified"], models["certified"].base
    x, y = x[:60], y[:60]
    radius = certify.certified_radius(model, x, y, norm="linf", clip_min=0.0, clip_max=1.0)
    found = np.minimum(
        attacks.fmn(base, x, y, norm="linf", clip_min=0.0, clip_max=1.0).distances("linf"),
        attacks.apgd(base, x, y, eps=0.5, norm="linf", restarts=3, clip_min=0.0,
                     clip_max=1.0).distances("linf"))
    assert (radius <= found * (1 + 1e-5) + 1e-7).all(), (radius - found).max()
    assert np.median(radius[radius > 0]) > 0.05  # trained at 0.1: the proofs reach far
    assert not _random_inside(base, x, y, radius, "linf").any()


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps"), ({"eps": float("nan")}, "eps"), ({"eps": None}, "eps"),
    ({"eps": 0.1, "ramp": (10, 5)}, "ramp"), ({"eps": 0.1, "ramp": (0.5, 3)}, r"ramp\[0\]"),
    ({"eps": 0.1, "ramp": 5}, "ramp"), ({"eps": 0.1, "beta": (1.5, 0.0)}, r"beta\[0\]"),
    ({"eps": 0.1, "kappa": (1.0, -0.1)}, r"kappa\[1\]"), ({"eps": 0.1, "method": "crown"},
                                                          "method"),
    ({"eps": 0.1, "norm": "l1"}, "norm"), ({"eps": 0.1, "clip": (1.0, 0.0)}, "clip"),
    ({"threat": ThreatModel("linf", 0.1, 0.0, None)}, "threat.*one side"),
    ({"threat": ThreatModel("linf", 0.1), "eps": 0.2}, "eps|threat"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CertifiedTrainingModel(_mlp(), **kwargs)


def test_an_unsupported_layer_or_a_single_logit_is_refused_when_built():
    base = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(8, activation="tanh", name="squash"),
                             keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="'squash'.*tanh"):
        CertifiedTrainingModel(base, eps=0.1)
    model = CertifiedTrainingModel(_mlp(k=1), eps=0.1)
    with pytest.raises(ValueError, match="k >= 2"):
        model.build((None, 6, 6, 1))


def test_inputs_outside_the_box_are_refused_at_fit():
    x, y = _digits(20)
    model = CertifiedTrainingModel(_mlp(), threat=ThreatModel("linf", 0.1, 0.0, 1.0))
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="box|clip"):
        model.fit(x + 0.5, y, epochs=1, verbose=0)


def test_the_trainer_reports_its_numbers_in_history():
    x, y = _digits(40)
    model = CertifiedTrainingModel(_mlp(), eps=0.1, clip=(0.0, 1.0))
    model.compile(optimizer="adam", metrics=["accuracy"])
    logs = model.fit(x, y, batch_size=20, epochs=1, verbose=0, validation_data=(x, y)).history
    for name in ("loss", "data_loss", "robust_loss", "eps", "certified_accuracy", "accuracy",
                 "val_certified_accuracy", "val_eps"):
        assert name in logs, name


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_a_partial_last_batch_trains_through_every_layer_kind(method):
    """A last batch of 7 (TensorFlow retraces the step with an unknown batch size) through
    convolution, max pooling, dense layers; every backend, compiled steps."""
    x, y = _digits(47)
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((6, 6, 1)),
                             keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                             keras.layers.MaxPooling2D(2), keras.layers.Conv2D(4, 2),
                             keras.layers.ReLU(), keras.layers.Flatten(),
                             keras.layers.Dense(10)])
    model = CertifiedTrainingModel(base, eps=0.05, clip=(0.0, 1.0), method=method,
                                   beta=(0.5, 0.5))
    model.compile(optimizer="adam")
    logs = model.fit(x, y, batch_size=20, epochs=2, verbose=0).history
    assert np.isfinite(logs["loss"]).all() and logs["skipped_batches"] == [0, 0]
    assert float(keras.ops.convert_to_numpy(model.schedule_step)) == 6


@pytest.mark.slow
def test_a_certified_row_runs_resumes_and_is_certified_by_the_command(tiny_mnist, tmp_path):
    """The runner trains a (shrunk) row of the "certified" table, stopped after one epoch and
    resumed with its schedule's clock; `evaluate --certify` proves it and the report lists it."""
    import dataclasses
    import os

    from keras_margin.experiments import cli, get_row, report, runner

    row = dataclasses.replace(get_row("mlp-crown-ibp-linf-0.1", table="certified"),
                              name="tiny-crown-ibp", hidden=(16,), epochs=2, validation=40,
                              batch_size=50, monitor_every=1,
                              trainer_kwargs={**get_row("mlp-crown-ibp-linf-0.1").trainer_kwargs,
                                              "ramp": [1, 3]},
                              deepfool={"max_iter": 5, "step_clip": 0.5, "overshoot": 0.02})
    out = str(tmp_path / "runs")
    assert runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0, stop_after=1) is None
    runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    folder = runner.run_dir(out, row, 0)
    model = keras.models.load_model(os.path.join(folder, "model.keras"))
    assert isinstance(model, CertifiedTrainingModel)
    assert float(keras.ops.convert_to_numpy(model.schedule_step)) == 2 * 200 / 50
    with open(os.path.join(folder, "history.csv")) as f:
        header = f.readline()
    assert "certified_accuracy" in header and "eps" in header.split(",")
    assert cli.main(["evaluate", out, "--data-dir", tiny_mnist, "--n", "20", "--steps", "5",
                     "--attacks", "fmn", "--linf-eps", "0.1", "--l2-eps", "",
                     "--certify", "crown", "--box", "0,1", "--tag", "certified",
                     "--quiet"]) == 0
    text = report.write(out)
    assert "## Certified training — MLP 16, 2 epochs" in text
    certified = text[text.index("Certified robustness"):]
    header = [ln for ln in certified.splitlines() if ln.startswith("| row |")][0]
    # the budget it was certified at, and only it, then how the bounds were made
    assert header.endswith("| certified acc. linf 0.1 | bounds |")
    line = [ln for ln in certified.splitlines() if ln.startswith("| MLP CROWN-IBP, l_inf 0.1")][0]
    assert "nan" not in line and line.endswith("| CROWN at every layer |"), line


# -- the Lipschitz margin (GloRo-style) ------------------------------------------------------
def _lipschitz_against_certify(net, x, y, norm, eps=0.05, iterations=1):
    from keras_margin.propagation.margins import lipschitz_margins, power_iterated

    operations = chain(net)
    rng = np.random.default_rng(1)
    vectors = [keras.ops.convert_to_tensor(rng.normal(size=(1,) + operations[i].in_shape)
                                           .astype("float32"))
               for i in power_iterated(operations)]
    logits = net(x)
    for _ in range(iterations):
        ours, vectors = lipschitz_margins(operations, logits, keras.ops.convert_to_tensor(y),
                                          eps, norm, vectors)
    proven = certify.lower_margins(net, x, y, eps=eps, norm=norm, method="lipschitz")
    own = np.eye(proven.shape[1], dtype=bool)[y]
    return keras.ops.convert_to_numpy(ours)[~own], proven[~own], \
        keras.ops.convert_to_numpy(logits)


def test_lipschitz_training_margins_are_certifys_lipschitz_margins():
    """l_inf: the same closed form (exact row sums); l2: once the power iteration converges,
    its norms are the exact spectral norms certify takes (to its rounding allowance)."""
    x, y = _digits(20)
    net = _mlp(seed=3)
    for norm, iterations in (("linf", 1), ("l2", 300)):
        ours, proven, logits = _lipschitz_against_certify(net, x, y, norm,
                                                          iterations=iterations)
        assert np.all(proven <= ours + 1e-6)  # certify's is sound: never above the estimate
        np.testing.assert_allclose(ours, proven, rtol=1e-4,
                                   atol=1e-4 * np.abs(logits).max())
    # Convolutions and max pooling: l_inf's norms are exact, so the same margins; for l2,
    # certify bounds a convolution's norm from above (its DFT bound), so its margins are lower.
    keras.utils.set_random_seed(2)
    conv = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(2), keras.layers.Conv2D(4, 2, padding="same",
                                                          activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    x8 = np.random.default_rng(4).uniform(size=(10, 8, 8, 1)).astype("float32")
    y8 = np.arange(10) % 3
    ours, proven, logits = _lipschitz_against_certify(conv, x8, y8, "linf")
    np.testing.assert_allclose(ours, proven, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    ours, proven, _ = _lipschitz_against_certify(conv, x8, y8, "l2", iterations=300)
    assert np.all(proven <= ours + 1e-6)


def test_lipschitz_training_certifies_what_certify_proves():
    """Trained on the Lipschitz margin at l2 0.6, the MLP has points certify (method
    "lipschitz", the exact norms) proves at 0.6, and none when trained on the clean loss; the
    power iteration's vectors are saved with the weights."""
    x, y = _digits(400)
    certified = {}
    for name, kappa in (("lipschitz", (1.0, 0.0)), ("clean", (1.0, 1.0))):
        model = CertifiedTrainingModel(_mlp(), eps=0.6, norm="l2", method="lipschitz",
                                       ramp=(20, 60), kappa=kappa)
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        history = model.fit(x, y, batch_size=50, epochs=30, verbose=0).history
        certified[name] = certify.certify(model, x[:100], y[:100], eps=0.6, norm="l2",
                                          method="lipschitz").mean()
        if name == "lipschitz":
            assert history["certified_accuracy"][-1] > 0.3
            trained = model
    assert certified["lipschitz"] > 0.3 and certified["clean"] < 0.05, certified
    assert len(trained.power_vectors) == 1  # the hidden Dense; the logits' norm is exact
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/m.keras"
        trained.save(path)
        loaded = keras.models.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.power_vectors[0]),
                               keras.ops.convert_to_numpy(trained.power_vectors[0]))
