"""CROWN through convolutions by patches (issue 28): the same bounds as dense rows, the route
each layer takes, and a warning where a layer is left to intervals."""

import math

import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_margin import attacks, backend, certify
from keras_margin.architectures import lenet5
from keras_margin.propagation import bounds
from keras_margin.propagation.network import chain
from keras_margin.robustness_report import RobustnessReport


def _net(kind, seed=0):
    """Small convolutional nets that take every patch transpose: valid and 'same' padding,
    strides 2 on odd sizes, max pooling after a ReLU (the fused step) and without one, batch
    norm, average pooling, rescaling with an offset."""
    keras.utils.set_random_seed(seed)
    if kind == "lenet":
        shape, stack = (14, 14, 2), [
            layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(5, 3, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
            layers.Dense(6, activation="relu"), layers.Dense(3)]
    elif kind == "same":
        shape, stack = (17, 17, 2), [
            layers.Conv2D(3, 3, padding="same", activation="relu"),
            layers.Conv2D(4, 3, strides=2, padding="same"), layers.BatchNormalization(),
            layers.ReLU(), layers.Conv2D(5, 4, strides=2, padding="same", activation="relu"),
            layers.AveragePooling2D(2), layers.Conv2D(3, 2, activation="relu"),
            layers.Flatten(), layers.Dense(3)]
    elif kind == "residual":
        return _residual(seed), (15, 15, 2)
    else:
        shape, stack = (12, 12, 1), [
            layers.Rescaling(0.5, offset=0.1), layers.Conv2D(3, 3, strides=2, activation="relu"),
            layers.Conv2D(4, 2, padding="same"), layers.MaxPooling2D(2), layers.ReLU(),
            layers.Conv2D(4, 3, padding="same", activation="relu"), layers.Flatten(),
            layers.Dense(3)]
    net = keras.Sequential([keras.Input(shape)] + stack)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.normal(size=c), rng.normal(size=c) * 0.1,
                               rng.uniform(-0.5, 0.5, c), rng.uniform(0.5, 1.5, c)])
    return net, shape


def _residual(seed):
    """Two residual blocks (an identity skip around a convolution and batch norm; a strided
    block with a 1 x 1 projection shortcut), a max pooling after a ReLU, then dense."""
    rng = np.random.default_rng(seed)
    x = keras.Input((15, 15, 2))
    h = layers.Conv2D(3, 3, padding="same", activation="relu")(x)
    branch = layers.BatchNormalization()(layers.Conv2D(3, 3, padding="same")(h))
    h = layers.ReLU()(layers.Add()([branch, h]))
    branch = layers.Conv2D(4, 3, padding="same")(
        layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(h))
    h = layers.ReLU()(layers.Add()([branch, layers.Conv2D(4, 1, strides=2)(h)]))
    h = layers.Conv2D(3, 2, activation="relu")(layers.MaxPooling2D(2)(h))
    net = keras.Model(x, layers.Dense(3)(layers.Flatten()(h)))
    for layer in net.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.normal(size=c), rng.normal(size=c) * 0.1,
                               rng.uniform(-0.5, 0.5, c), rng.uniform(0.5, 1.5, c)])
    return net


