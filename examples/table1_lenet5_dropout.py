"""Table I, "LeNet-5 dropout": LeNet-5 with dropout 0.5 before its dense layers.

Paper (100 epochs, 10 seeds): error 0.58 %, FGSM error 61.66 %,
rho_adv 0.17. The settings are row "lenet5-dropout" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_lenet5_dropout.py --data-dir ../shared/data/mnist
    python examples/table1_lenet5_dropout.py --quick   # CPU-sized subsets
"""

from keras_margin import architectures
from keras_margin.experiments import run_example


def build(row):
    return architectures.lenet5(dropout=row.dropout)


if __name__ == "__main__":
    run_example("lenet5-dropout", build)
