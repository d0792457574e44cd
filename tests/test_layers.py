"""The package's floors: no module imports a module on a floor above its own (issue 24).

Read from the source (every import, those inside functions too), not by running it. The floors,
bottom up: the helpers with no keras-margin imports; the backend seam; the Jacobian rows; the
gradients at hidden layers (taps); the argument checks; the checked inputs of attacks and
certificates; the method's core (norms, the gradient step, the margin sensitivity), the
architectures and the data; the bound propagation; the trainers; the attacks; the certified bounds;
the evaluation; the callbacks; the public package; the experiments. Trainers stand below every
measurement.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "keras_margin")

FLOORS = [
    ("keras_margin._quiet", "keras_margin._keras_compat", "keras_margin.losses",
     "keras_margin.robustness_report", "keras_margin.threat"),
    ("keras_margin.backend",),
    ("keras_margin.jacobian",),
    ("keras_margin.taps",),  # gradients at hidden layers' outputs, beside the Jacobian rows
    ("keras_margin._validation",),
    ("keras_margin.inputs",),  # the checked inputs: below the attacks and certify alike
    ("keras_margin.norms", "keras_margin.gradient_steps", "keras_margin.sensitivity",
     "keras_margin.architectures", "keras_margin.datasets"),
    ("keras_margin.propagation",),  # the bounds: certified training and certify share them
    ("keras_margin.training",),
    ("keras_margin.attacks",),
    ("keras_margin.certify",),
    ("keras_margin.evaluation",),
    ("keras_margin.callbacks",),
    ("keras_margin",),  # the package's __init__: the public names
    ("keras_margin.experiments",),
]


def floor(module: str) -> int:
    """The floor of a dotted module name: its longest listed prefix's."""
    best, level = -1, None
    for i, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, level = len(name), i
    assert level is not None, f"{module} is on no floor: add it to FLOORS"
    return level


def modules():
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                yield relative.removesuffix(".__init__"), path


def imports(path: str, module: str):
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:  # `from keras_margin import backend` names a module
                yield f"{base}.{alias.name}" if base == "keras_margin" else base


def test_no_module_imports_one_on_a_floor_above_it():
    upward = []
    for module, path in modules():
        for target in imports(path, module):
            if target.split(".")[0] != "keras_margin" or module == "keras_margin":
                continue
            if floor(target) > floor(module):
                upward.append(f"{module} (floor {floor(module)}) imports {target} "
                              f"(floor {floor(target)})")
    assert upward == []


def test_proofs_do_not_lean_on_attack_internals():
    leaning = [f"{module} imports {target}" for module, path in modules()
               if module.startswith("keras_margin.certify")
               for target in imports(path, module) if target.startswith("keras_margin.attacks")]
    assert leaning == []


def test_the_argument_checks_run_no_model():
    """Checks of values and layers live in _validation; what calls the model (probe_model,
    predictions) lives in inputs.py."""
    path = os.path.join(ROOT, "_validation.py")
    assert "keras_margin.jacobian" not in list(imports(path, "keras_margin._validation"))
    with open(path) as f:
        assert "call_logits" not in f.read()


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # The test itself can fail: a trainer importing the callbacks (as training/base.py did).
    fake = tmp_path / "keras_margin" / "training"
    fake.mkdir(parents=True)
    (fake / "base.py").write_text("from keras_margin.callbacks import with_helpers\n")
    found = list(imports(str(fake / "base.py"), "keras_margin.training.base"))
    assert found == ["keras_margin.callbacks"]
    assert floor(found[0]) > floor("keras_margin.training.base")


@pytest.mark.slow
def test_importing_the_trainers_loads_no_measurement():
    import subprocess
    import sys

    code = ("import sys, keras_margin.training; print(sorted(m for m in sys.modules if "
            "m.startswith(('keras_margin.attacks', 'keras_margin.evaluation', "
            "'keras_margin.certify', 'keras_margin.callbacks'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(ROOT)).stdout
    assert out.strip().splitlines()[-1] == "[]"
