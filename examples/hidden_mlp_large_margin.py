"""Hidden-layer margins, "MLP Elsayed et al. large margin, l2" (issue 26; not the paper's).

Elsayed et al.'s large margin loss (NeurIPS 2018) at the input and the MLP's three hidden
ReLU layers: l2 distances, the reference code's MNIST settings (margin loss alone, gamma 1e4,
alpha 4, top_k 1).
Table I's Adam schedule, 20 epochs (as long as Table I's published MLP rows ran).
The settings are row "mlp-large-margin" of keras_margin.experiments, shared with
`keras-margin reproduce hidden`; only the model is written out here.

    python examples/hidden_mlp_large_margin.py --data-dir MNIST_DIR
    # --quick: CPU-sized subsets

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
"""

from keras_margin import LargeMarginModel, architectures
from keras_margin.experiments import run_example


def build(row):
    # row.trainer_kwargs["layers"]: "input" and names of the base's layers
    return LargeMarginModel(architectures.mlp(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("mlp-large-margin", build)
