"""Table I, "MLP our l2": MLP with squared-l2 margin maximization (C 0.1, multiclass hinge).

Paper (100 epochs, 10 seeds): error 0.86 %, FGSM error 42.56 %,
rho_adv 0.259. The settings are row "mlp-l2" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_mlp_l2.py --data-dir ../shared/data/mnist   # --quick: CPU-sized subsets
"""

from keras_margin import MarginModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return MarginModel(architectures.mlp(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("mlp-l2", build)
