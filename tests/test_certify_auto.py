"""method="auto": CROWN's plan while the rows' cost stays within a budget, intervals beyond."""

import keras
import numpy as np
import pytest
from test_certify_graphs import _small_resnet

from keras_margin import architectures, certify
from keras_margin.experiments.report import bound_routes
from keras_margin.propagation import bounds

BOX = dict(clip_min=0.0, clip_max=1.0)


def _costs(operations):
    crown = bounds.crown_routes(operations, "crown")
    return crown, {i: bounds.route_cost(operations[:i + 1], r) for i, r in crown.items()}


@pytest.mark.parametrize("make", [architectures.lenet5, architectures.mlp])
def test_auto_is_crown_on_lenet5_and_the_mlp(make):
    """The README's claim: the default budget pays for every layer of LeNet-5 and the MLP."""
    operations = certify.chain_of(make())
    crown, costs = _costs(operations)
    assert 0 < sum(costs.values()) <= bounds.AUTO_BUDGET
    assert bounds.crown_routes(operations, "auto") == crown


def test_auto_is_crown_within_the_budget_and_intervals_beyond(monkeypatch):
    """Within the budget every layer routes as "crown" routes it; with a budget that pays for
    the first three costly layers, exactly those (and the free exact ones) keep CROWN."""
    model = _small_resnet()
    operations = certify.chain_of(model)
    crown, costs = _costs(operations)
    assert sum(costs.values()) <= bounds.AUTO_BUDGET
    assert certify.crown_plan(model, "auto") == certify.crown_plan(model)
    paid = [i for i in crown if costs[i] > 0]
    assert len(paid) > 3
    monkeypatch.setattr(bounds, "AUTO_BUDGET", sum(costs[i] for i in paid[:3]))
    auto = bounds.crown_routes(operations, "auto")
    assert auto == {i: r if costs[i] == 0 or i in paid[:3] else "interval-cost"
                    for i, r in crown.items()}
    with pytest.raises(ValueError, match="method"):
        certify.crown_plan(model, "ibp")


@pytest.mark.parametrize("norm,eps", [("linf", 0.01), ("l2", 0.05)])
def test_auto_beyond_its_budget_is_sound_and_between_intervals_and_crown(monkeypatch, norm,
                                                                         eps):
    """With the budget spent after one layer, "auto" bounds lie at or above crown-ibp's (its
    intermediate bounds are at least as tight: each is the better of CROWN's and the
    interval's) and below every margin the network takes at points of the ball; with the
    default budget it is "crown" (to the rounding of two compiled programs)."""
    model = _small_resnet()
    rng = np.random.default_rng(3)
    x = rng.uniform(0.2, 0.8, size=(6, 8, 8, 1)).astype("float32")
    y = np.argmax(keras.ops.convert_to_numpy(model(x)), axis=1)
    box = BOX if norm == "linf" else {}
    full = certify.lower_margins(model, x, y, eps=eps, norm=norm, method="auto", **box)
    crown = certify.lower_margins(model, x, y, eps=eps, norm=norm, method="crown", **box)
    np.testing.assert_allclose(full, crown, rtol=1e-12, atol=1e-12)  # compiled apart
    operations = certify.chain_of(model)
    _, costs = _costs(operations)
    monkeypatch.setattr(bounds, "AUTO_BUDGET", min(c for c in costs.values() if c > 0))
    assert "interval-cost" in dict(certify.crown_plan(model, "auto")).values()
    auto = certify.lower_margins(model, x, y, eps=eps, norm=norm, method="auto", **box)
    ibp = certify.lower_margins(model, x, y, eps=eps, norm=norm, method="crown-ibp", **box)
    finite = np.isfinite(auto)
    assert (auto[finite] >= ibp[finite] - 1e-9).all()
    assert np.abs(auto[finite] - crown[finite]).max() > 1e-6  # a new program, not a cached one
    for _ in range(20):
        delta = rng.normal(size=x.shape)
        if norm == "linf":
            point = np.clip(x + eps * np.sign(delta), 0, 1)
        else:
            flat = delta.reshape(len(x), -1)
            point = x + eps * (flat / np.linalg.norm(flat, axis=1, keepdims=True)
                               ).reshape(x.shape)
        logits = keras.ops.convert_to_numpy(model(point.astype("float32"))).astype(np.float64)
        margins = logits[np.arange(len(x)), y][:, None] - logits
        assert (auto[finite] <= margins[finite] + 1e-5).all()


def test_layers_beyond_the_budget_are_not_memory_checked(monkeypatch):
    """A layer "auto" leaves to intervals has no rows to hold: only the margins' step is
    checked, where "crown" also checks every layer above a (here tiny) row budget."""
    operations = certify.chain_of(_small_resnet())
    monkeypatch.setattr(bounds, "ROW_BUDGET", 1)
    monkeypatch.setattr(bounds, "AUTO_BUDGET", 0)
    crown = bounds.growing_steps(operations, (8, 8, 1), 10, "crown")
    auto = bounds.growing_steps(operations, (8, 8, 1), 10, "auto")
    assert [what for what, *_ in auto] == ["the margins"]
    assert len(crown) > 1 and crown[0] == auto[0]


def test_the_report_names_the_layers_auto_left_to_intervals():
    result = {"certify_method": "auto", "certify_route_conv1": "exact",
              "certify_route_conv2": "patches", "certify_route_fc1": "interval-cost"}
    assert bound_routes(result) == "intervals at fc1"
    result["certify_route_fc1"] = "dense"
    assert bound_routes(result) == "CROWN at every layer"
    assert bound_routes({"certify_method": "crown-ibp"}) == "crown-ibp"
