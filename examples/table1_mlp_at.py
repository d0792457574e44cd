"""Table I, "MLP AT": MLP with FGSM adversarial training (eps 0.2, equal weights).

Paper (100 epochs, 10 seeds): error 1.19 %, FGSM error 10.17 %,
rho_adv 0.16. The settings are row "mlp-at" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_mlp_at.py --data-dir MNIST_DIR   # --quick: CPU-sized subsets

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
"""

from keras_margin import AdversarialTrainingModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return AdversarialTrainingModel(architectures.mlp(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("mlp-at", build)
