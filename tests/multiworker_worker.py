"""One worker of the two-process MultiWorkerMirroredStrategy test (run by test_scale.py).

Trains MarginModel a few steps on a fixed global batch and saves its initial and final weights.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_margin import MarginModel  # noqa: E402


def main(out: str) -> None:
    keras.config.disable_traceback_filtering()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 4, 64)
    with strategy.scope():
        base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                 keras.layers.Dense(4)])
        model = MarginModel(base, C=0.1)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    initial = [w.numpy() for w in model.trainable_weights]
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).with_options(options)
    history = model.fit(data, epochs=2, verbose=0).history
    final = [w.numpy() for w in model.trainable_weights]
    np.savez(out, **{f"initial_{i}": w for i, w in enumerate(initial)},
             **{f"final_{i}": w for i, w in enumerate(final)},
             loss=np.asarray(history["loss"], float),
             sensitivity=np.asarray(history["margin_sensitivity"], float))


if __name__ == "__main__":
    main(sys.argv[1])
