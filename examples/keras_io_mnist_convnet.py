"""keras-io's "Simple MNIST convnet" (F. Chollet; keras-io examples/vision/mnist_convnet.py) with
margin training, the robustness callback and a certificate added. The model, optimizer, batch
size, epochs and validation split are that script's; every line that differs from it carries a
`# keras-margin:` comment saying why.

    python examples/keras_io_mnist_convnet.py                  # offline: see the data note
    python examples/keras_io_mnist_convnet.py --data-dir DIR   # MNIST's IDX .gz files in DIR

Data: keras-io downloads MNIST with keras.datasets.mnist.load_data(); here MNIST comes from DIR,
else tensorflow-datasets where it works at once, else the 10,000 real digits embedded in
keras-margin (said so in one line), so that the script also runs offline.
"""

# ruff: noqa: I001 - keras_margin first: it imports TensorFlow without its start-up noise
import argparse

import numpy as np

from keras_margin import MarginModel, certify, datasets
from keras_margin.callbacks import RobustnessCallback
import keras
from keras import layers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with MNIST IDX (.gz) files")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (keras-io: 15)")
    parser.add_argument("--C", type=float, default=0.1, help="weight of the margin penalty")
    parser.add_argument("--robustness-samples", type=int, default=500,
                        help="test digits the callback attacks after every epoch")
    parser.add_argument("--certify-samples", type=int, default=100,
                        help="test digits certified at the end")
    args = parser.parse_args(argv)

    num_classes = 10
    input_shape = (28, 28, 1)

    # keras-margin: an offline loader; images in [0, 1] of shape (28, 28, 1), integer labels
    # (the trainers take class indices, so keras-io's to_categorical line goes).
    (x_train, y_train), _, (x_test, y_test) = datasets.load("mnist", data_dir=args.data_dir)
    print(f"x_train shape: {x_train.shape}; {len(x_train)} train, {len(x_test)} test samples")

    base = keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes),  # keras-margin: logits (keras-io: activation="softmax")
    ])
    model = MarginModel(base, C=args.C)  # keras-margin: the margin penalty around the model
    base.summary()

    batch_size = 128
    epochs = args.epochs

    # keras-margin: no loss= here; MarginModel's data loss (the multiclass hinge) works on logits.
    model.compile(optimizer="adam", metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs,
                        validation_split=0.1,
                        # keras-margin: DeepFool's rho_adv and the FGSM error on test digits
                        # every epoch, in the History as val_rho_adv and val_fgsm_error
                        callbacks=[RobustnessCallback(x_test, y_test,
                                                      max_samples=args.robustness_samples)])

    # keras-margin: evaluate also reports data_loss and margin_sensitivity, so by name
    score = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print("Test loss:", score["loss"])
    print("Test accuracy:", score["accuracy"])

    # keras-margin: a proof. Per digit, the l2 distance within which CROWN proves the
    # prediction cannot change (0 where misclassified); inside the pixel box [0, 1].
    n = args.certify_samples
    radius = certify.certified_radius(base, x_test[:n], y_test[:n], norm="l2", clip_min=0.0,
                                      clip_max=1.0)
    print(f"Certified l2 radius over {n} test digits: median {np.median(radius):.3f}, "
          f"certified at 0.1: {np.mean(radius >= 0.1):.0%}")
    return history, score, radius


if __name__ == "__main__":
    main()
