"""Certified training, "LeNet-5 CROWN-IBP, l_inf 0.3" (issue 27; not the paper's).

LeNet-5 trained on the proven lower bounds of its margins (CROWN-IBP, Zhang et al., 2020) at
l_inf 0.3 inside [0, 1]: 20 epochs of the paper's Adam schedule, eps, kappa and beta ramped
over epochs 2-11.
The settings are row "lenet5-crown-ibp-linf-0.3" of keras_margin.experiments, shared with
`keras-margin reproduce certified`; only the model is written out here.

    python examples/certified_lenet5_crown_ibp_linf_0_3.py --data-dir MNIST_DIR
    # --quick: CPU-sized subsets

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
"""

from keras_margin import CertifiedTrainingModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return CertifiedTrainingModel(architectures.lenet5(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("lenet5-crown-ibp-linf-0.3", build)
