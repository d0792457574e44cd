"""Train a margin-maximized MLP on MNIST and measure its robustness (the README's first command).

    python examples/quickstart.py                         # any machine, offline included
    python examples/quickstart.py --data-dir DIR          # MNIST's IDX .gz files in DIR

MNIST comes from DIR, else tensorflow-datasets where it works at once, else the 10,000 real
digits embedded in keras-margin (said so in one line). A folder holding only MNIST's test files
(t10k-*) is cut into 8,000 digits to train and 2,000 to evaluate. Runs on any Keras backend
(KERAS_BACKEND=jax or torch).
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
        return (x, y), (x_val, y_val), (x_test, y_test), \
            f"MNIST, {len(x)} train / {len(x_val)} validation / {len(x_test)} test digits"
    except datasets.DatasetNotFoundError:
        if data_dir is None:
            raise
    (x, y), (x_test, y_test) = datasets.split_test_set("mnist", data_dir, train=8000)
    return (x, y), (x_test, y_test), (x_test, y_test), \
        "only MNIST's test set was found: 8,000 digits to train, 2,000 to evaluate"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with MNIST IDX (.gz) files")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--C", type=float, default=0.1, help="weight of the margin penalty")
    parser.add_argument("--norm", choices=["l2", "l1"], default="l2",
                        help="the penalty's norm (l1 defends l_inf perturbations)")
    parser.add_argument("--rival", choices=["jacobian", "logit"], default="jacobian",
                        help="how the rival class is chosen (logit: cheaper)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    (x, y), (x_val, y_val), (x_test, y_test), data = load(args.data_dir)
    print(f"keras-margin {keras_margin.__version__} on Keras {keras.__version__} "
          f"({keras.backend.backend()}): {data}")

    print(f"\n1/3 Training an MLP 1000-1000-1000 with the margin penalty (C = {args.C}, "
          f"{args.norm}), {args.epochs} epochs; after each, DeepFool and FGSM on 500 "
          "validation digits (val_rho_adv, val_fgsm_error)")
    model = MarginModel(architectures.mlp(), C=args.C, norm=args.norm, rival=args.rival)
    model.compile(optimizer=keras.optimizers.Adam(epoch_decay(1e-3, len(x) // 100)),
                  metrics=["accuracy"])
    model.fit(x, y, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=100,
              callbacks=[RobustnessCallback(x_val, y_val, max_samples=500, clip_min=0.0,
                                           clip_max=1.0)], verbose=2)

    print(f"\n2/3 Margin sensitivity on the {len(x_test)} test digits")
    logs = model.evaluate(x_test, y_test, batch_size=500, return_dict=True, verbose=0)
    print(f"\n3/3 Attacking the {len(x_test)} test digits: DeepFool (the smallest perturbation "
          "that flips each digit), then FGSM (one signed-gradient step of 0.2 per pixel)")
    report = evaluate_robustness(model.base, x_test, y_test, fgsm_eps=0.2, clip_min=0.0,
                                 clip_max=1.0, verbose=1)

    rho, error = report["rho_adv"], report["error"]
    print(f"""
test error            {error:.4f}  share of test digits misclassified (lower is better)
margin sensitivity    {logs['margin_sensitivity']:.4f}  ||grad f_y - grad f_j||^2, what the \
penalty shrinks (lower: flatter, wider margins)
DeepFool rho_adv      {rho:.4f}  the smallest change DeepFool finds that flips a correctly \
classified digit, as a share of the digit's own l2 norm (eq. 20): an attacker must alter the \
image by {rho:.0%} of its norm (higher is more robust; an undefended MLP has about 0.11)
FGSM error, eps 0.2   {report['fgsm_error']:.4f}  share misclassified after every pixel moves \
by 0.2 against the model (lower is more robust; an undefended MLP is near 0.9)""")


if __name__ == "__main__":
    main()
