"""One threat model: `ThreatModel`, the report keys of a budget, and the attacks' one final call
(issue 24)."""

import dataclasses
import json
import warnings

import numpy as np
import pytest
from conftest import linear_model

from keras_margin import ThreatModel, attacks, certify
from keras_margin.attacks.base import Attack, MinimumNormAttack
from keras_margin.evaluation import EvaluationPlan
from keras_margin.robustness_report import RobustnessReport
from keras_margin.threat import metric_key, parse_metric_key, resolve


@pytest.mark.parametrize("kwargs, name", [
    (dict(norm="l3"), "norm"), (dict(norm="linf", eps=0.0), "eps"),
    (dict(norm="linf", eps=-0.1), "eps"), (dict(norm="l2", eps=float("nan")), "eps"),
    (dict(norm="l2", eps=True), "eps"), (dict(norm="l2", eps="0.3"), "eps"),
    (dict(norm="linf", clip_min=float("inf")), "clip_min"),
    (dict(norm="linf", clip_max="1"), "clip_max"),
])
def test_a_bad_threat_model_is_refused_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"argument {name}:"):
        ThreatModel(**kwargs)


def test_a_reversed_box_is_refused():
    with pytest.raises(ValueError, match="clip_min=1.0 must be smaller than clip_max=0.0"):
        ThreatModel("linf", 0.1, 1.0, 0.0)


def test_the_value_its_box_its_budgets_and_its_json():
    threat = ThreatModel("linf", 0.3, 0, 1)
    assert (threat.eps, threat.clip_min, threat.clip_max) == (0.3, 0.0, 1.0)
    assert isinstance(threat.clip_min, float) and threat.box == (0.0, 1.0)
    assert str(threat) == "l_inf eps 0.3 inside [0, 1]"
    assert str(ThreatModel("l2")) == "l_2" and ThreatModel("l2").box == (-np.inf, np.inf)
    assert str(ThreatModel("l2", clip_min=0.0)) == "l_2 inside [0, inf]"
    assert threat.with_eps(None) == ThreatModel("linf", clip_min=0.0, clip_max=1.0)
    assert ThreatModel.from_dict(json.loads(json.dumps(threat.to_dict()))) == threat
    assert hash(threat) == hash(ThreatModel("linf", 0.3, 0.0, 1.0))  # a dict key
    with pytest.raises(dataclasses.FrozenInstanceError):
        threat.eps = 0.1
    assert threat.key("robust_accuracy") == "robust_accuracy_linf_0.3"
    with pytest.raises(ValueError, match="no budget"):
        ThreatModel("l2").key("robust_accuracy")


@pytest.mark.parametrize("eps", [0.3, 0.1, 8 / 255, 1e-5, 2.0, 0.03])
def test_a_budget_key_reads_back_as_the_budget_it_names(eps):
    key = metric_key("robust_accuracy", "linf", eps)
    norm, value, rest = parse_metric_key("robust_accuracy", key)
    assert (norm, rest) == ("linf", "") and value == float(f"{eps:g}")
    assert metric_key("robust_accuracy", norm, value) == key
    assert parse_metric_key("autoattack", metric_key("autoattack", "l2", eps) + "_fab-t") == (
        "l2", float(f"{eps:g}"), "fab-t")


@pytest.mark.parametrize("key", ["autoattack_accuracy_linf_0.1", "robust_accuracy", "rho_adv",
                                 "robust_accuracy_l3_0.1", "robust_accuracy_linf_x",
                                 "robust_accuracy_linf_-0.1", "robust_accuracy_linf_nan"])
def test_a_key_that_names_no_budget_reads_as_none(key):
    metric = "autoattack" if key.startswith("autoattack") else "robust_accuracy"
    assert parse_metric_key(metric, key) is None


def test_the_report_keys_its_budgets_by_value_and_reads_them_back():
    report = RobustnessReport(
        n=4, error=0.25, fgsm_eps=0.2, fgsm_error=0.5, rho_adv=0.1, deepfool_success_rate=1.0,
        distances=np.array([0.1, 0.2, 0.0, 0.3]),
        robust_accuracy={"linf": {0.1: 0.5, 8 / 255: 0.75}, "l2": {0.5: 0.25}},
        autoattack={"linf": {0.1: {"apgd": 1, "fab-t": 0, "square": 1, "square_only": 0,
                                   "robust": 1}}})
    flat = report.to_dict()
    assert flat["robust_accuracy_linf_0.0313725"] == 0.75
    assert flat["autoattack_accuracy_linf_0.1"] == 0.25
    back = RobustnessReport.from_dict(flat)
    assert back.robust_accuracy == {"linf": {0.1: 0.5, 0.0313725: 0.75}, "l2": {0.5: 0.25}}
    assert back.autoattack == report.autoattack
    with pytest.raises(dataclasses.FrozenInstanceError):  # built once, by evaluate_robustness
        report.rho_adv = 0.5


