"""Computes the library's numbers on one Keras backend for test_backends.py (run as a script).

    KERAS_BACKEND=jax python tests/backend_worker.py IN.npz OUT.npz [--no-tensorflow]

IN.npz holds the weights of a small tanh MLP, inputs and labels; OUT.npz gets the margin
sensitivity and its weight gradients, DeepFool and FMN distances, the weights after three
MarginModel SGD steps, and the predictions of a `.keras` file saved by another backend. With
--no-tensorflow, importing TensorFlow fails, as on a machine without it.
"""

import os
import sys

if "--no-tensorflow" in sys.argv:
    # As if not installed: `import tensorflow` raises, importlib.util.find_spec returns None.
    sys.modules["tensorflow"] = None

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_margin import MarginModel, attacks, backend, margin_sensitivity  # noqa: E402


def mlp(weights):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(4)])
    model.set_weights(weights)
    return model


def main(src: str, out: str) -> None:
    data = np.load(src)
    weights = [data[f"w{i}"] for i in range(4)]
    x, y = data["x"], data["y"]
    model = mlp(weights)
    result = {"backend": keras.backend.backend()}
    eps = margin_sensitivity(model, x, y, norm="l2", rival="jacobian")
    result["sensitivity"] = keras.ops.convert_to_numpy(keras.ops.stop_gradient(eps))
    _, grads = backend.value_and_weight_grad(
        lambda: keras.ops.mean(margin_sensitivity(model, x, y)), model.trainable_variables)
    for i, g in enumerate(grads):
        result[f"grad{i}"] = keras.ops.convert_to_numpy(keras.ops.stop_gradient(g))
    box = {"clip_min": -3.0, "clip_max": 3.0}
    result["deepfool"] = attacks.deepfool(model, x, y, **box).distances("l2")
    result["fmn"] = attacks.fmn(model, x, y, steps=20, **box).distances("l2")
    trainer = MarginModel(mlp(weights), C=0.1, loss="hinge")
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    for _ in range(3):
        trainer.train_on_batch(x, y)
    for i, w in enumerate(trainer.base.get_weights()):
        result[f"trained{i}"] = w
    if "saved" in data.files:
        loaded = keras.models.load_model(str(data["saved"]))
        result["loaded_predictions"] = keras.ops.convert_to_numpy(loaded.predict(x, verbose=0))
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
