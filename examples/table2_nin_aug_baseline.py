"""Table II, "NIN with data augm.": NIN with flips and random translations, no regularization.

Paper (200 epochs, one run): error 9.1 %, FGSM error 65.98 %,
rho_adv 0.0541. The settings are row "nin-aug-baseline" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table2_nin_aug_baseline.py --data-dir DIR_WITH_cifar-10-batches-py
"""

from keras_margin import architectures
from keras_margin.experiments import run_example


def build(row):
    return architectures.nin()


if __name__ == "__main__":
    run_example("nin-aug-baseline", build)
