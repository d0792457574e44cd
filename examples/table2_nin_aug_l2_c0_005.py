"""Table II, "NIN l2, C = 0.005 (augm.)": NIN with augmentation, l2 margin maximization, C 0.005.

Paper (200 epochs, one run): error 10.02 %, FGSM error 52.8 %,
rho_adv 0.0777. The settings are row "nin-aug-l2-c0.005" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table2_nin_aug_l2_c0_005.py --data-dir DIR_WITH_cifar-10-batches-py
"""

from keras_margin import MarginModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return MarginModel(architectures.nin(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("nin-aug-l2-c0.005", build)
