"""Table I, "MLP baseline": MLP 1000-1000-1000, cross-entropy, no regularization.

Paper (100 epochs, 10 seeds): error 1.42 %, FGSM error 95.8 %,
rho_adv 0.114. The settings are row "mlp-baseline" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_mlp_baseline.py --data-dir MNIST_DIR

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
    python examples/table1_mlp_baseline.py --quick   # CPU-sized subsets
"""

from keras_margin import architectures
from keras_margin.experiments import run_example


def build(row):
    return architectures.mlp()


if __name__ == "__main__":
    run_example("mlp-baseline", build)
