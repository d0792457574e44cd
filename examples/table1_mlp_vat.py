"""Table I, "MLP VAT": MLP with virtual adversarial training (eps 2, xi 1e-6, 1 iteration).

Paper (100 epochs, 10 seeds): error 0.87 %, FGSM error 24.33 %,
rho_adv 0.269. The settings are row "mlp-vat" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_mlp_vat.py --data-dir MNIST_DIR   # --quick: CPU-sized subsets

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
"""

from keras_margin import VATModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return VATModel(architectures.mlp(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("mlp-vat", build)
