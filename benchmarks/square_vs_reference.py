"""Square Attack against the reference (fra31/auto-attack's SquareAttack, PyTorch) on the same
weights and the same MNIST test digits, side by side in one process (issue 25).

Per model, budget and seed: robust accuracy (share of the points correctly classified and not
fooled) by our `attacks.Square(shared_windows=True)` and by the reference at equal queries and
p_init (both draw one window, and for l_inf one sign per channel, per query for the whole
batch: the same search with different random draws), the time of each, and our default, one
window per image (as the paper's code).

    python benchmarks/square_vs_reference.py --data-dir MNIST_DIR --reference AUTOATTACK_DIR \\
        --out docs/results/benchmarks/square_vs_reference.json \\
        > docs/results/benchmarks/square_vs_reference.md

AUTOATTACK_DIR holds the `autoattack` package of github.com/fra31/auto-attack (needs torch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_margin import attacks, datasets  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attacks_vs_peers import torch_copy, train  # noqa: E402


def reference_square(net, x, y, eps, norm, n_queries, seed):
    """The reference's robust points: its own `perturb` (restarts 1, margin loss)."""
    import torch
    from autoattack.square import SquareAttack

    xt, yt = torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(y, dtype=torch.long)
    attack = SquareAttack(net, norm="Linf" if norm == "linf" else "L2", eps=eps,
                          n_queries=n_queries, p_init=0.8, n_restarts=1, seed=seed,
                          device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        adv = attack.perturb(xt, yt)
        predicted = net(adv).argmax(1).numpy()
    delta = adv.numpy().transpose(0, 2, 3, 1) - x
    size = np.abs(delta).reshape(len(x), -1).max(1) if norm == "linf" else \
        np.sqrt((delta ** 2).reshape(len(x), -1).sum(1))
    assert (size <= eps * (1 + 1e-5)).all()
    return predicted == y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--reference", required=True, help="folder holding autoattack/")
    parser.add_argument("--models", default="mlp256,lenet5")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--budgets", default="0.1,0.2,0.3")
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.reference))
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    (x_train, y_train), _, (x_test, y_test) = datasets.load("mnist", validation=0,
                                                            data_dir=args.data_dir)
    x, y = x_test[:args.n], y_test[:args.n]
    rows = []
    print(f"# Square Attack vs the reference (fra31/auto-attack), {args.norm}, "
          f"{args.queries} queries, p_init 0.8, {args.n} MNIST test digits\n")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} threads; "
          f"Keras {keras.__version__} (TensorFlow), torch {torch.__version__}\n")
    print("| model | eps | seed | ours robust acc. | reference | difference (points) | "
          "ours s | reference s | time ratio | ours, a window per image |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = train(name, x_train[:10000], y_train[:10000], args.epochs)
        net = torch_copy(name, model)
        with torch.no_grad():
            theirs = net(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
        np.testing.assert_allclose(theirs, keras.ops.convert_to_numpy(model(x)), atol=1e-4)
        correct = theirs.argmax(1) == y
        for eps in (float(e) for e in args.budgets.split(",")):
            for seed in range(args.seeds):
                start = time.perf_counter()
                result = attacks.square(model, x, y, eps=eps, norm=args.norm,
                                        n_queries=args.queries, seed=seed, clip_min=0.0,
                                        clip_max=1.0, shared_windows=True)
                ours_s = time.perf_counter() - start
                ours = float((correct & ~result.success).mean())
                own = attacks.square(model, x, y, eps=eps, norm=args.norm,
                                     n_queries=args.queries, seed=seed, clip_min=0.0,
                                     clip_max=1.0)
                per_image = float((correct & ~own.success).mean())
                start = time.perf_counter()
                reference = float((correct & reference_square(
                    net, x, y, eps, args.norm, args.queries, seed)).mean())
                theirs_s = time.perf_counter() - start
                rows.append({"model": name, "eps": eps, "seed": seed, "ours": ours,
                             "ours_per_image_windows": per_image,
                             "reference": reference, "ours_s": ours_s,
                             "reference_s": theirs_s})
                print(f"| {name} | {eps} | {seed} | {100 * ours:.1f} % | "
                      f"{100 * reference:.1f} % | {100 * (ours - reference):+.1f} | "
                      f"{ours_s:.1f} | {theirs_s:.1f} | {ours_s / theirs_s:.2f} | "
                      f"{100 * per_image:.1f} % |", flush=True)
    gaps = [100 * (r["ours"] - r["reference"]) for r in rows]
    means = {}
    for r in rows:
        means.setdefault((r["model"], r["eps"]), []).append(100 * (r["ours"] - r["reference"]))
    print(f"\nLargest gap of one run: {max(gaps, key=abs):+.1f} points; of the seeds' mean "
          f"per model and budget: {max((np.mean(v) for v in means.values()), key=abs):+.2f} "
          "points (negative: ours fools more).")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
