"""One attack interface: the two base classes, configs that round-trip, names and norms."""

import json

import numpy as np
import pytest
from conftest import linear_model

from keras_margin import attacks
from keras_margin.attacks.base import Attack, BudgetAttack, MinimumNormAttack

MINIMUM_NORM = [attacks.DeepFool(max_iter=7, step_clip=None), attacks.FMN(norm="linf", steps=9),
                attacks.FMN(norm="l2", init=attacks.DeepFool(max_iter=5)),
                attacks.DDN(steps=11, gamma=0.1)]
BUDGET = [attacks.FGSM(), attacks.FGSM(norm="l2"),
          attacks.APGD(loss="dlr", targeted=True, steps=13)]


@pytest.mark.parametrize("attack", MINIMUM_NORM + BUDGET, ids=lambda a: a.name)
def test_configs_round_trip_through_json(attack):
    data = json.loads(json.dumps(attack.to_dict()))
    assert Attack.from_dict(data) == attack
    assert type(attack).from_config(attack.get_config()) == attack
    assert attack.norm in ("l2", "linf", "l1")


def test_the_kinds_and_the_names():
    assert all(isinstance(a, MinimumNormAttack) for a in MINIMUM_NORM)
    assert all(isinstance(a, BudgetAttack) for a in BUDGET)
    assert [a.name for a in MINIMUM_NORM] == ["deepfool", "fmn_linf", "fmn_l2", "ddn"]
    assert [a.name for a in BUDGET] == ["fgsm", "fgm_l2", "apgd_t_dlr_linf"]
    assert attacks.DDN().norm == "l2"


def test_fmn_starts_from_an_attack_object():
    assert attacks.FMN(init="deepfool").init == attacks.DeepFool()
    assert attacks.FMN(norm="linf", init="deepfool").init == attacks.DeepFool(norm="linf")
    with pytest.raises(ValueError, match="init"):
        attacks.FMN(init="pgd")
    with pytest.raises(ValueError, match="init"):
        attacks.FMN(init=attacks.APGD())  # a budgeted attack cannot give a start


@pytest.mark.slow
def test_every_attack_is_called_alike_on_a_linear_model():
    """Both kinds through their base class's __call__: same inputs, verified results."""
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    x = rng.uniform(0.2, 0.8, size=(12, 5)).astype("float32")
    y = (x @ w.T + b).argmax(axis=1)
    model = linear_model(w, b)
    for attack in MINIMUM_NORM:
        result = attack(model, x, y, clip_min=0.0, clip_max=1.0)
        assert result.perturbation.shape == x.shape and result.success.dtype == bool
        assert np.all(x + result.perturbation >= 0) and np.all(x + result.perturbation <= 1)
    for attack in (attacks.FGSM(), attacks.APGD(steps=5)):
        result = attack(model, x, y, eps=0.5, clip_min=0.0, clip_max=1.0)
        assert np.abs(result.perturbation).max() <= 0.5 + 1e-6
        flipped = ((x + result.perturbation) @ w.T + b).argmax(axis=1) != y
        np.testing.assert_array_equal(result.success, flipped)
    with pytest.raises(ValueError, match="eps"):
        attacks.FGSM()(model, x, y, eps=-0.1)


def test_no_attack_imports_another_attacks_module():
    import ast
    import os

    import keras_margin.attacks as package

    folder = os.path.dirname(package.__file__)
    own = {"apgd", "ddn", "deepfool", "fgsm", "fmn"}
    for name in own:
        with open(os.path.join(folder, f"{name}.py")) as f:
            tree = ast.parse(f.read())
        imported = {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("keras_margin.attacks.")}
        assert not imported & (own - {name}), (name, imported)


@pytest.mark.parametrize("attack", MINIMUM_NORM + BUDGET + [attacks.Square(n_queries=10),
                                                           attacks.AutoAttack(), attacks.FAB()],
                         ids=lambda a: a.name)
def test_keras_serialization_finds_every_attack_by_its_registered_name(attack):
    import keras

    data = keras.saving.serialize_keras_object(attack)
    assert data["registered_name"] == f"keras_margin>{type(attack).__name__}"
    assert keras.saving.deserialize_keras_object(json.loads(json.dumps(data))) == attack
    with pytest.raises(ValueError, match=r"Unknown attack class 'PGD'. Expected one of \['APGD'"):
        Attack.from_dict({"class_name": "PGD", "config": {}})


def _every_attack():
    """One small instance of every registered attack class, by the Keras registry (a new
    attack class joins the contract test without editing it)."""
    import keras

    small = {"DeepFool": dict(max_iter=10), "FMN": dict(steps=20), "DDN": dict(steps=20),
             "FAB": dict(steps=10, n_target_classes=2), "FGSM": {},
             "APGD": dict(steps=10), "Square": dict(n_queries=30),
             "AutoAttack": dict(version="custom", attacks=("apgd-ce", "fab-t", "square"))}
    classes = {key.split(">", 1)[1]: cls for key, cls in keras.saving.get_custom_objects().items()
               if key.startswith("keras_margin>") and isinstance(cls, type)
               and issubclass(cls, Attack)}
    assert set(classes) == set(small), "a new attack class: give it small settings here"
    return [classes[name](**settings) for name, settings in sorted(small.items())]


@pytest.mark.parametrize("attack", _every_attack(), ids=lambda a: type(a).__name__)
def test_every_attack_keeps_the_contract_through_one_call(attack):
    """The default suite's contract test: every attack, called through Attack.__call__ with a
    ThreatModel, returns verified per-point results inside the box (and the budget)."""
    import keras

    from keras_margin import ThreatModel

    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(3, 16)), rng.normal(size=3)
    x = rng.uniform(0.2, 0.8, size=(8, 4, 4, 1)).astype("float32")
    y = (x.reshape(8, -1) @ w.T + b).argmax(axis=1)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    model.layers[-1].set_weights([w.T.astype("float32"), b.astype("float32")])
    budget = isinstance(attack, BudgetAttack)
    threat = ThreatModel(attack.norm, 0.3 if budget else None, 0.0, 1.0)
    result = attack(model, x, y, threat=threat, batch_size=4)
    assert result.perturbation.shape == x.shape and result.success.shape == (8,)
    assert result.success.dtype == bool and result.iterations.shape == (8,)
    x_adv = x + result.perturbation
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    flipped = (x_adv.reshape(8, -1).astype(np.float64) @ w.T + b).argmax(axis=1) != y
    assert np.all(flipped[result.success])  # every success is a flip, checked in float64
    if budget:
        assert np.all(result.distances(attack.norm)[result.success] <= 0.3 * (1 + 1e-5))
    assert result.success.any(), "too weak to test: no point fooled"