@pytest.mark.parametrize("kind", ["lenet", "same", "rescaling", "residual"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_patch_rows_give_the_dense_rows_bounds(kind, norm, eps):
    """Every convolutional layer's CROWN bounds by patches equal those by dense rows (the
    same arithmetic, another layout) to float64's rounding."""
    net, shape = _net(kind)
    x = np.random.default_rng(1).uniform(size=(5,) + shape)
    box = (0.0, 1.0) if norm == "linf" else (None, None)

    def both(x0):
        """Every patchable layer's bounds by dense rows and by patches."""
        operations = chain(net)
        region = bounds.Region(x0, ops.full((5,), eps, dtype=x0.dtype), norm, box)
        layer_bounds, relaxations = bounds.layer_bounds(operations, region, "crown")
        pairs = []
        for index, op in enumerate(operations):
            if isinstance(op, (bounds.Linear, bounds.Add)) and \
                    bounds.patchable(operations[:index + 1]):
                pairs.append((bounds.crown_layer_bounds(operations, index, layer_bounds,
                                                        relaxations, region),
                              bounds.crown_patch_bounds(operations, index, layer_bounds,
                                                        relaxations, region)))
        return pairs

    with backend.float64():
        if keras.backend.backend() == "jax":
            import jax  # one compiled program: eager JAX compiles each operation apart

            both = jax.jit(both)
        pairs = both(ops.convert_to_tensor(x))
        for dense, patch in pairs:
            for a, b in zip(dense, patch):
                a, b = ops.convert_to_numpy(a), ops.convert_to_numpy(b)
                assert b.dtype == np.float64
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * np.abs(a).max())
    assert len(pairs) >= (7 if kind == "residual" else 2)  # residual: past both Adds


def test_channel_chunks_taken_one_at_a_time_give_every_chunking_the_same_bounds(monkeypatch):
    """A layer's channels by patches in chunks of one, of three (the last chunk padded by a
    zero selector row) and all at once give the same bounds on the residual net."""
    net, shape = _net("residual")
    x = np.random.default_rng(2).uniform(size=(3,) + shape)
    operations = chain(net)
    layers_by_patches = [i for i, op in enumerate(operations)
                         if isinstance(op, (bounds.Linear, bounds.Add)) and
                         bounds.patchable(operations[:i + 1]) and op.out_shape[-1] > 3]
    assert layers_by_patches

    def patches(x0, index, budget):
        monkeypatch.setattr(bounds, "ROW_BUDGET", budget(operations[:index + 1]))
        region = bounds.Region(x0, ops.full((3,), 0.05, dtype=x0.dtype), "linf", (0.0, 1.0))
        layer_bounds, relaxations = bounds.layer_bounds(operations, region, "crown-ibp")
        return bounds.crown_patch_bounds(operations, index, layer_bounds, relaxations, region)

    with backend.float64():
        x0 = ops.convert_to_tensor(x)
        for index in layers_by_patches:
            whole, *chunked = [patches(x0, index, budget) for budget in (
                lambda _: 2 ** 40, lambda _: 1,
                lambda prefix: 3 * bounds.patch_channel_floats(prefix, 3))]
            for other in chunked:
                for a, b in zip(whole, other):
                    np.testing.assert_allclose(ops.convert_to_numpy(b), ops.convert_to_numpy(a),
                                               rtol=0, atol=1e-12)


@pytest.mark.slow
def test_dense_row_chunks_give_every_chunking_the_same_bounds(monkeypatch):
    """A layer's neurons by dense rows in chunks of one, of three (the last padded by zero
    rows) and all at once give the same bounds, on the residual net's layers of at most 100
    neurons (past both Adds; one row at a time is slow on wider ones)."""
    net, shape = _net("residual")
    x = np.random.default_rng(3).uniform(size=(2,) + shape)
    operations = chain(net)
    layers_by_rows = [i for i, op in enumerate(operations)
                      if isinstance(op, (bounds.Linear, bounds.Add)) and i > 0 and
                      math.prod(op.out_shape) <= 100]
    assert len(layers_by_rows) >= 2

    def rows(x0, index, budget):
        monkeypatch.setattr(bounds, "ROW_BUDGET", budget(operations[:index + 1]))
        region = bounds.Region(x0, ops.full((2,), 0.05, dtype=x0.dtype), "linf", (0.0, 1.0))
        layer_bounds, relaxations = bounds.layer_bounds(operations, region, "crown-ibp")
        return bounds.crown_layer_bounds(operations, index, layer_bounds, relaxations, region)

    with backend.float64():
        x0 = ops.convert_to_tensor(x)
        for index in layers_by_rows:
            whole, *chunked = [rows(x0, index, budget) for budget in (
                lambda _: 2 ** 40, lambda _: 1,
                lambda prefix: 3 * bounds.dense_row_floats(prefix, shape, 2))]
            for other in chunked:
                for a, b in zip(whole, other):
                    np.testing.assert_allclose(ops.convert_to_numpy(b), ops.convert_to_numpy(a),
                                               rtol=0, atol=1e-12)


def test_a_residual_network_is_crown_at_every_layer_by_patches(monkeypatch):
    """Residual sums no longer send the layers after them to intervals: patches meet on the
    union of their windows where the skip joins. (Dense rows refused above 100 neurons, so
    that every convolutional map here is too wide for them, as ResNet-20's are.)"""
    monkeypatch.setattr(bounds, "CROWN_NEURONS", 100)
    plan = certify.crown_plan(_residual(0))
    assert {route for _, route in plan} == {"exact", "patches"}, plan
    assert sum(name.startswith("add") for name, _ in plan) == 2


def test_batch_norm_is_read_in_float64_from_its_float32_weights():
    """The folded scale gamma / sqrt(var + eps) and shift, in float64 from the float32 weights
    (epsilon as the layer rounds it), equal NumPy's float64 to its rounding: folded in float32
    first, they were off by ~1e-7 relative, and two compiled programs rounded them apart."""
    net, shape = _net("same")
    norm = next(layer for layer in net.layers if isinstance(layer, layers.BatchNormalization))
    op = next(op for op in chain(net) if op.name == norm.name)
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in norm.get_weights())
    scale = gamma / np.sqrt(var + np.float64(np.float32(norm.epsilon)))
    z = np.random.default_rng(2).normal(size=(3,) + op.in_shape)
    with backend.float64():
        out = ops.convert_to_numpy(op(ops.convert_to_tensor(z)))
        back = ops.convert_to_numpy(op.transpose(ops.convert_to_tensor(z)))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, z * scale + (beta - mean * scale), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(back, z * scale, rtol=1e-15, atol=0)
    assert op.l2_norm() >= np.abs(scale).max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_in_order_give_what_a_loop_gives(dtype):
    """backend.map_in_order (a loop inside the compiled program: one chunk of CROWN rows
    alive at a time) stacks fn's pairs as a Python loop does, in the input's type."""
    xs = np.random.default_rng(3).normal(size=(4, 2, 3)).astype(dtype)

    def fn(x):
        return ops.abs(x) * 2.0, ops.sum(x, axis=-1, keepdims=True) + x

    with backend.float64():
        a, b = backend.map_in_order(fn, ops.convert_to_tensor(xs), (2, 3))
        a, b = ops.convert_to_numpy(a), ops.convert_to_numpy(b)
    assert a.dtype == b.dtype == np.dtype(dtype)
    np.testing.assert_allclose(a, np.abs(xs) * 2, rtol=1e-6 if dtype == "float32" else 1e-15)
    np.testing.assert_allclose(b, xs.sum(-1, keepdims=True) + xs,
                               rtol=1e-6 if dtype == "float32" else 1e-15)


