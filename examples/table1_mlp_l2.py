"""Table I, "MLP our l2": MLP with squared-l2 margin maximization (C 0.1, multiclass hinge).

Paper (100 epochs, 10 seeds): error 0.86 %, FGSM error 42.56 %,
rho_adv 0.259. The settings are row "mlp-l2" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_mlp_l2.py --data-dir MNIST_DIR   # --quick: CPU-sized subsets

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
"""

from keras_margin import MarginModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return MarginModel(architectures.mlp(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("mlp-l2", build)
