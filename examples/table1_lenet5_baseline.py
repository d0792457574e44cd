"""Table I, "LeNet-5 baseline": LeNet-5 (conv32-pool-conv64-pool-fc512), cross-entropy only.

Paper (100 epochs, 10 seeds): error 0.72 %, FGSM error 72.14 %,
rho_adv 0.154. The settings are row "lenet5-baseline" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_lenet5_baseline.py --data-dir MNIST_DIR

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
    python examples/table1_lenet5_baseline.py --quick   # CPU-sized subsets
"""

from keras_margin import architectures
from keras_margin.experiments import run_example


def build(row):
    return architectures.lenet5()


if __name__ == "__main__":
    run_example("lenet5-baseline", build)
