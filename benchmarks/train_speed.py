"""Training throughput of every trainer on MNIST-shaped data (random images), in one process.

    python benchmarks/train_speed.py --model mlp --steps 50 --batch 100 --out train_speed.json

Each trainer is compiled with `--jit` (XLA) as asked, warmed up for a few steps (tracing and
compilation are reported separately), then timed; images/s and the ratio to the plain step
of the same model come from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_margin import (  # noqa: E402
    AdversarialTrainingModel,
    MarginModel,
    VATModel,
    architectures,
)

TRAINERS = {
    "plain": lambda b: b,
    "margin-l2-jacobian": lambda b: MarginModel(b, C=0.1, norm="l2"),
    "margin-l2-logit": lambda b: MarginModel(b, C=0.1, norm="l2", rival="logit"),
    "margin-l1-jacobian": lambda b: MarginModel(b, C=0.01, norm="l1"),
    "at": lambda b: AdversarialTrainingModel(b, eps=0.2),
    "vat": lambda b: VATModel(b, eps=2.0, seed=0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "lenet5"], default="mlp")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--jit", choices=["on", "off"], default="off")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 28, 28, 1), dtype=np.float32)
    data = tf.data.Dataset.from_tensors((x, rng.integers(0, 10, args.batch))).repeat()
    rows = []
    for name, make in TRAINERS.items():
        keras.utils.set_random_seed(0)
        model = make(architectures.mlp() if args.model == "mlp" else architectures.lenet5())
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) \
            if name == "plain" else None
        model.compile(optimizer="adam", loss=loss, jit_compile=args.jit == "on")
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
        first = time.perf_counter() - start
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
        took = time.perf_counter() - start
        rows.append({"trainer": name, "model": args.model, "xla": args.jit == "on",
                     "batch": args.batch, "images_per_s": args.steps * args.batch / took,
                     "ms_per_step": took / args.steps * 1000, "first_call_s": first})
    plain = rows[0]["ms_per_step"]
    print(f"\n{args.model}, batch {args.batch}, XLA {args.jit}, "
          f"{tf.config.list_physical_devices()[-1].device_type}")
    print("| trainer | images/s | ms/step | ratio to plain | first call s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['trainer']} | {row['images_per_s']:.0f} | {row['ms_per_step']:.1f} | "
              f"{row['ms_per_step'] / plain:.2f}x | {row['first_call_s']:.1f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
