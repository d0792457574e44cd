"""certify on models with skips (issue 28): a functional model read as its graph, residual
Adds bounded by every method, against closed forms, a chain that computes the same, an exact
mixed-integer program and attacks."""

import keras
import numpy as np
import pytest
from conftest import BACKEND

from keras_margin import attacks, certify
from keras_margin.architectures import resnet20
from keras_margin.propagation.network import Add, chain

METHODS = ("crown", "crown-ibp", "ibp", "lipschitz")
layers = keras.layers


def _residual_linear(seed=0, d=5, k=3):
    """f(x) = W_out (x + W_1 x) + b: a skip around one linear map, no ReLU."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,))
    x = layers.Add()([inputs, layers.Dense(d)(inputs)])
    model = keras.Model(inputs, layers.Dense(k)(x))
    w1, b1 = (np.asarray(v, np.float64) for v in model.layers[1].get_weights())
    w2, b2 = (np.asarray(v, np.float64) for v in model.layers[3].get_weights())
    effective = (np.eye(d) + w1) @ w2  # x -> x (I + W1) W2 + b1 W2 + b2, rows as inputs
    return model, effective.T, b1 @ w2 + b2


@pytest.mark.parametrize("norm,dual", [("linf", 1), ("l2", 2)])
def test_a_linear_network_with_a_skip_is_bounded_exactly(norm, dual):
    """No ReLU: CROWN's back-substitution through both paths of the Add is the linear map
    itself, so its radius is the closed-form distance (f_y - f_j) / ||w_y - w_j||_dual; the
    interval and Lipschitz radii are never above it."""
    model, w, b = _residual_linear()
    x = np.random.default_rng(1).normal(size=(20, w.shape[1])).astype("float32")
    f = x.astype(np.float64) @ w.T + b
    y = f.argmax(1)
    gaps = f[np.arange(len(y)), y][:, None] - f
    lengths = np.linalg.norm(w[y][:, None, :] - w[None], ord=dual, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = np.where(np.arange(len(w))[None] == y[:, None], np.inf, gaps / lengths).min(1)
    crown = certify.certified_radius(model, x, y, norm=norm, method="crown")
    assert (crown <= exact).all(), crown - exact  # the radius search keeps the proven end
    np.testing.assert_allclose(crown, exact, rtol=1e-5, atol=1e-6)  # to its resolution
    for method in ("crown-ibp", "ibp", "lipschitz"):
        radius = certify.certified_radius(model, x, y, norm=norm, method=method)
        assert (radius <= exact * (1 + 1e-6)).all(), method


def _doubled(skip: bool, seed=3):
    """relu(W x) joined with itself by an Add, or the same as a chain through a Rescaling(2)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden_layer, out_layer = layers.Dense(12, activation="relu"), layers.Dense(4)
    h = hidden_layer(inputs)
    joined = layers.Add()([h, h]) if skip else layers.Rescaling(2.0)(h)
    return keras.Model(inputs, out_layer(joined))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_an_add_of_one_branch_with_itself_bounds_as_twice_it(method, norm):
    """Add([h, h]) and 2 h are one function with one relaxation: every method gives the
    graph the chain's margins (the rows that reach h by two paths add up)."""
    graph, line = _doubled(True), _doubled(False)
    line.set_weights(graph.get_weights())
    x = np.random.default_rng(4).normal(size=(16, 6)).astype("float32")
    y = np.argmax(keras.ops.convert_to_numpy(graph(x)), axis=1)
    ours = certify.lower_margins(graph, x, y, eps=0.05, norm=norm, method=method)
    theirs = certify.lower_margins(line, x, y, eps=0.05, norm=norm, method=method)
    # The Rescaling's norm carries a guard for its float32 row sums (1 + 2 n u, `_abs_sums`)
    # that the Add's exact 1 + 1 does not: Lipschitz margins differ by that, about 3e-6.
    tolerance = 1e-5 if method == "lipschitz" else 1e-9
    np.testing.assert_allclose(ours, theirs, rtol=tolerance, atol=tolerance)


