"""Train a margin-maximized MLP on MNIST and measure its robustness (the README's first command).

    python examples/quickstart.py                         # any machine, offline included
    python examples/quickstart.py --data-dir DIR          # MNIST's IDX .gz files in DIR

MNIST comes from DIR, else tensorflow-datasets where it works at once, else the 10,000 real
digits embedded in keras-margin (7,000 train, 1,000 validate, 2,000 test; said so in one
line). A folder holding only MNIST's test files (t10k-*) is cut into 8,000 digits to train
and 2,000 to evaluate. About a minute or two on a 2-core CPU with the embedded digits (5
epochs of 7,000); runs on any Keras backend
(KERAS_BACKEND=jax or torch).
"""

# ruff: noqa: I001 - keras_margin first: it imports TensorFlow without its start-up noise
import argparse
import textwrap

import keras_margin
from keras_margin import MarginModel, architectures, datasets, evaluate_robustness, losses
from keras_margin.callbacks import RobustnessCallback
from keras_margin.experiments import epoch_decay
import keras

# The paper's MLP l2 row (Table I; 50,000 training digits, 100 epochs, 10 seeds).
PAPER = {"error": 0.0086, "rho_adv": 0.259, "fgsm_error": 0.4256, "baseline_rho_adv": 0.114,
         "baseline_fgsm_error": 0.958}

LEGEND = """\
The fit log, per epoch: loss = data_loss + C * margin_sensitivity (the whole objective);
data_loss the multiclass hinge on the training batches; margin_sensitivity the batch mean of
||grad f_y - grad f_j*||^2 (eq. 18, what the penalty shrinks); accuracy; the same on the
validation digits (val_*); and from the RobustnessCallback on 500 of them: val_rho_adv
(DeepFool's smallest flipping change / the digit's norm, eq. 20), val_fgsm_error (share
misclassified after FGSM, eps 0.2) and val_deepfool_success (share DeepFool flipped: 1.0 means
rho_adv covers every point); skipped_batches counts batches that could not train (0 here)."""


def load(data_dir):
    try:
        (x, y), (x_val, y_val), (x_test, y_test) = datasets.load("mnist", data_dir=data_dir)
        return (x, y), (x_val, y_val), (x_test, y_test), \
            f"MNIST, {len(x):,} train / {len(x_val):,} validation / {len(x_test):,} test digits"
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
          f"{args.norm}), {args.epochs} epoch{'s' * (args.epochs != 1)}; after each, DeepFool "
          "and FGSM on 500 validation digits.\n" + LEGEND)
    model = MarginModel(architectures.mlp(), C=args.C, norm=args.norm, rival=args.rival)
    model.compile(optimizer=keras.optimizers.Adam(epoch_decay(1e-3, len(x) // 100)),
                  metrics=["accuracy"])
    model.fit(x, y, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=100,
              callbacks=[RobustnessCallback(x_val, y_val, max_samples=500, clip_min=0.0,
                                           clip_max=1.0)], verbose=2)

    print(f"\n2/3 Margin sensitivity on the {len(x_test):,} test digits")
    logs = model.evaluate(x_test, y_test, batch_size=500, return_dict=True, verbose=0)
    hinge = float(keras.ops.mean(losses.multiclass_hinge(y_test, model.predict(
        x_test, batch_size=500, verbose=0))))
    print(f"\n3/3 Attacking the {len(x_test):,} test digits: FGSM (one signed-gradient step of "
          "0.2 per pixel), then DeepFool (the smallest perturbation that flips each digit)")
    report = evaluate_robustness(model.base, x_test, y_test, fgsm_eps=0.2, clip_min=0.0,
                                 clip_max=1.0, verbose=2)
    explain(report, logs["margin_sensitivity"], hinge, args.C, len(x), args.epochs)


def explain(report, sensitivity, hinge, C, n_train, epochs):
    """Every number, what it means and where the paper's stands."""
    rho = report.rho_adv
    print(f"""
test error            {report.error:.4f}  share of test digits misclassified (lower is better)
margin sensitivity    {sensitivity:.4f}  mean ||grad f_y - grad f_j*||^2 on the test digits,
                              what the penalty shrinks: C times it ({C * sensitivity:.4f}) is
                              the objective's share beside the hinge loss ({hinge:.4f})
DeepFool rho_adv      {rho:.4f}  the smallest change DeepFool finds that flips a correctly
                              classified digit, as a share of the digit's l2 norm (eq. 20):
                              an attacker must alter a digit by {rho:.0%} of its norm
FGSM error, eps 0.2   {report.fgsm_error:.4f}  share misclassified after every pixel moves
                              by 0.2 against the model (lower is more robust)
""")
    context = (
        f"These come from {n_train:,} training digits and {epochs} epoch"
        f"{'s' * (epochs != 1)}. The paper (50,000 digits, 100 epochs, this MLP with C = 0.1) "
        f"reports test error {PAPER['error']:.4f}, rho_adv {PAPER['rho_adv']:.3f} and FGSM "
        f"error {PAPER['fgsm_error']:.4f}; its undefended MLP has rho_adv "
        f"{PAPER['baseline_rho_adv']:.3f} and FGSM error {PAPER['baseline_fgsm_error']:.3f}. "
        "With fewer digits and epochs the error is higher and rho_adv lower: pass --data-dir "
        "with the full MNIST and --epochs 20 (about 15 minutes on 2 CPU cores) to come close; "
        "the README's Results give every row.")
    print(textwrap.fill(context, 96))


if __name__ == "__main__":
    main()
