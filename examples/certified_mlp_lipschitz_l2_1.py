"""Certified training, "MLP Lipschitz margin, l2 1" (issue 27; not the paper's).

MLP trained on a global Lipschitz margin (GloRo nets, Leino et al., 2021): its logit gaps
less eps times the product of its layers' operator norms, at l2 1 (the box is certify's): 20
epochs of the paper's Adam schedule, eps and kappa ramped over epochs 2-11.
The settings are row "mlp-lipschitz-l2-1" of keras_margin.experiments, shared with
`keras-margin reproduce certified`; only the model is written out here.

    python examples/certified_mlp_lipschitz_l2_1.py --data-dir MNIST_DIR
    # --quick: CPU-sized subsets

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
"""

from keras_margin import CertifiedTrainingModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return CertifiedTrainingModel(architectures.mlp(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("mlp-lipschitz-l2-1", build)
