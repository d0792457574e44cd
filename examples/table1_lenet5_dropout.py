"""Table I, "LeNet-5 dropout": LeNet-5 with dropout 0.5 before its dense layers.

Paper (100 epochs, 10 seeds): error 0.58 %, FGSM error 61.66 %,
rho_adv 0.17. The settings are row "lenet5-dropout" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_lenet5_dropout.py --data-dir MNIST_DIR

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
    python examples/table1_lenet5_dropout.py --quick   # CPU-sized subsets
"""

from keras_margin import architectures
from keras_margin.experiments import run_example


def build(row):
    return architectures.lenet5(dropout=row.dropout)


if __name__ == "__main__":
    run_example("lenet5-dropout", build)
