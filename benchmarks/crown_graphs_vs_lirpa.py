"""CROWN on LeNet-5 and a small ResNet against auto_LiRPA's CROWN on the same weights.

    PYTHONPATH=LIRPA python benchmarks/crown_graphs_vs_lirpa.py --data-dir DIR --n 200 \\
        --radius-n 20 --out docs/results/benchmarks/crown_graphs.json \\
        > docs/results/benchmarks/crown_graphs.md

Issue 28's comparison on convolutional and residual networks. Two networks trained one epoch
on MNIST (Adam, batch 100, seed 0): the reference code's LeNet-5 and a small ResNet (a stride-2
stem, two basic blocks with batch norm, the second striding with a 1x1 projection shortcut;
residual `Add`s). Each is copied into PyTorch (NCHW; batch norm in eval mode; the check below
asserts the copies' logits), bounded by auto_LiRPA 0.7.1 (its GitHub release, on PYTHONPATH
with appdirs, pyyaml, tqdm and graphviz; `method="CROWN"`, its patches mode where it runs,
else its matrix mode, as the output says; as a user runs it, and with every neuron bounded
by CROWN in float64 as `certify` bounds them: see `Peer`) and by `certify` (CROWN, every route
`certify.crown_plan` gives), at l_inf 0.01 inside [0, 1] on the first `--n` test digits: the
largest difference of the lower margin bounds, the certified shares, one call's time each;
then the certified l_inf radii of the first `--radius-n` by the same 20-step bisection on
[0, 1], their ratio, and the tightness (certified radius / FMN's smallest l_inf adversarial)
of each. Run it on an idle machine: the time ratios are what it measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_margin  # noqa: E402, F401, I001 - first: TensorFlow without its start-up noise

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from keras_margin import architectures, attacks, certify, datasets  # noqa: E402
from keras_margin.experiments.environment import machine  # noqa: E402
from keras_margin.propagation import bounds  # noqa: E402

EPS = 0.01
STEPS = 20


def small_resnet() -> keras.Model:
    """28x28x1 -> conv 3x3/2 (valid) 8 - BN - ReLU (13x13x8) -> block (8) -> block (16, stride
    2, 1x1 projection) (7x7x16) -> flatten -> dense 10. Every map has at most 2,048 neurons."""
    def conv(filters, size, strides, padding, name):
        return layers.Conv2D(filters, size, strides=strides, padding=padding, use_bias=False,
                             name=name)

    def block(x, filters, strides, name):
        y = layers.ReLU(name=f"{name}_relu1")(layers.BatchNormalization(name=f"{name}_bn1")(
            conv(filters, 3, strides, "same", f"{name}_conv1")(x)))
        y = layers.BatchNormalization(name=f"{name}_bn2")(
            conv(filters, 3, 1, "same", f"{name}_conv2")(y))
        if strides != 1:
            x = layers.BatchNormalization(name=f"{name}_shortcut_bn")(
                conv(filters, 1, strides, "same", f"{name}_shortcut")(x))
        return layers.ReLU(name=name)(layers.Add(name=f"{name}_add")([x, y]))

    inputs = keras.Input((28, 28, 1))
    x = layers.ReLU(name="stem")(layers.BatchNormalization(name="stem_bn")(
        conv(8, 3, 2, "valid", "stem_conv")(inputs)))
    x = block(block(x, 8, 1, "block1"), 16, 2, "block2")
    outputs = layers.Dense(10, name="logits")(layers.Flatten(name="flatten")(x))
    return keras.Model(inputs, outputs, name="small_resnet")


def trained(arch: str, data):
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(0)
    net = architectures.lenet5() if arch == "lenet5" else small_resnet()
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    net.fit(x, y, epochs=1, batch_size=100, verbose=0)
    accuracy = float(np.mean(np.argmax(net.predict(x_test, verbose=0), axis=1) == y_test))
    return net, accuracy


def _torch_weights(layer) -> list:
    import torch

    return [torch.tensor(np.asarray(w), dtype=torch.float32) for w in layer.get_weights()]


def _conv(torch, layer, pad: int):
    kernel, *bias = _torch_weights(layer)
    conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[0],
                           stride=layer.strides, padding=pad, bias=bool(bias))
    with torch.no_grad():
        conv.weight.copy_(kernel.permute(3, 2, 0, 1))
        if bias:
            conv.bias.copy_(bias[0])
    return conv


def _bn(torch, layer):
    gamma, beta, mean, var = _torch_weights(layer)
    bn = torch.nn.BatchNorm2d(gamma.shape[0], eps=layer.epsilon)
    with torch.no_grad():
        bn.weight.copy_(gamma), bn.bias.copy_(beta)
        bn.running_mean.copy_(mean), bn.running_var.copy_(var)
    return bn.eval()


def _dense(torch, layer, from_nhwc: tuple | None = None):
    kernel, bias = (np.asarray(w) for w in layer.get_weights())
    if from_nhwc:  # Keras flattens (h, w, c); PyTorch (c, h, w)
        h, w, c = from_nhwc
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    linear = torch.nn.Linear(*kernel.shape)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(kernel.T))
        linear.bias.copy_(torch.tensor(bias))
    return linear


def torch_copy(net, arch: str):
    """The same network in PyTorch, NCHW ("same" padding of these odd kernels: symmetric)."""
    import torch

    get = net.get_layer
    if arch == "lenet5":
        return torch.nn.Sequential(
            _conv(torch, get("conv1"), 0), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            _conv(torch, get("conv2"), 0), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), _dense(torch, get("fc1"), (4, 4, 64)), torch.nn.ReLU(),
            _dense(torch, get("logits"))).eval()

    class Block(torch.nn.Module):
        def __init__(self, name, project):
            super().__init__()
            self.conv1, self.bn1 = _conv(torch, get(f"{name}_conv1"), 1), _bn(torch, get(
                f"{name}_bn1"))
            self.conv2, self.bn2 = _conv(torch, get(f"{name}_conv2"), 1), _bn(torch, get(
                f"{name}_bn2"))
            self.shortcut = torch.nn.Sequential(
                _conv(torch, get(f"{name}_shortcut"), 0), _bn(torch, get(f"{name}_shortcut_bn"))
            ) if project else torch.nn.Identity()

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(self.shortcut(x) + y)

    return torch.nn.Sequential(
        _conv(torch, get("stem_conv"), 0), _bn(torch, get("stem_bn")), torch.nn.ReLU(),
        Block("block1", False), Block("block2", True), torch.nn.Flatten(),
        _dense(torch, get("logits"), (7, 7, 16))).eval()


class Peer:
    """auto_LiRPA's CROWN lower margins on a torch copy; patches mode where it runs.

    `like=False` is auto_LiRPA as a user gets it: float32, and its sparse intermediate bounds
    (a neuron that interval bounds call stable keeps its interval bounds; only the others
    get CROWN's). `like=True` computes what `certify` computes: CROWN bounds for every neuron
    (`sparse_intermediate_bounds` off), in float64. The sparse bounds are the same relaxation
    of every ReLU but looser inputs to a max pooling, and which neurons count as stable is
    taken over the whole batch: on LeNet-5 they are looser at small batches (up to 2.5 on a
    margin at 1-10 digits, 3e-5 at 20)."""

    def __init__(self, net, arch: str, x: np.ndarray, y: np.ndarray, like: bool = False):
        import torch
        from auto_LiRPA import BoundedModule

        self.torch, self.y, self.like = torch, y, like
        self.dtype = torch.float64 if like else torch.float32
        with self._precision():
            self.x = torch.tensor(x.transpose(0, 3, 1, 2), dtype=self.dtype)
            copy = torch_copy(net, arch).to(self.dtype)
            with torch.no_grad():
                diff = np.abs(copy(self.x).numpy() - keras.ops.convert_to_numpy(net(x))).max()
            assert diff < 1e-4, f"the PyTorch copy of {arch} computes other logits ({diff:.2e})"
            self.copy_difference = float(diff)
            self.spec = torch.tensor(np.eye(10)[y][:, None, :] - np.eye(10)[None],
                                     dtype=self.dtype)
            self.mode = None
            for mode in ("patches", "matrix"):
                try:
                    options = {"conv_mode": mode, "sparse_intermediate_bounds": not like}
                    self.model = BoundedModule(copy, self.x[:1], bound_opts=options, verbose=0)
                    self.margins(np.full(2, EPS), points=2)  # also its first call, not timed
                    self.mode = mode
                    break
                except Exception as err:  # said in the output: the mode that ran is recorded
                    print(f"auto_LiRPA conv_mode {mode} on {arch}: {type(err).__name__}: "
                          f"{str(err)[:200]}", file=sys.stderr, flush=True)
        assert self.mode, f"auto_LiRPA bounds {arch} in no conv_mode"

    @contextlib.contextmanager
    def _precision(self):
        """torch's default dtype set to the peer's while it runs (auto_LiRPA's max pooling
        makes its own tensors in the default dtype)."""
        before = self.torch.get_default_dtype()
        self.torch.set_default_dtype(self.dtype)
        try:
            yield
        finally:
            self.torch.set_default_dtype(before)

    def margins(self, eps: np.ndarray, points: int | None = None) -> np.ndarray:
        """Lower margins of the first len(eps) (or `points`) digits, 20 at a time (10 in
        float64; 200 at once took more than this machine's 23 GB)."""
        n, chunk = len(eps) if points is None else points, 10 if self.like else 20
        with self._precision():
            return np.concatenate([self._margins(eps[i:i + chunk], i, min(n, i + chunk))
                                   for i in range(0, n, chunk)])

    def _margins(self, eps: np.ndarray, start: int, stop: int) -> np.ndarray:
        from auto_LiRPA import BoundedTensor, PerturbationLpNorm

        torch = self.torch
        x, spec = self.x[start:stop], self.spec[start:stop]
        e = torch.tensor(eps[:stop - start], dtype=self.dtype).view(-1, 1, 1, 1)
        region = PerturbationLpNorm(norm=np.inf, x_L=torch.clamp(x - e, 0, 1),
                                    x_U=torch.clamp(x + e, 0, 1))
        with torch.no_grad():
            lower, _ = self.model.compute_bounds(x=(BoundedTensor(x, region),), C=spec,
                                                 method="CROWN")
        lower = lower.numpy().astype(np.float64)
        lower[np.arange(stop - start), self.y[start:stop]] = np.inf
        return lower


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _radii(net, arch: str, x, y, like: bool) -> tuple:
    from certify_bench import _bisect  # the MLP comparison's bisection (beside this script)

    peer = Peer(net, arch, x, y, like=like)
    return _timed(lambda: _bisect(lambda e: peer.margins(e).min(axis=1) > 0, len(x), STEPS))


def compare(arch: str, net, accuracy: float, x, y, n: int, radius_n: int) -> dict:
    x, y = x[:n], y[:n]
    box = dict(clip_min=0.0, clip_max=1.0, method="crown")  # against auto_LiRPA's CROWN
    routes = certify.crown_plan(net)
    certify.lower_margins(net, x, y, EPS, **box)  # compiled for these shapes
    ours, ours_s = _timed(lambda: certify.lower_margins(net, x, y, EPS, **box))
    peer, like = Peer(net, arch, x, y), Peer(net, arch, x, y, like=True)
    theirs, theirs_s = _timed(lambda: peer.margins(np.full(n, EPS)))
    same, same_s = _timed(lambda: like.margins(np.full(n, EPS)))
    finite = np.isfinite(ours) & np.isfinite(theirs)
    bounds.INTERSECT_INTERVALS = False  # CROWN alone, as auto_LiRPA computes it
    certify._PROGRAMS.clear()
    alone = certify.lower_margins(net, x, y, EPS, **box)
    bounds.INTERSECT_INTERVALS = True
    certify._PROGRAMS.clear()
    certify.lower_margins(net, x, y, EPS, **box)  # compiled again
    print(f"{arch}: bounds {ours_s:.1f} s (ours), {theirs_s:.1f} s (auto_LiRPA), {same_s:.1f} s "
          "(auto_LiRPA, every neuron, float64)", file=sys.stderr, flush=True)

    xr, yr = x[:radius_n], y[:radius_n]
    correct = np.argmax(keras.ops.convert_to_numpy(net(xr)), axis=1) == yr
    our_radius, our_radius_s = _timed(lambda: certify.certified_radius(
        net, xr, yr, steps=STEPS, upper=np.ones(radius_n), **box))
    their_radius, their_radius_s = _radii(net, arch, xr, yr, like=False)
    same_radius, same_radius_s = _radii(net, arch, xr, yr, like=True)
    their_radius[~correct] = same_radius[~correct] = 0.0
    print(f"{arch}: radii {our_radius_s:.1f} s (ours), {their_radius_s:.1f} s (auto_LiRPA), "
          f"{same_radius_s:.1f} s (every neuron, float64)", file=sys.stderr, flush=True)
    attacked = attacks.fmn(net, xr, yr, norm="linf", steps=1000, **box).distances("linf")
    usable = correct & np.isfinite(attacked) & (attacked > 0)

    def ratios(other):
        both = (our_radius > 0) & (other > 0)
        ratio = our_radius[both] / other[both]
        return {"both_certified_somewhere": int(both.sum()),
                "median": float(np.median(ratio)) if both.any() else None,
                "min": float(ratio.min()) if both.any() else None,
                "max": float(ratio.max()) if both.any() else None,
                "median_radius": float(np.median(other[correct])),
                "tightness": float(np.median(other[usable] / attacked[usable])),
                "violations": int((other > attacked)[usable].sum())}

    return {
        "model": arch, "test_accuracy": accuracy, "points": n, "radius_points": radius_n,
        "auto_lirpa_conv_mode": peer.mode, "torch_copy_max_logit_difference":
            peer.copy_difference, "routes": [list(r) for r in routes],
        "bound_max_abs_difference": float(np.abs(ours[finite] - theirs[finite]).max()),
        "bound_median_difference": float(np.median(ours[finite] - theirs[finite])),
        "crown_alone_max_abs_difference": float(np.abs(alone[finite] - theirs[finite]).max()),
        "every_neuron_max_abs_difference": float(np.abs(alone[finite] - same[finite]).max()),
        "every_neuron_median_difference": float(np.median(alone[finite] - same[finite])),
        "certified_share_crown_alone": float((alone.min(axis=1) > 0).mean()),
        "certified_share_ours": float((ours.min(axis=1) > 0).mean()),
        "certified_share_theirs": float((theirs.min(axis=1) > 0).mean()),
        "certified_share_every_neuron": float((same.min(axis=1) > 0).mean()),
        "ours_bounds_s": ours_s, "theirs_bounds_s": theirs_s, "every_neuron_bounds_s": same_s,
        "radius_vs_theirs": ratios(their_radius), "radius_vs_every_neuron": ratios(same_radius),
        "median_radius_ours": float(np.median(our_radius[correct])),
        "median_attacked": float(np.median(attacked[usable])),
        "tightness_ours": float(np.median(our_radius[usable] / attacked[usable])),
        "violations_ours": int((our_radius > attacked)[usable].sum()),
        "ours_radii_s": our_radius_s, "theirs_radii_s": their_radius_s,
        "every_neuron_radii_s": same_radius_s,
    }


def _ratio(r: dict) -> str:
    if r["median"] is None:
        return "n/a"
    return f"{r['median']:.5f} ({r['min']:.5f}-{r['max']:.5f})"


def markdown(result: dict) -> str:
    """The tables, from the json alone (tests/test_benchmarks.py regenerates them)."""
    models = result["models"]
    out = [f"<!-- PYTHONPATH=LIRPA python benchmarks/crown_graphs_vs_lirpa.py "
           f"--n {models[0]['points']} --radius-n {models[0]['radius_points']} "
           f"({result['backend']}, torch {result['torch']}, auto_LiRPA {result['auto_lirpa']}, "
           f"{result['cpu']}, {result['cores']} cores) -->", "",
           f"CROWN's lower margin bounds at l_inf {result['eps']} in [0, 1], ours against "
           "auto_LiRPA's on the same weights (each network trained one epoch), auto_LiRPA run "
           "two ways: \"every neuron\" computes what `certify` computes (CROWN bounds for every "
           "hidden neuron, `sparse_intermediate_bounds` off, float64); \"defaults\" is what a "
           "user gets (float32; its sparse intermediate bounds keep the interval bounds of the "
           "neurons that intervals call stable, which loosens what a max pooling sees). Ours "
           "intersects every CROWN bound with the interval bound; \"CROWN alone\" turns that "
           "off. One call each, after a first call on two digits.", "",
           "| network | test acc. | auto_LiRPA mode | points | largest difference, CROWN alone "
           "vs every neuron | median | largest difference vs defaults (CROWN alone) | certified "
           "(ours / every neuron / defaults) | one call, s (ours / every neuron / defaults) | "
           "time ratio (vs every neuron, vs defaults) |", "|---" * 10 + "|"]
    for r in models:
        out.append(
            f"| {r['model']} | {100 * r['test_accuracy']:.1f} % | {r['auto_lirpa_conv_mode']} | "
            f"{r['points']} | {r['every_neuron_max_abs_difference']:.2e} | "
            f"{r['every_neuron_median_difference']:.2e} | {r['bound_max_abs_difference']:.2e} "
            f"({r['crown_alone_max_abs_difference']:.2e}) | "
            f"{100 * r['certified_share_ours']:.1f} / "
            f"{100 * r['certified_share_every_neuron']:.1f} / "
            f"{100 * r['certified_share_theirs']:.1f} % | {r['ours_bounds_s']:.2f} / "
            f"{r['every_neuron_bounds_s']:.2f} / {r['theirs_bounds_s']:.2f} | "
            f"x{r['ours_bounds_s'] / r['every_neuron_bounds_s']:.2f}, "
            f"x{r['ours_bounds_s'] / r['theirs_bounds_s']:.2f} |")
    out += ["", f"Certified l_inf radii ({STEPS}-step bisection on [0, 1]; auto_LiRPA bounds the "
            "points of one radius call together, so its defaults meet the small-batch case) and "
            "FMN's smallest l_inf adversarial (1,000 steps) on the first points:", "",
            "| network | points | our radius / every neuron's: median (min-max) | our radius "
            "/ defaults': median (min-max) | median radius (ours / every neuron / defaults) | "
            "median attacked | tightness (ours / every neuron / defaults) | radii time, s "
            "(ours / every neuron / defaults) | time ratio (vs every neuron, vs defaults) | "
            "radius > attack |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in models:
        same, theirs = r["radius_vs_every_neuron"], r["radius_vs_theirs"]
        out.append(
            f"| {r['model']} | {r['radius_points']} | {_ratio(same)} | {_ratio(theirs)} | "
            f"{r['median_radius_ours']:.5f} / {same['median_radius']:.5f} / "
            f"{theirs['median_radius']:.5f} | {r['median_attacked']:.4f} | "
            f"{r['tightness_ours']:.3f} / {same['tightness']:.3f} / {theirs['tightness']:.3f} | "
            f"{r['ours_radii_s']:.1f} / {r['every_neuron_radii_s']:.1f} / "
            f"{r['theirs_radii_s']:.1f} | x{r['ours_radii_s'] / r['every_neuron_radii_s']:.2f}, "
            f"x{r['ours_radii_s'] / r['theirs_radii_s']:.2f} | "
            f"{r['violations_ours'] + same['violations'] + theirs['violations']} |")
    routes = "; ".join(f"{r['model']}: " + (", ".join(
        f"{name} {route}" for name, route in r["routes"] if route != "dense") or "all dense")
        for r in models)
    out += ["", f"Our routes other than dense rows: {routes}. Peak memory of the whole run "
            f"(resident): {result['peak_rss_mib']:.0f} MiB."]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=200, help="test digits bounded (default 200)")
    parser.add_argument("--radius-n", type=int, default=20,
                        help="test digits whose radii are bisected (default 20)")
    parser.add_argument("--models", default="lenet5,resnet")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import auto_LiRPA
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    (x, y), _, (x_test, y_test) = datasets.load("mnist", validation=0, data_dir=args.data_dir)
    where = machine()  # as each run's environment.json records the processor
    result = {"keras": keras.__version__, "backend": keras.backend.backend(),
              "torch": torch.__version__, "auto_lirpa": auto_LiRPA.__version__,
              "cpu": where.get("cpu") or where["platform"], "cores": where["cores"],
              "eps": EPS, "models": []}
    for arch in args.models.split(","):
        net, accuracy = trained(arch, ((x, y), (x_test, y_test)))
        result["models"].append(compare(arch, net, accuracy, x_test, y_test, args.n,
                                        args.radius_n))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(markdown(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
