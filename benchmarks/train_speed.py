"""Training throughput of every trainer, and one timed MLP l2 epoch on real MNIST, any backend.

    python benchmarks/train_speed.py --model mlp --steps 50 --batch 100 --out train_speed.json
    KERAS_BACKEND=jax python benchmarks/train_speed.py --epoch-on-mnist

Each trainer is compiled with `--jit` as asked (JAX is always jitted; PyTorch runs eagerly),
warmed up for a few steps (tracing and compilation are reported separately), then timed on
MNIST-shaped random images; images/s and the ratio to the plain step of the same model come
from the same run. `--epoch-on-mnist` then times one epoch of MarginModel(C=0.1, l2) on the
MLP 1000-1000-1000 over real MNIST digits (`--data-dir`, else the sample embedded in the
package), batch 100, as `fit` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_margin import (  # noqa: E402
    AdversarialTrainingModel,
    MarginModel,
    VATModel,
    architectures,
    datasets,
)

TRAINERS = {
    "plain": lambda b: b,
    "margin-l2-jacobian": lambda b: MarginModel(b, C=0.1, norm="l2"),
    "margin-l2-logit": lambda b: MarginModel(b, C=0.1, norm="l2", rival="logit"),
    "margin-l1-jacobian": lambda b: MarginModel(b, C=0.01, norm="l1"),
    "at": lambda b: AdversarialTrainingModel(b, eps=0.2),
    "vat": lambda b: VATModel(b, eps=2.0, seed=0),
}


def compiled(model, name: str, jit: bool):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) \
        if name == "plain" else None
    model.compile(optimizer="adam", loss=loss, jit_compile=jit)
    return model


def steps_per_second(model, x, y, batch: int, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        model.train_on_batch(x[i % 4 * batch:(i % 4 + 1) * batch],
                             y[i % 4 * batch:(i % 4 + 1) * batch])
    return steps / (time.perf_counter() - start)


def trainers(args: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.random((4 * args.batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    jit = keras.backend.backend() == "jax" or args.jit == "on"
    rows = []
    for name, make in TRAINERS.items():
        keras.utils.set_random_seed(0)
        model = compiled(make(architectures.mlp() if args.model == "mlp"
                              else architectures.lenet5()), name, jit)
        start = time.perf_counter()
        steps_per_second(model, x, y, args.batch, 3)
        first = time.perf_counter() - start
        rate = steps_per_second(model, x, y, args.batch, args.steps)
        rows.append({"trainer": name, "model": args.model, "backend": keras.backend.backend(),
                     "jit": jit, "batch": args.batch, "images_per_s": rate * args.batch,
                     "ms_per_step": 1000 / rate, "first_call_s": first})
    plain = rows[0]["ms_per_step"]
    print(f"\n{args.model}, batch {args.batch}, backend {keras.backend.backend()}, "
          f"compiled {jit}")
    print("| trainer | images/s | ms/step | ratio to plain | first call s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['trainer']} | {row['images_per_s']:.0f} | {row['ms_per_step']:.1f} | "
              f"{row['ms_per_step'] / plain:.2f}x | {row['first_call_s']:.1f} |")
    return rows


def epoch_on_mnist(args: argparse.Namespace) -> dict:
    (x, y), _, _ = datasets.load("mnist", data_dir=args.data_dir)
    keras.utils.set_random_seed(0)
    model = MarginModel(architectures.mlp(), C=0.1, norm="l2")
    model.compile(optimizer="adam", jit_compile=keras.backend.backend() == "jax"
                  or args.jit == "on")
    model.fit(x[:300], y[:300], batch_size=100, epochs=1, verbose=0)  # trace and compile
    start = time.perf_counter()
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    took = time.perf_counter() - start
    row = {"trainer": "margin-l2-jacobian", "model": "mlp", "epoch_images": len(x),
           "epoch_s": took, "images_per_s": len(x) / took, "backend": keras.backend.backend()}
    print(f"\nMarginModel(C=0.1, l2, jacobian) on the MLP 1000-1000-1000: one epoch of "
          f"{len(x)} MNIST digits, batch 100, in {took:.1f} s ({len(x) / took:.0f} images/s), "
          f"backend {keras.backend.backend()}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "lenet5"], default="mlp")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--jit", choices=["on", "off"], default="off",
                        help="TensorFlow: XLA (JAX is always jitted)")
    parser.add_argument("--epoch-on-mnist", action="store_true",
                        help="also time one MLP l2 epoch on real MNIST digits")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX files for that epoch")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = trainers(args)
    if args.epoch_on_mnist:
        rows.append(epoch_on_mnist(args))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
