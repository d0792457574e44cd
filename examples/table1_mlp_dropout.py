"""Table I, "MLP dropout": MLP with dropout 0.5 after every hidden layer.

Paper (100 epochs, 10 seeds): error 1.34 %, FGSM error 93.4 %,
rho_adv 0.12. The settings are row "mlp-dropout" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_mlp_dropout.py --data-dir MNIST_DIR

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
    python examples/table1_mlp_dropout.py --quick   # CPU-sized subsets
"""

from keras_margin import architectures
from keras_margin.experiments import run_example


def build(row):
    return architectures.mlp(dropout=row.dropout)


if __name__ == "__main__":
    run_example("mlp-dropout", build)
