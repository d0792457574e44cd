"""DeepFool throughput and rho_adv: keras_margin.attacks.deepfool vs Foolbox 3.3.4, one process.

Both attack the same trained MLP 1000-1000-1000 on the same 1,000 real MNIST test images, in the
same batches, inputs boxed to [0, 1]. Foolbox is a benchmark-only dependency:

    pip install foolbox==3.3.4
    python benchmarks/deepfool_vs_foolbox.py --data-dir ../shared/data/mnist-t10k

The MLP is trained on the first 8,000 images of the given split (the real MNIST test set here;
no network is needed) and attacked on 1,000 of the remaining ones. Timings exclude the first
(tracing) call of each attack; each attack runs `--repeats` times, interleaved, and the median
is reported with the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_margin import architectures, attacks, datasets, rho_adv  # noqa: E402


def ours(model, x, y, batch, jit):
    parts = [attacks.deepfool(model, x[i:i + batch], y[i:i + batch], clip_min=0.0,
                              clip_max=1.0, jit_compile=jit).perturbation.numpy()
             for i in range(0, len(x), batch)]
    return np.concatenate(parts)


def foolbox_deepfool(model, x, y, batch):
    import foolbox as fb

    fmodel = fb.TensorFlowModel(model, bounds=(0.0, 1.0))
    attack = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)
    parts = []
    for i in range(0, len(x), batch):
        # int64 labels: eagerpy compares them with argmax's dtype.
        xb, yb = tf.constant(x[i:i + batch]), tf.constant(y[i:i + batch], tf.int64)
        _, clipped, _ = attack(fmodel, xb, yb, epsilons=None)
        parts.append(clipped.numpy() - x[i:i + batch])
    return np.concatenate(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist-t10k")
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    x, y = datasets.load_split("mnist", "test", args.data_dir)
    keras.utils.set_random_seed(0)
    model = architectures.mlp()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:args.train], y[:args.train], epochs=args.epochs, batch_size=100, verbose=0)
    xe, ye = x[args.train:args.train + args.n], y[args.train:args.train + args.n]
    correct = model.predict(xe, verbose=0).argmax(axis=1) == ye
    print(f"MLP 1000-1000-1000 trained on {args.train} images for {args.epochs} epochs; "
          f"clean error on the {len(xe)} attacked images: {1 - correct.mean():.3f}")

    runs = {"keras_margin": lambda: ours(model, xe, ye, args.batch, False),
            "keras_margin (XLA)": lambda: ours(model, xe, ye, args.batch, True),
            "foolbox 3.3.4": lambda: foolbox_deepfool(model, xe, ye, args.batch)}
    for name in runs:  # warm-up: tracing and compilation are not counted
        if name.startswith("keras_margin"):
            ours(model, xe[:args.batch], ye[:args.batch], args.batch, "XLA" in name)
        else:
            foolbox_deepfool(model, xe[:args.batch], ye[:args.batch], args.batch)
    times = {name: [] for name in runs}
    perturbations = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            perturbations[name] = run()
            times[name].append(time.perf_counter() - start)

    fool = statistics.median(times["foolbox 3.3.4"])
    print("\n| attack | images/s | speed-up vs Foolbox | rho_adv | success |")
    print("|---|---|---|---|---|")
    for name, r in perturbations.items():
        median = statistics.median(times[name])
        fooled = model.predict(xe + r, verbose=0).argmax(axis=1) != ye
        print(f"| {name} | {len(xe) / median:.0f} | {fool / median:.1f}x | "
              f"{rho_adv(xe, r, correct):.4f} | {fooled[correct].mean():.3f} |")
    print(f"\nmedian of {args.repeats} interleaved runs, batch {args.batch}, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}")


if __name__ == "__main__":
    main()