def _tiny_residual(seed=5, d=3, width=8, k=3):
    """x -> h1 = relu(W1 x); h2 = relu(h1 + W2 h1) (a skip); logits W3 h2; dense, small
    enough for an exact MILP."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,))
    h1 = layers.Dense(width, activation="relu")(inputs)
    h2 = layers.ReLU()(layers.Add()([h1, layers.Dense(width)(h1)]))
    return keras.Model(inputs, layers.Dense(k)(h2))


def _milp_distance(model, x0, label, bound):
    """The smallest l_inf distance from x0 to a point where some rival's logit reaches the
    label's, by a mixed-integer program over the graph (big-M ReLUs on interval bounds of
    the box of radius `bound`; scipy's HiGHS, no gap): an independent truth."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    (w1, b1), (w2, b2), (w3, b3) = [
        tuple(np.asarray(v, np.float64) for v in layer.get_weights())
        for layer in model.layers if isinstance(layer, layers.Dense)]
    d, width = w1.shape
    x0 = x0.astype(np.float64)
    # Variables: t, x (d), z1, a1, s1 (width each), z2 (the Add's output), a2, s2.
    n = 1 + d + 6 * width
    x_at, z1, a1, s1 = 1, 1 + d, 1 + d + width, 1 + d + 2 * width
    z2, a2, s2 = 1 + d + 3 * width, 1 + d + 4 * width, 1 + d + 5 * width
    lo_x, hi_x = x0 - bound, x0 + bound
    c, r = (lo_x + hi_x) / 2 @ w1 + b1, (hi_x - lo_x) / 2 @ np.abs(w1)
    l1, u1 = c - r, c + r
    p_lo, p_hi = np.maximum(l1, 0), np.maximum(u1, 0)
    c, r = (p_lo + p_hi) / 2 @ (np.eye(width) + w2) + b2, \
        (p_hi - p_lo) / 2 @ np.abs(np.eye(width) + w2)
    l2, u2 = c - r, c + r
    best = np.inf
    for rival in range(w3.shape[1]):
        if rival == label:
            continue
        rows, lo, hi = [], [], []

        def row(entries, low, high, rows=rows, lo=lo, hi=hi):
            v = np.zeros(n)
            for i, value in entries:
                v[i] += value
            rows.append(v)
            lo.append(low)
            hi.append(high)

        for i in range(d):
            row([(x_at + i, 1.0), (0, -1.0)], -np.inf, x0[i])
            row([(x_at + i, -1.0), (0, -1.0)], -np.inf, -x0[i])
        for j in range(width):
            row([(z1 + j, 1.0)] + [(x_at + i, -w1[i, j]) for i in range(d)], b1[j], b1[j])
            row([(z2 + j, 1.0), (a1 + j, -1.0)] + [(a1 + i, -w2[i, j]) for i in range(width)],
                b2[j], b2[j])
            for z, a, s, low, up in ((z1, a1, s1, l1, u1), (z2, a2, s2, l2, u2)):
                row([(a + j, 1.0), (z + j, -1.0)], 0.0, np.inf)
                row([(a + j, 1.0), (z + j, -1.0), (s + j, -low[j])], -np.inf, -low[j])
                row([(a + j, 1.0), (s + j, -max(up[j], 0.0))], -np.inf, 0.0)
        row([(a2 + i, w3[i, rival] - w3[i, label]) for i in range(width)],
            b3[label] - b3[rival], np.inf)
        lows = [0.0] + list(lo_x) + list(l1) + [0.0] * width + [0.0] * width + list(l2) + \
            [0.0] * width + [0.0] * width
        highs = [bound] + list(hi_x) + list(u1) + list(p_hi) + [1.0] * width + list(u2) + \
            list(np.maximum(u2, 0)) + [1.0] * width
        integrality = [0] * (1 + d + 2 * width) + [1] * width + [0] * (2 * width) + [1] * width
        cost = np.zeros(n)
        cost[0] = 1.0
        result = milp(cost, constraints=LinearConstraint(np.array(rows), lo, hi),
                      integrality=np.array(integrality), bounds=Bounds(lows, highs),
                      options={"mip_rel_gap": 0.0})
        if result.status == 0:
            best = min(best, result.fun)
    return best


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason="float64 reference: the other backends suffice")
def test_on_a_tiny_residual_network_certified_is_below_the_exact_distance():
    """Every method's l_inf radius is at most the exact distance of the MILP (its solver's
    feasibility tolerance, 1e-6, allowed: the optimum is its answer, not a checked point), CROWN's
    at least the interval bound's, and CROWN proves a good part of the exact distance."""
    pytest.importorskip("scipy")
    model = _tiny_residual()
    x = np.random.default_rng(6).normal(size=(10, 3)).astype("float32")
    y = np.argmax(keras.ops.convert_to_numpy(model(x)), axis=1)
    exact = np.array([_milp_distance(model, x[i], y[i], 2.0) for i in range(len(x))])
    radii = {method: certify.certified_radius(model, x, y, norm="linf", method=method)
             for method in METHODS}
    for method, radius in radii.items():
        assert (radius <= exact + 1e-6).all(), (method, radius - exact)
    assert (radii["crown"] >= radii["ibp"] * (1 - 1e-6)).all()
    assert np.median(radii["crown"] / exact) > 0.5, radii["crown"] / exact


def _small_resnet(seed=7):
    """Weights drawn by NumPy (He-normal kernels), so every backend bounds the same network:
    each backend's own initialisers draw other weights from the same seed."""
    model = resnet20((8, 8, 1), num_classes=4, blocks=1)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):  # as after training, not identity
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                               rng.normal(0, 0.1, c), rng.uniform(0.5, 2.0, c)])
        elif layer.weights:
            kernel, *bias = layer.get_weights()
            fan_in = int(np.prod(kernel.shape[:-1]))
            layer.set_weights([rng.normal(0, np.sqrt(2 / fan_in), kernel.shape),
                               *(np.zeros_like(b) for b in bias)])
    return model


