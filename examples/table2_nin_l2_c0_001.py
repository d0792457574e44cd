"""Table II, "NIN l2, C = 0.001": NIN, l2 margin maximization, C 0.001, cross-entropy.

Paper (200 epochs, one run): error 10.42 %, FGSM error 61.53 %,
rho_adv 0.0645. The settings are row "nin-l2-c0.001" of keras_margin.experiments, shared with
`keras-margin reproduce`; only the model is written out here.

    python examples/table2_nin_l2_c0_001.py --data-dir DIR_WITH_cifar-10-batches-py
"""

from keras_margin import MarginModel, architectures
from keras_margin.experiments import run_example


def build(row):
    return MarginModel(architectures.nin(), **row.trainer_kwargs)


if __name__ == "__main__":
    run_example("nin-l2-c0.001", build)
