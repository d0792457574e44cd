"""Table II, "NIN w/o data augm.": Network in Network, CIFAR-10 (GCN + ZCA), no augmentation.

Paper (200 epochs, one run): error 11.3 %, FGSM error 68.85 %,
rho_adv 0.0512. The settings are row "nin-baseline" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table2_nin_baseline.py --data-dir DIR_WITH_cifar-10-batches-py
"""

from keras_margin import architectures
from keras_margin.experiments import run_example


def build(row):
    return architectures.nin()


if __name__ == "__main__":
    run_example("nin-baseline", build)