def test_a_resnet_is_read_as_its_graph():
    """ResNet-20's blocks (one per stage here): each Add reads the block's input (or its
    1x1 projection) and the second batch norm, and the graph computes the model."""
    model = _small_resnet()
    operations = chain(model)
    joins = [op for op in operations if isinstance(op, Add)]
    assert [op.name for op in joins] == [f"stage{s}_block1_add" for s in (1, 2, 3)]
    names = {i: op.name for i, op in enumerate(operations)}
    assert sorted(names[j] for j in joins[1].inputs) == ["stage2_block1_bn2",
                                                         "stage2_block1_shortcut_bn"]
    x = np.random.default_rng(8).uniform(size=(4, 8, 8, 1)).astype("float32")
    certify.check_supported(model, x)  # raises where the graph computes something else


@pytest.mark.slow
def test_a_resnet_is_bounded_soundly():
    """A small ResNet (8x8 inputs, one block per stage, batch norm with trained-like
    statistics) in [0, 1]: every layer by CROWN (patches through the Adds; no fallback); at
    the largest l_inf budget of 0.02, 0.01, 0.005, 0.002 where CROWN proves most points,
    CROWN's margins are at least the interval bound's, and no attack and no random corner of
    the ball fools a certified point."""
    model = _small_resnet()
    rng = np.random.default_rng(9)
    x = rng.uniform(0, 1, size=(12, 8, 8, 1)).astype("float32")
    y = np.argmax(keras.ops.convert_to_numpy(model(x)), axis=1)
    routes = dict(certify.crown_plan(model))
    assert "interval" not in routes.values(), routes
    # a sum: its neurons' patches pass both paths (cheaper than dense rows here)
    assert routes["stage1_block1_add"] == "patches"
    box = dict(clip_min=0.0, clip_max=1.0)
    for eps in (0.02, 0.01, 0.005, 0.002):
        crown = certify.lower_margins(model, x, y, eps=eps, norm="linf", **box).min(axis=1)
        if (crown > 0).mean() > 0.5:
            break
    else:
        raise AssertionError(f"CROWN proves at most half the points even at l_inf 0.002: {crown}")
    ibp = certify.lower_margins(model, x, y, eps=eps, norm="linf", method="ibp",
                                **box).min(axis=1)
    assert (crown >= ibp).all()
    proven = crown > 0
    found = attacks.fmn(model, x, y, norm="linf", steps=200, **box).distances("linf")
    assert (found[proven] > eps).all(), found
    for _ in range(10):
        delta = np.sign(rng.normal(size=x.shape)) * eps
        point = np.clip(x + delta, 0, 1).astype("float32")
        fooled = np.argmax(keras.ops.convert_to_numpy(model(point)), axis=1) != y
        assert not (fooled & proven).any()


@pytest.mark.parametrize("make,match", [
    (lambda i: layers.Concatenate()([i, layers.Dense(4)(i)]), "Concatenate"),
    (lambda i: layers.Multiply()([i, layers.Dense(4)(i)]), "Multiply"),
])
def test_unsupported_joins_are_refused_by_name(make, match):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(3)(make(inputs)))
    with pytest.raises(ValueError, match=match):
        certify.certify(model, np.zeros((2, 4), "float32"), [0, 1], eps=0.1)


def test_lipschitz_training_refuses_a_graph_by_its_join():
    from keras_margin import CertifiedTrainingModel

    model = CertifiedTrainingModel(_doubled(True), eps=0.1, norm="l2", method="lipschitz")
    model.compile(optimizer="adam")
    x = np.zeros((4, 6), "float32")
    with pytest.raises(ValueError, match="add"):
        model.fit(x, np.zeros(4, "int32"), epochs=1, verbose=0)


def _residual_conv_net(seed=11):
    """8x8x1 -> conv relu -> a residual block (conv, batch norm, Add, relu) -> max pooling
    -> 3 logits: the shapes `test_certified_training`'s comparison uses."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = layers.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    branch = layers.BatchNormalization()(layers.Conv2D(3, 3, padding="same")(h))
    h = layers.ReLU()(layers.Add()([h, branch]))
    h = layers.Flatten()(layers.MaxPooling2D(2)(h))
    return keras.Model(inputs, layers.Dense(3)(h))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_certified_training_bounds_a_graph_as_certify_does(norm):
    """CertifiedTrainingModel's IBP and CROWN-IBP margins on a residual graph are certify's
    (float64), and a step of either trains through the Add."""
    from test_certified_training import _compare_with_certify

    from keras_margin import CertifiedTrainingModel, backend

    with backend.float64():
        _compare_with_certify(_residual_conv_net(), norm)
    x = np.random.default_rng(12).uniform(0, 1, size=(10, 8, 8, 1)).astype("float32")
    for method in ("ibp", "crown-ibp"):
        model = CertifiedTrainingModel(_residual_conv_net(), eps=0.05, norm=norm,
                                       method=method, ramp=(0, 0), clip=(0.0, 1.0))
        model.compile(optimizer="adam")
        history = model.fit(x, np.arange(10) % 3, batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