def test_each_layer_routes_as_its_shape_allows_and_a_fallback_warns():
    net = lenet5()
    names = [layer.name for layer in net.layers if layer.weights]
    assert certify.crown_plan(net) == [(names[0], "exact"), (names[1], "patches"),
                                       (names[2], "dense")]
    wide = keras.Sequential([keras.Input((4,)), layers.Dense(5, activation="relu"),
                             layers.Dense(bounds.CROWN_NEURONS + 1, activation="relu",
                                          name="wide"), layers.Dense(3)])
    assert dict(certify.crown_plan(wide))["wide"] == "interval"
    x = np.random.default_rng(0).uniform(size=(4, 4)).astype("float32")
    y = np.argmax(ops.convert_to_numpy(wide(x)), axis=1)
    with pytest.warns(UserWarning, match="interval bounds for layer.s. wide"):
        certify.certify(wide, x, y, eps=0.01)


def test_the_report_records_each_layers_route():
    routes = {"conv2d": "exact", "conv2d_1": "patches", "dense": "dense"}
    report = RobustnessReport(n=2, error=0.0, fgsm_eps=None, fgsm_error=np.nan, rho_adv=0.1,
                              deepfool_success_rate=1.0, distances=np.array([0.1, 0.1]),
                              certify_method="crown", certify_routes=routes)
    flat = report.to_dict()
    assert flat["certify_route_conv2d_1"] == "patches"
    assert RobustnessReport.from_dict(flat).certify_routes == routes


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_no_attack_or_random_point_gets_inside_a_patch_certified_radius(norm):
    """Soundness where the patches carry the bounds: FMN's distances and random points on
    each certified sphere (the box kept for l_inf) never change the prediction."""
    from test_certify import _random_inside

    net, shape = _net("lenet", seed=3)
    assert "patches" in dict(certify.crown_plan(net)).values()
    x = np.random.default_rng(4).uniform(size=(24,) + shape).astype("float32")
    y = np.argmax(ops.convert_to_numpy(net(x)), axis=1)
    radius = certify.certified_radius(net, x, y, norm=norm, clip_min=0.0, clip_max=1.0)
    found = attacks.fmn(net, x, y, norm=norm, steps=200, clip_min=0.0,
                        clip_max=1.0).distances(norm)
    assert (radius > 0).all()
    assert (radius <= found * (1 + 1e-5)).all(), (radius / found).max()
    assert not _random_inside(net, x, y, radius, norm).any()


