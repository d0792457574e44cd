"""The rival search in bfloat16 picks float32's rival, or a near-tie of it (issue 18's rule)."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, small_mlp, to_numpy

from keras_margin import MarginModel, architectures, datasets, margin_sensitivity
from keras_margin.jacobian import (
    flat_norm,
    logits_and_pullback,
    margin_gradients,
    rival_classes,
)
from keras_margin.sensitivity import low_precision_pullback, select_rival


def _agreement(model, x, y, dtype="bfloat16"):
    """(share of samples whose low-precision rival is float32's, per sample the float32 norm
    of the low-precision choice over the best float32 norm)."""
    x, labels = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y.astype("int32"))
    logits, pullback = logits_and_pullback(model, x)
    rivals = rival_classes(logits, labels)
    norms = to_numpy(flat_norm(margin_gradients(pullback, labels, rivals, 10), "l2", 2))
    exact = to_numpy(select_rival(pullback, logits, labels))
    low = to_numpy(select_rival(low_precision_pullback(model, x, False, dtype), logits,
                                labels))
    rivals = to_numpy(rivals)
    chosen = norms[np.arange(len(y)), np.argmax(rivals == low[:, None], axis=1)]
    return float((exact == low).mean()), chosen / norms.max(axis=1)


@pytest.mark.slow
@pytest.mark.xfail(BACKEND == "jax", strict=False, reason=(
    "measured in CI on JAX's CPU backend: 98.1 % the same rival, under the 98.5 % rule (it holds "
    "on TensorFlow); the README says to keep rival_dtype off on JAX"))
def test_bfloat16_rivals_agree_with_float32_on_a_trained_mlp():
    """MLP 1000-1000-1000 trained one epoch on the embedded MNIST sample; 1,000 held-out
    digits. Rule: >= 98.5 % the same rival, the others within 1 % of the best float32 norm."""
    (x, y), _, (x_test, y_test) = datasets.load("mnist", validation=0)
    model = MarginModel(architectures.mlp(), C=0.1)
    model.compile(optimizer="adam")
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    same, ratio = _agreement(model.base, x_test[:1000], y_test[:1000])
    assert same >= 0.985, same
    differing = ratio[ratio < 1]
    assert not len(differing) or np.median(differing) >= 0.99, np.sort(differing)


def test_the_bfloat16_search_is_an_option_of_the_model_and_the_function():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 4, 32)
    base = small_mlp()
    exact = to_numpy(margin_sensitivity(base, x, y))
    low = to_numpy(margin_sensitivity(base, x, y, rival_dtype="bfloat16"))
    tensor_x = keras.ops.convert_to_tensor(x)
    logits, pullback = logits_and_pullback(base, tensor_x)
    labels = keras.ops.convert_to_tensor(y.astype("int32"))
    same = to_numpy(select_rival(pullback, logits, labels)) == to_numpy(select_rival(
        low_precision_pullback(base, tensor_x, False, "bfloat16"), logits, labels))
    assert same.mean() > 0.8
    # Where the rival is the same, the penalty is float32's own (not a bfloat16 number).
    np.testing.assert_allclose(low[same], exact[same], rtol=1e-5)
    assert all(layer.dtype_policy.name == "float32" for layer in base.layers)  # restored
    model = MarginModel(base, C=0.1, rival_dtype="bfloat16")
    model.compile(optimizer="adam")
    assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"][0])
    assert MarginModel.from_config(model.get_config()).rival_dtype == "bfloat16"
    with pytest.raises(ValueError, match="rival_dtype"):
        MarginModel(base, rival="logit", rival_dtype="bfloat16")
    with pytest.raises(ValueError, match="rival_dtype"):
        margin_sensitivity(base, x, y, rival_dtype="int8")
