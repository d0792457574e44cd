"""Certification: speed, a peer (auto_LiRPA) on the same weights, and soundness on MNIST.

    python benchmarks/certify_bench.py --data-dir DIR \\
        --out docs/results/benchmarks/certify.json > docs/results/benchmarks/certify.md

* Speed: `certify` of 1,000 test digits at l_inf 0.01 and `certified_radius` of 200, per
  method, for a 784-256-256-10 MLP and LeNet-5 trained one epoch (targets: under a minute and
  under two minutes).
* Peer: auto_LiRPA's CROWN on the same MLP weights (PyTorch): lower bounds of the margins at
  l_inf 0.01 and certified radii by the same bisection, side by side with ours (target: radii
  within 1 %), where auto_LiRPA imports (PyPI's 0.3 pins torch < 1.13 and fails on NumPy 2;
  its GitHub release 0.7.1 runs: put it on PYTHONPATH with appdirs, pyyaml, tqdm and graphviz).
* Soundness: on 1,000 test digits of the MLP, no attack (FMN, DDN, APGD-CE with 3 restarts)
  and no random point finds an adversarial inside a certified radius (l_inf and l2).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_margin  # noqa: E402, F401, I001 - first: TensorFlow without its start-up noise

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_margin import architectures, attacks, certify, datasets  # noqa: E402

EPS = 0.01
METHODS = ("crown", "crown-ibp", "ibp", "lipschitz")


def trained(arch: str, data_dir: str | None):
    (x, y), _, (x_test, y_test) = datasets.load("mnist", validation=0, data_dir=data_dir)
    keras.utils.set_random_seed(0)
    net = architectures.mlp(hidden=(256, 256)) if arch == "mlp" else architectures.lenet5()
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, epochs=1, batch_size=100, verbose=0)
    return net, x_test, y_test


def speed(arch: str, net, x, y, slow_points: int) -> list[dict]:
    """Per method: certify 1,000 points, radii of 200; LeNet-5's full CROWN on `slow_points`
    and `slow_points` // 5 only (its back-substitution through the convolutions is slow)."""
    rows = []
    for method in METHODS:
        points = slow_points if (arch == "lenet5" and method == "crown") else 1000
        certify.certify(net, x[:100], y[:100], eps=EPS, method=method, clip_min=0.0,
                        clip_max=1.0)  # compile
        start = time.perf_counter()
        ok = certify.certify(net, x[:points], y[:points], eps=EPS, method=method,
                             clip_min=0.0, clip_max=1.0)
        certify_s = time.perf_counter() - start
        start = time.perf_counter()
        radius = certify.certified_radius(net, x[:points // 5], y[:points // 5], norm="linf",
                                          method=method, clip_min=0.0, clip_max=1.0)
        rows.append({"model": arch, "method": method, "points": points,
                     "certify_s": certify_s,
                     "certified_share": float(ok.mean()),
                     "radius_s": time.perf_counter() - start,
                     "median_radius": float(np.median(radius))})
        print(f"{arch} {method}: certify {certify_s:.1f} s, radii {rows[-1]['radius_s']:.1f}"
              " s", flush=True)
    return rows


def torch_copy(net):
    """The same MLP in PyTorch (Flatten, Linear, ReLU, ...)."""
    import torch

    layers = [torch.nn.Flatten()]
    dense = [layer for layer in net.layers if isinstance(layer, keras.layers.Dense)]
    for i, layer in enumerate(dense):
        kernel, bias = (np.asarray(v) for v in layer.get_weights())
        linear = torch.nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(kernel.T))
            linear.bias.copy_(torch.tensor(bias))
        layers.append(linear)
        if i < len(dense) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def peer(net, x, y, n: int = 200) -> dict | None:
    """auto_LiRPA's CROWN against ours on the same weights, where it imports."""
    try:
        import torch
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    except Exception as err:  # not installable here: said so in the output
        print(f"auto_LiRPA: not available ({type(err).__name__}: {err})")
        return None
    x, y = x[:n], y[:n]
    model = BoundedModule(torch_copy(net), torch.zeros((1, 28, 28, 1)))
    k = 10
    spec = torch.tensor(np.eye(k)[y][:, None, :] - np.eye(k)[None], dtype=torch.float32)

    def theirs(eps: np.ndarray) -> np.ndarray:
        xt = torch.tensor(x)
        low = torch.clamp(xt - torch.tensor(eps, dtype=torch.float32).view(-1, 1, 1, 1), 0, 1)
        high = torch.clamp(xt + torch.tensor(eps, dtype=torch.float32).view(-1, 1, 1, 1), 0, 1)
        region = PerturbationLpNorm(norm=np.inf, x_L=low, x_U=high)
        with torch.no_grad():
            lower, _ = model.compute_bounds(x=(BoundedTensor(xt, region),), C=spec,
                                            method="CROWN")
        lower = lower.numpy()
        lower[np.arange(n), y] = np.inf
        return lower

    start = time.perf_counter()
    their_bounds = theirs(np.full(n, EPS))
    their_s = time.perf_counter() - start
    certify.lower_margins(net, x, y, EPS, method="crown", clip_min=0.0, clip_max=1.0)  # compile
    start = time.perf_counter()
    our_bounds = certify.lower_margins(net, x, y, EPS, method="crown", clip_min=0.0, clip_max=1.0)
    our_s = time.perf_counter() - start
    finite = np.isfinite(our_bounds)
    their_radius = _bisect(lambda e: theirs(e).min(axis=1) > 0, n)
    our_radius = certify.certified_radius(net, x, y, method="crown", clip_min=0.0,
                                          clip_max=1.0, steps=20, upper=np.ones(n))
    both = (their_radius > 0) | (our_radius > 0)
    ratio = our_radius[both] / np.maximum(their_radius[both], 1e-12)
    return {"points": n, "bound_max_abs_difference": float(
                np.abs(our_bounds[finite] - their_bounds[finite]).max()),
            "radius_ratio_median": float(np.median(ratio)),
            "radius_ratio_min": float(ratio.min()), "radius_ratio_max": float(ratio.max()),
            "ours_bounds_s": our_s, "theirs_bounds_s": their_s}


