"""Ablation, "MLP VAT, exact Hessian-vector product": VAT with an exact power iteration.

The paper's VAT row takes H d by a finite difference with xi = 1e-6, which float32 rounding
mostly drowns; this row takes it by double backprop (`VATModel(hvp="exact")`), all else equal.
The settings are row "mlp-vat-exact-hvp" of keras_margin.experiments; only the model is
written out here.

    python examples/ablation_mlp_vat_exact_hvp.py --epochs 20 --data-dir MNIST_DIR

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
"""

from keras_margin import VATModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return VATModel(architectures.mlp(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("mlp-vat-exact-hvp", build)
