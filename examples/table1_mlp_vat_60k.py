"""Table I, "MLP VAT" as the reference code's README says it was trained: all 60,000 digits.

VAT (eps 2, xi 1e-6, 1 iteration) on the MLP, trained on MNIST's whole training set with no
validation split, as aam-at/margin_maximization's README describes its VAT row. Paper (100
epochs, 10 seeds): error 0.87 %, FGSM error 24.33 %, rho_adv 0.269. The settings are row
"mlp-vat-60k" of keras_margin.experiments, shared with `keras-margin reproduce`.

    python examples/table1_mlp_vat_60k.py --data-dir DIR   # DIR: MNIST's four IDX .gz files
"""

from keras_margin import VATModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return VATModel(architectures.mlp(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("mlp-vat-60k", build)