def test_the_plan_lists_its_budgets_as_threat_models():
    plan = EvaluationPlan(linf_eps=(0.1, 0.3), l2_eps=(1.0,), clip_min=0.0, clip_max=1.0)
    assert plan.threat_models == [ThreatModel("linf", 0.1, 0, 1), ThreatModel("linf", 0.3, 0, 1),
                                  ThreatModel("l2", 1.0, 0, 1)]
    assert [t.key("robust_accuracy") for t in plan.threat_models] == [
        "robust_accuracy_linf_0.1", "robust_accuracy_linf_0.3", "robust_accuracy_l2_1"]


def _problem(seed=3):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    x = rng.uniform(0.2, 0.8, size=(10, 5)).astype("float32")
    return linear_model(w, b), x, (x @ w.T + b).argmax(axis=1)


def test_a_threat_model_gives_the_attack_its_budget_and_box():
    model, x, y = _problem()
    threat = ThreatModel("linf", 0.5, 0.0, 1.0)
    for attack in (attacks.FGSM(), attacks.APGD(steps=5)):
        by_threat = attack(model, x, y, threat=threat)
        by_keywords = attack(model, x, y, eps=0.5, clip_min=0.0, clip_max=1.0)
        np.testing.assert_array_equal(by_threat.perturbation, by_keywords.perturbation)
        np.testing.assert_array_equal(by_threat.success, by_keywords.success)
        assert np.all(x + by_threat.perturbation >= 0) and np.all(x + by_threat.perturbation <= 1)
    fmn = attacks.FMN(norm="linf", steps=10)
    np.testing.assert_array_equal(
        fmn(model, x, y, threat=threat.with_eps(None)).perturbation,
        fmn(model, x, y, clip_min=0.0, clip_max=1.0).perturbation)


def test_options_by_position_still_work_with_a_deprecation_warning():
    model, x, y = _problem()
    with pytest.warns(DeprecationWarning, match="Passing eps, clip_min by position"):
        old = attacks.FGSM()(model, x, y, 0.5, 0.0)
    new = attacks.FGSM()(model, x, y, eps=0.5, clip_min=0.0)
    np.testing.assert_array_equal(old.perturbation, new.perturbation)
    with pytest.warns(DeprecationWarning, match="Passing target by position"):
        old = attacks.DeepFool(max_iter=5)(model, x, None, "prediction")
    new = attacks.DeepFool(max_iter=5)(model, x, target="prediction")
    np.testing.assert_array_equal(old.perturbation, new.perturbation)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attacks.FGSM()(model, x, y, eps=0.5)
    assert not [w for w in caught if "by position" in str(w.message)]  # the keyword form


@pytest.mark.parametrize("call, error, match", [
    (lambda a, m, x, y: attacks.FGSM()(m, x, y, eps=0.5, norm="l2"), TypeError,
     r"unexpected keyword arguments \['norm'\]"),
    (lambda a, m, x, y: attacks.FMN()(m, x, y, target="label"), TypeError,
     r"unexpected keyword arguments \['target'\]"),
    (lambda a, m, x, y: attacks.FGSM()(m, x, y, 0.5, eps=0.5), TypeError,
     "multiple values for argument 'eps'"),
    (lambda a, m, x, y: attacks.FMN()(m, x, y, 0.0, 1.0, 10, "auto", 0, 1), TypeError,
     "at most 5 options by position"),
    (lambda a, m, x, y: attacks.FGSM()(m, x, y, threat=ThreatModel("l2", 0.5)), ValueError,
     "argument threat: its norm is 'l2', but fgsm attacks in 'linf'"),
    (lambda a, m, x, y: attacks.FGSM()(m, x, y, eps=0.5, threat=ThreatModel("linf", 0.5)),
     ValueError, "not both"),
    (lambda a, m, x, y: attacks.FGSM()(m, x, y, threat=(0.5, "linf")), ValueError,
     "argument threat"),
    (lambda a, m, x, y: attacks.FGSM()(m, x, y), ValueError, "pass eps="),
    (lambda a, m, x, y: attacks.DDN()(m, x, y, eps=0.5), ValueError,
     "argument eps: 0.5. ddn is a minimum-norm attack"),
    (lambda a, m, x, y: attacks.DeepFool()(m, x, target="prediction",
                                            threat=ThreatModel("l2", 1.0)), ValueError,
     "takes no budget"),
    (lambda a, m, x, y: attacks.FGSM()(m, x, y, eps=1e-12), ValueError, "argument eps"),
    (lambda a, m, x, y: attacks.FGSM()(m, x, y, threat=ThreatModel("linf", 1e-12)), ValueError,
     "argument threat.eps"),
    (lambda a, m, x, y: attacks.FGSM()(m, x, y, eps=0.5, clip_min=1.0, clip_max=0.0),
     ValueError, "reversed"),
])
def test_a_bad_call_is_refused_naming_what_is_wrong(call, error, match):
    model, x, y = _problem()
    with pytest.raises(error, match=match):
        call(None, model, x, y)


