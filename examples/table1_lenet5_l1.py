"""Table I, "LeNet-5 our l1": LeNet-5 with l1 margin maximization (C 0.01, multiclass hinge).

Paper (100 epochs, 10 seeds): error 0.64 %, FGSM error 20.47 %,
rho_adv 0.222. The settings are row "lenet5-l1" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_lenet5_l1.py --data-dir MNIST_DIR

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
    python examples/table1_lenet5_l1.py --quick   # CPU-sized subsets
"""

from keras_margin import MarginModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return MarginModel(architectures.lenet5(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("lenet5-l1", build)
