"""FAB (FAB-T): exact projections, the exact minimal distance on linear models, budgets."""

import keras
import numpy as np
import pytest

from keras_margin import attacks
from keras_margin.attacks import base
from keras_margin.attacks.fab import project_onto_hyperplane


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_onto_a_hyperplane_in_a_box_is_the_exact_optimum(norm):
    # Against an independent solver: the l_inf projection is a linear program, the l2 one a
    # quadratic program (scipy's HiGHS and SLSQP on 6 coordinates).
    so = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    dims, checked = 6, 0
    for _ in range(80):
        t = rng.uniform(0, 1, dims)
        w = rng.normal(size=dims) * (rng.random(dims) > 0.2)
        c = rng.normal() * rng.choice([0.1, 1.0, 3.0])
        d = project_onto_hyperplane(t[None], w[None], np.array([c]), 0.0, 1.0, norm)[0]
        assert (t + d >= -1e-12).all() and (t + d <= 1 + 1e-12).all()
        down = np.sign(c) * w  # <w, d> must change by -c: each coordinate's room that way
        reach = np.sum(np.where(down > 0, t, 1 - t) * np.abs(w))
        if abs(c) > reach:  # the box cannot reach the hyperplane: its nearest corner
            np.testing.assert_allclose(t + d, np.where(down > 0, 0.0, np.where(down < 0, 1.0,
                                                                                t)), atol=1e-12)
            continue
        assert abs(w @ d + c) < 1e-9
        bounds = [(-ti, 1 - ti) for ti in t]
        if norm == "linf":
            eye = np.eye(dims)
            a_ub = np.block([[eye, -np.ones((dims, 1))], [-eye, -np.ones((dims, 1))]])
            res = so.linprog(np.r_[np.zeros(dims), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * dims),
                             A_eq=np.r_[w, 0.0][None], b_eq=[-c], bounds=bounds + [(0, None)],
                             method="highs")
            optimum, got = res.fun, np.abs(d).max()
        else:
            res = so.minimize(lambda z: z @ z, np.zeros(dims), jac=lambda z: 2 * z,
                              constraints=[{"type": "eq", "fun": lambda z, w=w, c=c: w @ z + c,
                                            "jac": lambda z, w=w: w}],
                              bounds=bounds, method="SLSQP",
                              options={"ftol": 1e-15, "maxiter": 500})
            optimum, got = np.sqrt(res.fun), np.linalg.norm(d)
        assert got <= optimum * (1 + 1e-6) + 1e-9  # never longer than the optimum
        assert got >= optimum * (1 - 1e-6) - 1e-9  # and feasible, so not shorter
        checked += 1
    assert checked > 40


def test_projection_without_a_box_is_the_closed_form():
    rng = np.random.default_rng(1)
    t, w, c = rng.normal(size=(5, 9)), rng.normal(size=(5, 9)), rng.normal(size=5)
    d = project_onto_hyperplane(t, w, c, -np.inf, np.inf, "l2")
    np.testing.assert_allclose(d, -(c / (w ** 2).sum(1))[:, None] * w, rtol=1e-10)
    d = project_onto_hyperplane(t, w, c, -np.inf, np.inf, "linf")
    np.testing.assert_allclose(d, -(c / np.abs(w).sum(1))[:, None] * np.sign(w), rtol=1e-10)


def _linear(k, seed=0, n=40):
    """A k-class linear model on 4 x 4 images and each point's exact minimal l_inf and l2
    distance to another class (no box): min_j (f_y - f_j) / ||v_y - v_j||_dual."""
    rng = np.random.default_rng(seed)
    net = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(k)])
    kernel = rng.normal(size=(16, k)).astype("float32")
    bias = rng.normal(size=k).astype("float32")
    net.layers[-1].set_weights([kernel, bias])
    x = rng.uniform(0.3, 0.7, size=(n, 4, 4, 1)).astype("float32")
    f = x.reshape(n, -1).astype(np.float64) @ kernel.astype(np.float64) + bias
    y = f.argmax(1)
    exact = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for norm, dual in (("linf", 1), ("l2", 2)):
            gaps = [(f[np.arange(n), y] - f[:, j]) /
                    np.linalg.norm(kernel[:, y].T - kernel[:, j], ord=dual, axis=1)
                    for j in range(k)]
            gaps = np.where(np.arange(k)[:, None] == y[None], np.inf, np.array(gaps))
            exact[norm] = gaps.min(0)
    return net, x, y, exact


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [True, False])
def test_on_a_linear_model_fab_finds_the_exact_minimal_distance(norm, targeted):
    net, x, y, exact = _linear(4)
    result = attacks.fab(net, x, y, norm=norm, targeted=targeted, steps=30)
    # Points nearer than 1e-3 are ties within the strict-flip tolerance (base.STRICT_FLIP_EPS).
    clear = exact[norm] > 1e-3
    assert clear.sum() > 30 and result.success[clear].all()
    found = result.distances(norm)[clear]
    assert (found >= exact[norm][clear] * (1 - 1e-5)).all()  # nothing beats the exact distance
    # FAB's points overshoot the boundary by at most eta = 1.05 (measured: 1.0052 mostly).
    assert (found <= exact[norm][clear] * 1.05 + 1e-6).all()
    assert np.median(found / exact[norm][clear]) < 1.006
    logits = (x.reshape(len(x), -1).astype(np.float64) +
              result.perturbation.reshape(len(x), -1)) @ \
        np.asarray(net.layers[-1].kernel, np.float64) + np.asarray(net.layers[-1].bias)
    assert (base.flip_margins(logits, y)[result.success] > 0).all()  # so in float64 too


def test_with_a_budget_fab_fools_only_within_it_and_stays_in_the_box():
    net, x, y, exact = _linear(3, seed=2, n=60)
    eps = float(np.median(exact["linf"]))
    result = attacks.fab(net, x, y, eps=eps, clip_min=0.0, clip_max=1.0, steps=30)
    assert not result.success[exact["linf"] > eps].any()
    assert result.success[exact["linf"] < 0.95 * eps].all()
    assert (np.abs(result.perturbation).reshape(len(x), -1).max(1) <= eps * (1 + 1e-6)).all()
    adv = x + result.perturbation
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert not result.perturbation[~result.success].any()


@pytest.mark.parametrize("kwargs, argument", [
    ({"norm": "l1"}, "norm"), ({"alpha_max": 0.0}, "alpha_max"), ({"alpha_max": 1.5},
                                                                  "alpha_max"),
    ({"eta": 0.9}, "eta"), ({"beta": 0.0}, "beta"), ({"steps": 0}, "steps"),
    ({"start_eps": -1.0}, "start_eps"), ({"n_target_classes": 0}, "n_target_classes"),
    ({"eps": float("nan")}, "eps"), ({"eps": 0.0}, "eps")])
def test_bad_settings_are_refused_naming_the_argument(kwargs, argument):
    net, x, y, _ = _linear(3, n=4)
    with pytest.raises(ValueError, match=argument):
        attacks.fab(net, x, y, **kwargs)


def test_fab_saves_and_loads_as_json():
    attack = attacks.FAB(norm="l2", steps=20, start_eps=0.5)
    assert base.Attack.from_dict(attack.to_dict()) == attack
    assert attack.name == "fab_t_l2"