def _bisect(certified, n: int, steps: int = 20) -> np.ndarray:
    low, high = np.zeros(n), np.ones(n)
    for _ in range(steps):
        middle = (low + high) / 2
        ok = certified(middle)
        low, high = np.where(ok, middle, low), np.where(ok, high, middle)
    return low


def soundness(net, x, y, n: int = 1000) -> list[dict]:
    """Attacks and random points against the certified radii, l_inf and l2."""
    keep = np.argmax(net.predict(x[:n], verbose=0), axis=1) == y[:n]
    x, y = x[:n][keep], y[:n][keep]
    rows = []
    for norm in ("linf", "l2"):
        radius = certify.certified_radius(net, x, y, norm=norm, method="crown", clip_min=0.0,
                                          clip_max=1.0)
        found = attacks.fmn(net, x, y, norm=norm, clip_min=0.0, clip_max=1.0).distances(norm)
        budget = np.maximum(radius, 1e-3)
        apgd = attacks.APGD(norm=norm, restarts=3)
        for eps in np.unique(np.round(np.quantile(budget, [0.25, 0.5, 0.75]), 4)):
            hit = apgd(net, x, y, float(eps), clip_min=0.0, clip_max=1.0)
            found = np.where(hit.success, np.minimum(found, hit.distances(norm)), found)
        if norm == "l2":
            found = np.minimum(found, attacks.ddn(net, x, y, clip_min=0.0, clip_max=1.0)
                               .distances("l2"))
        rows.append({"norm": norm, "points": int(len(x)),
                     "median_certified": float(np.median(radius)),
                     "median_attacked": float(np.median(found)),
                     "violations": int((radius > found * (1 + 1e-5) + 1e-7).sum()),
                     "random_violations": int(_random_hits(net, x, y, radius, norm))})
        print(f"soundness {norm}: {rows[-1]}", flush=True)
    return rows


def _random_hits(net, x, y, radius, norm, draws: int = 100) -> int:
    rng = np.random.default_rng(0)
    bad = np.zeros(len(x), bool)
    scale = radius.reshape(-1, 1, 1, 1)
    for _ in range(draws):
        if norm == "linf":
            point = np.clip(x + np.sign(rng.normal(size=x.shape)) * scale, 0, 1)
        else:
            delta = rng.normal(size=x.shape)
            delta /= np.linalg.norm(delta.reshape(len(x), -1), axis=1).reshape(-1, 1, 1, 1)
            point = x + delta * scale
        bad |= (np.argmax(net.predict(point.astype("float32"), verbose=0), 1) != y) & (
            radius > 0)
    return int(bad.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--slow-points", type=int, default=100,
                        help="points of LeNet-5's full CROWN (default 100; radii of a fifth)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = {"speed": [], "keras": keras.__version__, "backend": keras.backend.backend()}
    mlp, x_test, y_test = trained("mlp", args.data_dir)
    result["speed"] += speed("mlp", mlp, x_test, y_test, args.slow_points)
    result["peer"] = peer(mlp, x_test, y_test)
    result["soundness"] = soundness(mlp, x_test, y_test)
    lenet, _, _ = trained("lenet5", args.data_dir)
    result["speed"] += speed("lenet5", lenet, x_test, y_test, args.slow_points)
    print(f"\n<!-- python benchmarks/certify_bench.py (backend {result['backend']}) -->\n")
    print("| model | method | points | certify (s) | certified at l_inf 0.01 | radii of a "
          "fifth (s) | median l_inf radius |\n|---|---|---|---|---|---|---|")
    for r in result["speed"]:
        print(f"| {r['model']} | {r['method']} | {r['points']} | {r['certify_s']:.1f} | "
              f"{100 * r['certified_share']:.1f} % | {r['radius_s']:.1f} | "
              f"{r['median_radius']:.4f} |")
    if result["peer"]:
        p = result["peer"]
        print(f"\nauto_LiRPA's CROWN and ours on the same MLP weights, {p['points']} test digits:"
              "\n\n| largest bound difference at l_inf 0.01 | our radius / theirs: median | min |"
              " max | our bounds (s) | their bounds (s) |\n|---|---|---|---|---|---|\n"
              f"| {p['bound_max_abs_difference']:.2e} | {p['radius_ratio_median']:.5f} | "
              f"{p['radius_ratio_min']:.5f} | {p['radius_ratio_max']:.5f} | "
              f"{p['ours_bounds_s']:.2f} | {p['theirs_bounds_s']:.2f} |")
    print("\n| norm | points | violations (attacks) | violations (random) | median certified |"
          " median attacked |\n|---|---|---|---|---|---|")
    for r in result["soundness"]:
        print(f"| {r['norm']} | {r['points']} | {r['violations']} | {r['random_violations']} | "
              f"{r['median_certified']:.4f} | {r['median_attacked']:.4f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