def test_no_attack_defines_its_own_call():
    def every(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from every(sub)

    classes = set(every(Attack))
    assert {attacks.FGSM, attacks.FAB, attacks.DeepFool, attacks.AutoAttack} <= classes
    assert not [c.__name__ for c in classes if "__call__" in vars(c)]
    with pytest.raises(TypeError, match="defines __call__"):
        class Custom(MinimumNormAttack):  # noqa: F841
            def __call__(self, model, x, y):
                return None


def test_certify_takes_a_threat_model_too():
    model, x, y = _problem()
    threat = ThreatModel("linf", 0.05, 0.0, 1.0)
    np.testing.assert_array_equal(
        certify.certify(model, x, y, threat=threat),
        certify.certify(model, x, y, eps=0.05, norm="linf", clip_min=0.0, clip_max=1.0))
    np.testing.assert_array_equal(
        certify.certified_radius(model, x, y, threat=ThreatModel("l2"), steps=8),
        certify.certified_radius(model, x, y, norm="l2", steps=8))
    with pytest.raises(ValueError, match="not both"):
        certify.certify(model, x, y, eps=0.05, threat=threat)
    with pytest.raises(ValueError, match="budget-free"):
        certify.certified_radius(model, x, y, threat=threat)
    with pytest.raises(ValueError, match="no budget eps"):
        certify.certify(model, x, y, threat=ThreatModel("linf"))
    with pytest.raises(ValueError, match="argument eps: None"):
        certify.certify(model, x, y)


def test_a_bare_norm_is_refused_by_the_evaluation_as_ambiguous():
    from keras_margin.callbacks import RobustnessCallback

    model, x, y = _problem()
    with pytest.raises(ValueError, match=r"Ambiguous keyword argument norm='linf'.*"
                                         r"deepfool=attacks.DeepFool\(norm='linf'\)"):
        EvaluationPlan.resolve(None, {"norm": "linf"})
    with pytest.raises(ValueError, match="Ambiguous keyword argument norm"):
        RobustnessCallback(x, y, norm="linf")
    plan = EvaluationPlan.resolve(None, {"max_iter": 7})  # DeepFool's other settings still go
    assert plan.deepfool == attacks.DeepFool(max_iter=7)


def test_one_resolver_decides_the_threat_of_attacks_and_certify_alike():
    """`threat.resolve` is the one place that picks threat= or the separate arguments."""
    threat = ThreatModel("l2", 0.5, 0.0, 1.0)
    assert resolve(threat) == (0.5, "l2", 0.0, 1.0)
    assert resolve(None, 0.1, None, 0.0, None) == (0.1, "linf", 0.0, None)
    assert resolve(None, 0.1, "l1", owner=("FGSM", "linf"))[1] == "linf"  # the attack's
    with pytest.raises(ValueError, match=r"as eps=, clip_max=, not both"):
        resolve(threat, 0.1, None, None, 1.0)
    with pytest.raises(ValueError, match="its norm is 'l2', but FGSM attacks in 'linf'"):
        resolve(threat, owner=("FGSM", "linf"))
    with pytest.raises(ValueError, match="argument eps: None"):
        resolve(None, budget=True)
    with pytest.raises(ValueError, match="has a budget"):
        resolve(threat, budget=False)
    with pytest.raises(ValueError, match="argument threat: 'linf'"):
        resolve("linf")
    model, x, y = _problem()  # the attacks and certify answer alike through it
    for call in (lambda: attacks.FGSM()(model, x, y, eps=0.1, threat=ThreatModel("linf", 0.1)),
                 lambda: certify.certify(model, x, y, eps=0.1, threat=ThreatModel("linf", 0.1))):
        with pytest.raises(ValueError, match=r"either in threat= or as eps=, not both"):
            call()


def test_adversarial_training_and_vat_take_and_give_their_threat_model():
    import keras

    from keras_margin.training import AdversarialTrainingModel, VATModel

    model, x, y = _problem()
    threat = ThreatModel("l2", 0.3, 0.0, 1.0)
    by_threat = AdversarialTrainingModel(model, threat=threat)
    by_arguments = AdversarialTrainingModel(model, eps=0.3, norm="l2", clip=(0.0, 1.0))
    assert by_threat.threat == by_arguments.threat == threat
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(by_threat.adversarial_examples(x, y)),
        keras.ops.convert_to_numpy(by_arguments.adversarial_examples(x, y)))
    assert AdversarialTrainingModel(model).threat == ThreatModel("linf", 0.2)  # the paper's
    with pytest.raises(ValueError, match="either in threat= or as eps=, not both"):
        AdversarialTrainingModel(model, eps=0.1, threat=threat)
    with pytest.raises(ValueError, match="no budget eps"):
        AdversarialTrainingModel(model, threat=ThreatModel("linf"))
    with pytest.raises(ValueError, match="whole box"):
        AdversarialTrainingModel(model, threat=ThreatModel("linf", 0.1, clip_min=0.0))
    assert VATModel(model, threat=ThreatModel("l2", 1.5)).eps == 1.5
    assert VATModel(model).threat == ThreatModel("l2", 2.0)
    for bad in (ThreatModel("linf", 1.0), ThreatModel("l2", 1.0, 0.0, 1.0)):
        with pytest.raises(ValueError, match="argument threat.*l2 ball with no input box"):
            VATModel(model, threat=bad)
