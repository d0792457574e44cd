"""Table I, "LeNet-5 AT": LeNet-5 with FGSM adversarial training (eps 0.2, equal weights).

Paper (100 epochs, 10 seeds): error 0.73 %, FGSM error 4.95 %,
rho_adv 0.2. The settings are row "lenet5-at" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_lenet5_at.py --data-dir MNIST_DIR

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
    python examples/table1_lenet5_at.py --quick   # CPU-sized subsets
"""

from keras_margin import AdversarialTrainingModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return AdversarialTrainingModel(architectures.lenet5(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("lenet5-at", build)
