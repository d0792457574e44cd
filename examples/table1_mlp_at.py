"""Table I, "MLP AT": MLP with FGSM adversarial training (eps 0.2, equal weights).

Paper (100 epochs, 10 seeds): error 1.19 %, FGSM error 10.17 %,
rho_adv 0.16. The settings are row "mlp-at" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table1_mlp_at.py --data-dir ../shared/data/mnist   # --quick: CPU-sized subsets
"""

from keras_margin import AdversarialTrainingModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return AdversarialTrainingModel(architectures.mlp(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("mlp-at", build)
