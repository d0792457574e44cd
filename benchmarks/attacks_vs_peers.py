"""The attacks against their peers, on the same trained models and the same real MNIST digits.

Everything is measured in this one process, side by side (TensorFlow backend; Foolbox runs on
the same Keras model through its TensorFlow wrapper; torchattacks on the same weights copied into
an equivalent PyTorch model, checked to give the same logits):

1. Minimum-norm attacks vs Foolbox 3.3.4 at equal steps (FMN l2 and l_inf, DDN: 100 steps;
   DeepFool: 50 steps, all classes, overshoot 0.02), on an MLP 1000-1000-1000 and LeNet-5 with
   inputs boxed to [0, 1]: median distance over the correctly classified points and images/s,
   calling the attack on batches of 100 and on one batch of 2,000.
2. FMN against DeepFool where Foolbox's FMN is weaker than DeepFool: a 784-256-256-10 MLP
   trained 2 epochs, 100 steps, 500 digits: our FMN's median must be at most 1.01x the smallest
   of Foolbox's L2FMNAttack, DDNAttack and DeepFool.
3. Robust accuracy by APGD-CE + APGD-T (targeted DLR, 9 targets) vs torchattacks 3.5.1's APGD and
   APGDT, l_inf 0.1 / 0.2 / 0.3, 100 steps, on the MLP and LeNet-5: ours must be no higher than
   theirs + 0.5 points (lower is stronger).
4. Lanes: every attack's images/s on one batch of all n digits (2,000 by default) against
   batches of 100.

    pip install foolbox==3.3.4 torch torchattacks==3.5.1
    python benchmarks/attacks_vs_peers.py --data-dir MNIST_DIR --out peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_margin import architectures, attacks, datasets  # noqa: E402
from keras_margin.attacks.apgd import run_schedule  # noqa: E402
from keras_margin.attacks.base import check_inputs, lp_norms  # noqa: E402

NORM_OF = {"fmn_l2": "l2", "fmn_linf": "linf", "ddn": "l2", "deepfool": "l2",
           "fmn_l2_from_deepfool": "l2"}


def train(name: str, x: np.ndarray, y: np.ndarray, epochs: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = {"mlp": architectures.mlp, "lenet5": architectures.lenet5,
             "mlp256": lambda: architectures.mlp(hidden=(256, 256))}[name]()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=100, verbose=0)
    return model


def ours(name: str, model, x, y, steps: int):
    """One call of our attack on (x, y); the perturbations."""
    box = {"clip_min": 0.0, "clip_max": 1.0}
    if name == "fmn_l2_from_deepfool":
        return attacks.fmn(model, x, y, steps=steps, init="deepfool", **box).perturbation
    if name == "deepfool":
        return attacks.deepfool(model, x, y, **box).perturbation
    if name == "ddn":
        return attacks.ddn(model, x, y, steps=steps, **box).perturbation
    return attacks.fmn(model, x, y, norm=NORM_OF[name], steps=steps, **box).perturbation


def foolbox(name: str, model, x, y, steps: int):
    import foolbox as fb

    fmodel = fb.TensorFlowModel(model, bounds=(0.0, 1.0))
    attack = {"fmn_l2": lambda: fb.attacks.L2FMNAttack(steps=steps),
              "fmn_linf": lambda: fb.attacks.LInfFMNAttack(steps=steps),
              "ddn": lambda: fb.attacks.DDNAttack(steps=steps),
              "deepfool": lambda: fb.attacks.L2DeepFoolAttack(steps=50, candidates=10,
                                                              overshoot=0.02)}[name]()
    # int64 labels: eagerpy compares them with argmax's dtype.
    _, clipped, _ = attack(fmodel, tf.constant(x), tf.constant(y, tf.int64), epsilons=None)
    return clipped.numpy() - x


def median_distance(model, x, y, perturbation, norm):
    """Median of ||r|| over the correctly classified points, inf where not adversarial."""
    correct = model.predict(x, verbose=0).argmax(axis=1) == y
    fooled = model.predict(x + perturbation, verbose=0).argmax(axis=1) != y
    d = np.where(fooled, lp_norms(perturbation, norm), np.inf)
    return float(np.median(d[correct])), float(fooled[correct].mean())


def timed(fn, x, y, batch):
    """(perturbations, images/s) calling fn on consecutive batches; one warm-up call first."""
    fn(x[:min(batch, 100)], y[:min(batch, 100)])
    start = time.perf_counter()
    parts = [fn(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(parts), len(x) / (time.perf_counter() - start)


def section_minimum_norm(models, x, y, steps, batches, rows):
    print("\n## 1. Minimum-norm attacks vs Foolbox 3.3.4 (equal steps, box [0, 1])\n")
    print("| model | attack | batch | ours median | Foolbox median | ours img/s | Foolbox img/s "
          "| speed-up | distance target | speed target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model_name, model in models.items():
        for name in ("fmn_l2", "fmn_linf", "ddn", "deepfool"):
            for batch in batches:
                r_ours, ips_ours = timed(
                    lambda a, b, name=name, model=model: ours(name, model, a, b, steps), x, y,
                    batch)
                r_fb, ips_fb = timed(
                    lambda a, b, name=name, model=model: foolbox(name, model, a, b, steps), x,
                    y, batch)
                m_ours, s_ours = median_distance(model, x, y, r_ours, NORM_OF[name])
                m_fb, s_fb = median_distance(model, x, y, r_fb, NORM_OF[name])
                row = {"section": "minimum_norm", "model": model_name, "attack": name,
                       "batch": batch, "ours_median": m_ours, "foolbox_median": m_fb,
                       "ours_success": s_ours, "foolbox_success": s_fb,
                       "ours_images_per_s": ips_ours, "foolbox_images_per_s": ips_fb}
                rows.append(row)
                print(f"| {model_name} | {name} | {batch} | {m_ours:.4f} | {m_fb:.4f} | "
                      f"{ips_ours:.0f} | {ips_fb:.0f} | {ips_ours / ips_fb:.1f}x | "
                      f"{'met' if m_ours <= 1.01 * m_fb else 'MISSED'} | "
                      f"{'met' if ips_ours >= 5 * ips_fb else 'MISSED'} |", flush=True)


def section_beat_deepfool(x_train, y_train, x, y, steps, rows):
    print("\n## 2. FMN against DeepFool: MLP 784-256-256-10, 2 epochs, 500 digits, box [0, 1]\n")
    model = train("mlp256", x_train, y_train, epochs=2)
    x, y = x[:500], y[:500]
    medians = {}
    for who, fn, names in (("ours", ours, ("fmn_l2", "fmn_l2_from_deepfool", "ddn",
                                           "deepfool")),
                           ("foolbox", foolbox, ("fmn_l2", "ddn", "deepfool"))):
        for name in names:
            r = fn(name, model, x, y, steps)
            medians[f"{who} {name}"] = median_distance(model, x, y, r, "l2")[0]
    best_peer = min(medians[f"foolbox {n}"] for n in ("fmn_l2", "ddn", "deepfool"))
    print("| attack | median l2 distance |\n|---|---|")
    for key, value in medians.items():
        print(f"| {key} | {value:.4f} |")
    for name in ("fmn_l2", "fmn_l2_from_deepfool"):
        ratio = medians[f"ours {name}"] / best_peer
        print(f"\nour {name} / best of Foolbox's FMN, DDN, DeepFool: {ratio:.4f}x "
              f"(target <= 1.01x: {'met' if ratio <= 1.01 else 'MISSED'})")
        rows.append({"section": "beat_deepfool", "attack": name, **medians, "ratio": ratio})


def torch_copy(name: str, model):
    """The same network in PyTorch (NCHW input, as torchattacks expects); checked below."""
    import torch
    from torch import nn

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]

    def linear(layer):
        kernel, bias = (w.numpy() for w in layer.weights)
        module = nn.Linear(kernel.shape[0], kernel.shape[1])
        module.weight.data = torch.tensor(kernel.T)
        module.bias.data = torch.tensor(bias)
        return module

    def conv(layer):
        kernel, bias = (w.numpy() for w in layer.weights)
        module = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2])
        module.weight.data = torch.tensor(kernel.transpose(3, 2, 0, 1))
        module.bias.data = torch.tensor(bias)
        return module

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([conv(c) for c in convs])
            self.dense = nn.ModuleList([linear(d) for d in dense])

        def forward(self, x):
            for c in self.convs:
                x = nn.functional.max_pool2d(torch.relu(c(x)), 2)
            x = x.permute(0, 2, 3, 1).reshape(len(x), -1)  # Keras flattens NHWC
            for i, d in enumerate(self.dense):
                x = d(x)
                if i < len(self.dense) - 1:
                    x = torch.relu(x)
            return x

    return Net().eval()


def section_apgd(models, x, y, budgets, steps, rows):
    import torch
    import torchattacks

    print("\n## 3. Robust accuracy, APGD-CE + APGD-T vs torchattacks 3.5.1 (l_inf, 100 steps)\n")
    print("| model | eps | ours | torchattacks | ours img/s | torchattacks img/s | target |")
    print("|---|---|---|---|---|---|---|")
    for model_name, model in models.items():
        net = torch_copy(model_name, model)
        xt, yt = torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(y, dtype=torch.long)
        gap = np.abs(net(xt).detach().numpy() - model.predict(x, verbose=0)).max()
        assert gap < 1e-3, f"the PyTorch copy differs from the Keras model by {gap}"
        inputs = check_inputs(model, x, y, 0.0, 1.0, "apgd")
        for eps in budgets:
            start = time.perf_counter()
            result = run_schedule(
                model, inputs, [attacks.APGD(steps=steps), attacks.APGD(
                    loss="dlr", targeted=True, steps=steps)], [eps], 256)[eps]
            ours_s = time.perf_counter() - start
            ours_acc = float((~result.success).mean())
            start = time.perf_counter()
            adv = torchattacks.APGD(net, norm="Linf", eps=eps, steps=steps, n_restarts=1,
                                    loss="ce", seed=0)(xt, yt)
            adv = _apgdt_on_survivors(net, xt, yt, adv, eps, steps)
            theirs_s = time.perf_counter() - start
            theirs_acc = float((net(adv).argmax(1) == yt).float().mean())
            rows.append({"section": "apgd", "model": model_name, "eps": eps,
                         "ours_robust_accuracy": ours_acc, "torchattacks_robust_accuracy":
                         theirs_acc, "ours_s": ours_s, "torchattacks_s": theirs_s})
            print(f"| {model_name} | {eps:g} | {100 * ours_acc:.1f} % | "
                  f"{100 * theirs_acc:.1f} % | {len(x) / ours_s:.0f} | {len(x) / theirs_s:.0f} | "
                  f"{'met' if ours_acc <= theirs_acc + 0.005 else 'MISSED'} |", flush=True)


def _apgdt_on_survivors(net, xt, yt, adv, eps, steps):
    """torchattacks' APGD-T on the points its APGD-CE left robust (AutoAttack's ensemble)."""
    import torch
    import torchattacks

    robust = (net(adv).argmax(1) == yt).nonzero().flatten()
    if len(robust):
        adv = adv.clone()
        adv[robust] = torchattacks.APGDT(net, norm="Linf", eps=eps, steps=steps, n_restarts=1,
                                         n_classes=10, seed=0)(xt[robust], yt[robust])
    return torch.clamp(adv, 0, 1)


def section_lanes(models, x, y, steps, rows):
    print(f"\n## 4. Lanes: images/s on one batch of {len(x)} vs batches of 100 (ours)\n")
    print(f"| model | attack | img/s batch 100 | img/s batch {len(x)} | ratio | target |")
    print("|---|---|---|---|---|---|")
    for model_name, model in models.items():
        fns = {name: (lambda a, b, name=name, model=model: ours(name, model, a, b, steps))
               for name in ("deepfool", "fmn_l2", "fmn_linf", "ddn")}
        fns["apgd_ce_0.1"] = lambda a, b, model=model: attacks.apgd(
            model, a, b, eps=0.1, steps=steps, clip_min=0.0, clip_max=1.0).perturbation
        for name, fn in fns.items():
            _, small = timed(fn, x, y, 100)
            _, large = timed(fn, x, y, len(x))
            rows.append({"section": "lanes", "model": model_name, "attack": name,
                         "images_per_s_100": small, "images_per_s_all": large,
                         "n": len(x)})
            print(f"| {model_name} | {name} | {small:.0f} | {large:.0f} | {large / small:.2f} | "
                  f"{'met' if large >= 0.75 * small else 'MISSED'} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None,
                        help="folder with MNIST's IDX files (README: Data)")
    parser.add_argument("--n", type=int, default=2000, help="attacked test digits")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the models")
    parser.add_argument("--models", default="mlp,lenet5")
    parser.add_argument("--sections", default="1,2,3,4")
    parser.add_argument("--apgd-n", type=int, default=500, help="digits for section 3")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()

    (x_train, y_train), _, (x_test, y_test) = datasets.load(
        "mnist", data_dir=args.data_dir, split="reference")
    x, y = x_test[:args.n], y_test[:args.n]
    sections = set(args.sections.split(","))
    models = {}
    for name in args.models.split(","):
        if sections & {"1", "3", "4"}:
            models[name] = train(name, x_train, y_train, args.epochs)
            error = (models[name].predict(x, verbose=0).argmax(axis=1) != y).mean()
            print(f"{name}: {args.epochs} epochs on {len(x_train)} MNIST digits, test error "
                  f"{error:.4f} on the {len(x)} attacked digits", flush=True)
    rows: list[dict] = []
    if "1" in sections:
        section_minimum_norm(models, x, y, args.steps, [100, len(x)], rows)
    if "2" in sections:
        section_beat_deepfool(x_train, y_train, x, y, args.steps, rows)
    if "3" in sections:
        section_apgd(models, x[:args.apgd_n], y[:args.apgd_n], [0.1, 0.2, 0.3], args.steps,
                     rows)
    if "4" in sections:
        section_lanes(models, x, y, args.steps, rows)
    print(f"\n{os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}, "
          f"Python {sys.version.split()[0]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