def test_crown_alone_is_sound_beside_the_intersected_bounds(monkeypatch):
    """`bounds.INTERSECT_INTERVALS = False` gives CROWN alone (as auto_LiRPA computes it; the
    comparison in benchmarks/crown_graphs_vs_lirpa.py): other margins than the intersected
    ones (tighter intermediate bounds change the ReLUs' adaptive slopes, so neither is always
    above the other), and like them never above a margin the network has in the ball."""
    net, shape = _net("lenet")
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (4, *shape)).astype("float32")
    y = np.argmax(ops.convert_to_numpy(net(x)), axis=1)
    both = certify.lower_margins(net, x, y, eps=0.05, norm="linf")
    monkeypatch.setattr(bounds, "INTERSECT_INTERVALS", False)
    certify._PROGRAMS.clear()  # the bound program is traced with the switch
    alone = certify.lower_margins(net, x, y, eps=0.05, norm="linf")
    certify._PROGRAMS.clear()
    finite = np.isfinite(both)
    assert np.isfinite(alone).sum() == finite.sum()
    assert np.abs(alone[finite] - both[finite]).max() > 1e-6, "the switch changed nothing"
    for _ in range(20):
        point = (x + rng.choice([-0.05, 0.05], size=x.shape)).astype("float32")
        logits = ops.convert_to_numpy(net(point)).astype(np.float64)
        met = (logits[np.arange(len(y)), y][:, None] - logits)[finite]
        assert (alone[finite] <= met + 1e-5).all() and (both[finite] <= met + 1e-5).all()


def test_the_steps_that_grow_with_the_batch_are_found_before_a_run():
    """bounds.growing_steps: the final margins' rows always (points x rivals x the widest
    map), and a layer only where one row (dense) or one channel (patches) per point is above
    the row budget; methods without rows have none."""
    net = lenet5()
    operations = chain(net)
    widest = max(math.prod(op.out_shape) for op in operations)
    small = bounds.growing_steps(operations, (28, 28, 1), 10, "crown")
    assert small == [("the margins", 10 * 10 * widest, "rows")]
    large = {what: (floats, layout) for what, floats, layout in
             bounds.growing_steps(operations, (28, 28, 1), 10_000, "crown")}
    assert large["the margins"] == (10_000 * 10 * widest, "rows")
    assert all(floats > bounds.ROW_BUDGET for floats, _ in large.values())
    assert all((layout == "patches") == ("as patches" in what)
               for what, (_, layout) in large.items())
    assert any("as patches" in what for what in large)
    assert bounds.growing_steps(operations, (28, 28, 1), 10_000, "crown-ibp") == [
        ("the margins", 10_000 * 10 * widest, "rows")]
    assert bounds.growing_steps(operations, (28, 28, 1), 10_000, "ibp") == []
