"""Every example in a public docstring runs (issue 24): each `>>>` block of a module, class or
function of keras_margin, on a small MNIST model; where the docstring shows an output, the
value's repr must match it."""

import doctest
import importlib
import inspect
import pkgutil

import keras
import numpy as np
import pytest
from conftest import find_mnist, trained_mnist_mlp

import keras_margin

# Examples that name a data folder run on the project's MNIST files where they are found.
DATA_DIR = '"~/data/mnist"'


def _docstrings():
    for info in pkgutil.walk_packages(keras_margin.__path__, "keras_margin."):
        if info.name.startswith("keras_margin.backend."):
            continue  # one backend's module imports only under that backend
        module = importlib.import_module(info.name)
        yield info.name, module, module.__doc__
        for name, value in vars(module).items():
            if getattr(value, "__module__", None) != info.name or name.startswith("_"):
                continue
            if inspect.isclass(value) or inspect.isfunction(value):
                yield f"{info.name}.{name}", module, value.__doc__


def _examples():
    parser = doctest.DocTestParser()
    for where, module, doc in _docstrings():
        examples = parser.get_examples(doc or "")
        if examples:
            yield pytest.param(module, examples, id=where)


@pytest.fixture(scope="module")
def namespace():
    model, x_test, y_test = trained_mnist_mlp((32,), epochs=1)
    from keras_margin import datasets

    (x, y), _, _ = datasets.load("mnist", validation=0)
    return dict(keras=keras, np=np, model=model, x=x[:300], y=y[:300], x_val=x_test[:50],
                y_val=y_test[:50], x_test=x_test[:100], y_test=y_test[:100],
                ThreatModel=keras_margin.ThreatModel)


@pytest.mark.slow
@pytest.mark.parametrize("module, examples", list(_examples()))
def test_every_docstring_example_runs(module, examples, namespace):
    scope = {**vars(module), **namespace}
    scope["model"] = keras.models.clone_model(namespace["model"])  # a fit must not leak
    scope["model"].set_weights(namespace["model"].get_weights())
    scope["model"].compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for example in examples:
        source = example.source
        if DATA_DIR in source:
            folder = find_mnist("mnist")
            if folder is None:
                pytest.skip("no MNIST files here for an example that loads them")
            source = source.replace(DATA_DIR, repr(folder))
        try:
            code = compile(source, module.__name__, "eval")
        except SyntaxError:
            exec(compile(source, module.__name__, "exec"), scope)
            continue
        value = eval(code, scope)
        if example.want:
            assert repr(value) == example.want.strip(), (source, value)
