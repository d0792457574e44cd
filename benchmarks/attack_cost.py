"""The attacks against their floor: time per image against (iterations x the passes they need).

Each attack's floor on the same points and lanes is (its iterations summed over the points /
lanes) x the time of one iteration's passes on a full lane batch, those passes timed alone as
compiled programs: DeepFool a forward, k - 1 backward passes (the rival directions) and a
forward (the success check); FMN, DDN and APGD a forward and one backward. The ratio of the
attack's time to that floor is what its lanes, verification and bookkeeping cost (target:
within 1.3x). The model is the MLP 1000-1000-1000 trained one epoch; the points are the first
`--n` correctly classified test digits, boxed to [0, 1].

    python benchmarks/attack_cost.py --n 500 --lanes 100 500 \\
        --out docs/results/benchmarks/attack_cost.json > docs/results/benchmarks/attack_cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_margin  # noqa: E402, F401, I001 - first: TensorFlow without its start-up noise

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_margin import MarginModel, architectures, attacks, backend, datasets  # noqa: E402
from keras_margin.attacks.steps import loss_gradient  # noqa: E402
from keras_margin.jacobian import (  # noqa: E402
    call_logits,
    logits_and_pullback,
    margin_gradients,
    rival_classes,
)

TARGET = 1.3
ATTACKS = {"deepfool": attacks.DeepFool(), "fmn_l2": attacks.FMN(steps=100),
           "ddn": attacks.DDN(steps=100), "apgd_ce_linf": attacks.APGD(steps=100)}


def trained_mlp(data_dir: str | None) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    (x, y), _, (x_test, y_test) = datasets.load("mnist", validation=0, data_dir=data_dir)
    keras.utils.set_random_seed(0)
    model = MarginModel(architectures.mlp(), C=0.0, loss="crossentropy")
    model.compile(optimizer="adam")
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    return model.base, x_test, y_test


def pass_times(model: keras.Model, x: np.ndarray, y: np.ndarray, reps: int = 10) -> dict:
    """Seconds per call of each iteration's passes on the batch x, compiled."""
    k = 10

    def forward(z):
        return call_logits(model, z)

    def forward_backward(z, labels):
        return loss_gradient(model, z, labels)[1]

    def deepfool_passes(z, labels):
        logits, pullback = logits_and_pullback(model, z)
        rivals = rival_classes(logits, labels)
        return margin_gradients(pullback, labels, rivals, k), call_logits(model, z)

    xs, labels = ops.convert_to_tensor(x), ops.convert_to_tensor(y.astype("int32"))
    out = {}
    for name, fn, args in (("forward", forward, (xs,)),
                           ("forward_backward", forward_backward, (xs, labels)),
                           ("deepfool_iteration", deepfool_passes, (xs, labels))):
        program = backend.compile_fn(fn, model, keras.backend.backend() == "jax")
        ops.convert_to_numpy(keras.tree.flatten(program(*args))[0])
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            ops.convert_to_numpy(keras.tree.flatten(program(*args))[0])
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


def measure(model, x, y, lanes: int) -> list[dict]:
    passes = pass_times(model, x[:lanes], y[:lanes])
    per_iteration = {"deepfool": passes["deepfool_iteration"],
                     "fmn_l2": passes["forward_backward"], "ddn": passes["forward_backward"],
                     "apgd_ce_linf": passes["forward_backward"]}
    rows = []
    for name, attack in ATTACKS.items():
        def call(points, attack=attack):
            if isinstance(attack, attacks.BudgetAttack):
                return attack(model, x[:points], y[:points], eps=0.1, clip_min=0.0, clip_max=1.0,
                              batch_size=lanes)
            return attack(model, x[:points], y[:points], clip_min=0.0, clip_max=1.0,
                          batch_size=lanes)

        call(min(lanes, len(x)))  # compile
        start = time.perf_counter()
        result = call(len(x))
        took = time.perf_counter() - start
        iterations = int(result.iterations.sum())
        floor = iterations / lanes * per_iteration[name]
        rows.append({"attack": name, "lanes": lanes, "points": len(x),
                     "s_per_image": took / len(x), "mean_iterations": iterations / len(x),
                     "floor_s_per_image": floor / len(x), "ratio_to_floor": took / floor,
                     "success_rate": float(result.success.mean())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--lanes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model, x_test, y_test = trained_mlp(args.data_dir)
    correct = np.argmax(ops.convert_to_numpy(model.predict(x_test, verbose=0)), 1) == y_test
    x, y = x_test[correct][:args.n], y_test[correct][:args.n]
    rows = [row for lanes in args.lanes for row in measure(model, x, y, lanes)]
    print(f"<!-- python benchmarks/attack_cost.py --n {args.n} --lanes "
          f"{' '.join(map(str, args.lanes))} ({keras.backend.backend()}) -->\n")
    print("| attack | lanes | ms/image | mean iterations | floor ms/image | time / floor | "
          f"target <= {TARGET}x |\n|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = "met" if r["ratio_to_floor"] <= TARGET else "missed"
        print(f"| {r['attack']} | {r['lanes']} | {1000 * r['s_per_image']:.2f} | "
              f"{r['mean_iterations']:.1f} | {1000 * r['floor_s_per_image']:.2f} | "
              f"{r['ratio_to_floor']:.2f}x | {verdict} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
