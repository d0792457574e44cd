"""Train a margin-maximized MLP on MNIST and measure its robustness (the README's first command).

    python examples/quickstart.py                                   # MNIST from tensorflow-datasets
    python examples/quickstart.py --data-dir ../shared/data/mnist-t10k   # local IDX files, offline

With a folder holding only MNIST's test files (t10k-*), it trains on 8,000 of those images and
evaluates on the other 2,000: a quick stand-in for the paper's 50k/10k/10k split, said so in
the output.
"""

import argparse

import keras

import keras_margin
from keras_margin import MarginModel, architectures, datasets, evaluate_robustness
from keras_margin.callbacks import RobustnessCallback
from keras_margin.experiments import epoch_decay


def load(data_dir):
    try:
        (x, y), (x_val, y_val), (x_test, y_test) = datasets.load("mnist", data_dir=data_dir)
        return (x, y), (x_val, y_val), (x_test, y_test), "MNIST 50k/10k/10k"
    except datasets.DatasetNotFoundError:
        if data_dir is None:
            raise
    (x, y), (x_test, y_test) = datasets.split_test_set("mnist", data_dir, train=8000)
    return (x, y), (x_test, y_test), (x_test, y_test), \
        "only MNIST's test set was found: 8,000 images to train, 2,000 to evaluate"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with MNIST IDX (.gz) files")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--norm", choices=["l2", "l1"], default="l2")
    parser.add_argument("--rival", choices=["jacobian", "logit"], default="jacobian")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    (x, y), (x_val, y_val), (x_test, y_test), protocol = load(args.data_dir)
    print(f"keras-margin {keras_margin.__version__}: {protocol}")

    model = MarginModel(architectures.mlp(), C=args.C, norm=args.norm, rival=args.rival)
    model.compile(optimizer=keras.optimizers.Adam(epoch_decay(1e-3, len(x) // 100)),
                  metrics=["accuracy"])
    model.fit(x, y, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=100,
              callbacks=[RobustnessCallback(x_val, y_val, max_samples=500, clip_min=0.0,
                                           clip_max=1.0)], verbose=2)

    logs = model.evaluate(x_test, y_test, batch_size=500, return_dict=True, verbose=0)
    report = evaluate_robustness(model.base, x_test, y_test, fgsm_eps=0.2, clip_min=0.0,
                                 clip_max=1.0, verbose=1)
    print(f"test error            {report['error']:.4f}")
    print(f"margin sensitivity    {logs['margin_sensitivity']:.4f}  (mean over the test set)")
    print(f"DeepFool rho_adv      {report['rho_adv']:.4f}  (eq. 20)")
    print(f"FGSM error, eps 0.2   {report['fgsm_error']:.4f}")


if __name__ == "__main__":
    main()
