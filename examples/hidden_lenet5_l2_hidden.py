"""Hidden-layer margins, "LeNet-5 l2 margin, input + hidden layers" (issue 26; not the paper's).

The paper's l2 margin (C 0.1, multiclass hinge) taken at the input and at the outputs
of LeNet-5's two convolutions (where Elsayed et al. put theirs), the three penalties summed.
Table I's Adam schedule, 10 epochs (as long as Table I's published LeNet-5 rows ran).
The settings are row "lenet5-l2-hidden" of keras_margin.experiments, shared with
`keras-margin reproduce hidden`; only the model is written out here.

    python examples/hidden_lenet5_l2_hidden.py --data-dir MNIST_DIR
    # --quick: CPU-sized subsets

MNIST_DIR: a folder with MNIST's four IDX .gz files (the README's Data section says where to
get them); without --data-dir: KERAS_MARGIN_DATA, ~/.keras/datasets, then the small embedded
sample, said so in one line.
"""

from keras_margin import MarginModel, architectures
from keras_margin.experiments import run_example


def build(row):
    # row.trainer_kwargs["layers"]: "input" and names of the base's layers
    return MarginModel(architectures.lenet5(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("lenet5-l2-hidden", build)
