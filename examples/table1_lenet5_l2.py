"""Table I, "LeNet-5 our l2": LeNet-5 with squared-l2 margin maximization (C 0.1, hinge).

Paper (100 epochs, 10 seeds): error 0.62 %, FGSM error 28.26 %,
rho_adv 0.217. The settings are row "lenet5-l2" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_lenet5_l2.py --data-dir MNIST_DIR

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
    python examples/table1_lenet5_l2.py --quick   # CPU-sized subsets
"""

from keras_margin import MarginModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return MarginModel(architectures.lenet5(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("lenet5-l2", build)
