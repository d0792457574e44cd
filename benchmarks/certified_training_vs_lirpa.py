"""Certified training against the peer on the same work: CertifiedTrainingModel and auto_LiRPA's
own IBP / CROWN-IBP training (issue 27).

    PYTHONPATH=LIRPA python benchmarks/certified_training_vs_lirpa.py --data-dir DIR \\
        --lirpa LIRPA --out docs/results/benchmarks/certified_training.json \\
        > docs/results/benchmarks/certified_training.md

LIRPA holds auto_LiRPA's GitHub release (its `auto_LiRPA/` and
`examples/vision/models/feedforward.py`; PyPI's 0.3 pins torch < 1.13), with appdirs, pyyaml,
tqdm and graphviz installed. For each architecture of auto_LiRPA's MNIST example
(`mlp_3layer`, `cnn_4layer`) and each method (IBP; CROWN-IBP, Zhang et al.: IBP's
intermediate bounds, auto_LiRPA's method="CROWN-IBP"), both libraries train the same
network from the same initial weights (auto_LiRPA's PyTorch init, copied into Keras), on the
same 60,000 training digits in the same order (one seeded permutation per epoch), with the
example's loss (the robust cross-entropy alone once eps > 0, the clean one at eps 0), its
LinearScheduler (eps 0 before epoch `start`, then linear over `length` epochs, per batch),
CROWN-IBP's beta = 1 - eps / eps_max, Adam at the example's 5e-4 and its batch of 256
(the example's StepLR halves the rate only 10 epochs after eps reaches its maximum: never
within these epochs). Then, on the first `--test` test digits: clean accuracy, and the
certified accuracy at l_inf eps (in [0, 1]) by IBP and by CROWN, each measured by both
libraries on both networks (our weights copied into PyTorch, theirs into Keras). Training
time per epoch is measured side by side in one run; the CPU is recorded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_margin  # noqa: E402, F401, I001 - first: TensorFlow without its start-up noise

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_margin import CertifiedTrainingModel, ThreatModel, certify, datasets  # noqa: E402

ARCHITECTURES = ("mlp_3layer", "cnn_4layer")
METHODS = ("ibp", "crown-ibp")


def torch_models(lirpa: str):
    """auto_LiRPA's example architectures, from its own file."""
    path = os.path.join(lirpa, "examples", "vision", "models", "feedforward.py")
    spec = importlib.util.spec_from_file_location("lirpa_feedforward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keras_twin(arch: str) -> keras.Model:
    """The same network in Keras, channels last (torch's padding 1 = Keras's 'same' here)."""
    layers = keras.layers
    if arch == "mlp_3layer":
        body = [layers.Flatten(), layers.Dense(256, activation="relu"),
                layers.Dense(128, activation="relu"), layers.Dense(10)]
    else:
        body = [layers.Conv2D(8, 4, strides=2, padding="same", activation="relu"),
                layers.Conv2D(16, 4, strides=2, padding="same", activation="relu"),
                layers.Flatten(), layers.Dense(256, activation="relu"), layers.Dense(10)]
    return keras.Sequential([keras.Input((28, 28, 1))] + body)


def torch_to_keras(torch_net, net: keras.Model) -> None:
    """Copies weights; a Dense after a Flatten of a (C, H, W) map gets its rows reordered to
    Keras's (H, W, C)."""
    params = [p.detach().numpy().astype(np.float64) for p in torch_net.parameters()]
    weighted = [layer for layer in net.layers if layer.weights]
    previous = None
    for layer, (w, b) in zip(weighted, zip(params[0::2], params[1::2])):
        if isinstance(layer, keras.layers.Conv2D):
            layer.set_weights([w.transpose(2, 3, 1, 0), b])
        else:
            if isinstance(previous, keras.layers.Conv2D):
                h, wd, c = previous.output.shape[1:]
                w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            layer.set_weights([w.T, b])
        previous = layer


def keras_to_torch(net: keras.Model, torch_net) -> None:
    import torch

    weighted = [layer for layer in net.layers if layer.weights]
    params = list(torch_net.parameters())
    previous = None
    with torch.no_grad():
        for i, layer in enumerate(weighted):
            w, b = (np.asarray(v, np.float32) for v in layer.get_weights())
            if isinstance(layer, keras.layers.Conv2D):
                w = w.transpose(3, 2, 0, 1)
            else:
                w = w.T
                if isinstance(previous, keras.layers.Conv2D):
                    h, wd, c = previous.output.shape[1:]
                    w = w.reshape(-1, h, wd, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
            params[2 * i].copy_(torch.from_numpy(np.ascontiguousarray(w)))
            params[2 * i + 1].copy_(torch.from_numpy(b))
            previous = layer


def eps_at(step: int, steps: int, start: int, length: int, eps: float) -> float:
    """auto_LiRPA's LinearScheduler at 0-based global step (epochs from 1, `steps` per
    epoch): max(0, (step - (start - 1) steps) / (length steps)) of eps, at most eps."""
    t = (step - (start - 1) * steps) / (length * steps)
    return eps * min(max(t, 0.0), 1.0)


def lirpa_train(torch_net, x, y, orders, batch, eps, start, length, method, lr):
    """auto_LiRPA's example loop (simple_training.py's Train), our orders of the data."""
    import torch
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    model = BoundedModule(torch_net, torch.zeros((2, 1, 28, 28)),
                          bound_opts={"conv_mode": "patches"}, device="cpu")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = math.ceil(len(x) / batch)
    eye = torch.eye(10)
    step, times = 0, []
    for order in orders:
        model.train()
        began = time.perf_counter()
        for i in range(steps):
            index = order[i * batch:(i + 1) * batch]
            data = torch.from_numpy(x[index].transpose(0, 3, 1, 2).copy())
            labels = torch.from_numpy(y[index].astype(np.int64))
            e = eps_at(step, steps, start, length, eps)
            step += 1
            opt.zero_grad()
            c = eye[labels].unsqueeze(1) - eye.unsqueeze(0)
            keep = ~(labels.unsqueeze(1) == torch.arange(10).unsqueeze(0))
            c = c[keep].view(len(labels), 9, 10)
            ptb = PerturbationLpNorm(norm=np.inf, eps=e, x_L=(data - e).clamp(0, 1),
                                     x_U=(data + e).clamp(0, 1))
            output = model(BoundedTensor(data, ptb))
            if e < 1e-20:
                loss = torch.nn.functional.cross_entropy(output, labels)
            else:
                lb, _ = model.compute_bounds(IBP=True, C=c, method=None)
                factor = (eps - e) / eps
                if method == "crown-ibp" and factor >= 1e-5:
                    clb, _ = model.compute_bounds(IBP=True, C=c, method="backward",
                                                  bound_upper=False)
                    lb = clb * factor + lb * (1 - factor)
                padded = torch.cat((torch.zeros(len(lb), 1), lb), dim=1)
                loss = torch.nn.functional.cross_entropy(-padded, torch.zeros(len(lb),
                                                                              dtype=torch.int64))
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - began)
    return times


def ours_train(net, x, y, orders, batch, eps, start, length, method, lr):
    steps = math.ceil(len(x) / batch)
    model = CertifiedTrainingModel(net, threat=ThreatModel("linf", eps, 0.0, 1.0),
                                   method=method, kappa=(0.0, 0.0), beta=(1.0, 0.0),
                                   ramp=((start - 1) * steps, (start - 1 + length) * steps))
    model.compile(optimizer=keras.optimizers.Adam(lr))
    times = []
    for order in orders:
        began = time.perf_counter()
        model.fit(x[order], y[order], batch_size=batch, epochs=1, shuffle=False, verbose=0)
        times.append(time.perf_counter() - began)
    return times


def lirpa_certified(torch_net, x, y, eps, method) -> np.ndarray:
    """auto_LiRPA's bounds of f_y - f_j at l_inf eps inside [0, 1]: all > 0."""
    import torch
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    model = BoundedModule(torch_net, torch.zeros((2, 1, 28, 28)),
                          bound_opts={"conv_mode": "patches"}, device="cpu")
    model.eval()
    eye = torch.eye(10)
    out = []
    for s in range(0, len(x), 100):
        data = torch.from_numpy(x[s:s + 100].transpose(0, 3, 1, 2).copy())
        labels = torch.from_numpy(y[s:s + 100].astype(np.int64))
        c = eye[labels].unsqueeze(1) - eye.unsqueeze(0)
        keep = ~(labels.unsqueeze(1) == torch.arange(10).unsqueeze(0))
        c = c[keep].view(len(labels), 9, 10)
        ptb = PerturbationLpNorm(norm=np.inf, eps=eps, x_L=(data - eps).clamp(0, 1),
                                 x_U=(data + eps).clamp(0, 1))
        with torch.no_grad():
            lb, _ = model.compute_bounds(x=(BoundedTensor(data, ptb),), C=c,
                                         method="IBP" if method == "ibp" else "CROWN",
                                         bound_upper=False)
        out.append((lb > 0).all(dim=1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--lirpa", required=True, help="folder of auto_LiRPA's release")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--start", type=int, default=2)
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=None)
    parser.add_argument("--from-json", default=None,
                        help="print the tables of a saved --out file (no training)")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            print(markdown(json.load(f)))
        return

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    feedforward = torch_models(args.lirpa)
    (x, y), _, (x_test, y_test) = datasets.load("mnist", validation=0, data_dir=args.data_dir)
    x_test, y_test = x_test[:args.test], y_test[:args.test]
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(x)) for _ in range(args.epochs)]
    results = []
    for arch in args.archs.split(","):
        for method in args.methods.split(","):
            torch.manual_seed(0)
            theirs = getattr(feedforward, arch)(in_ch=1, in_dim=28)
            ours = keras_twin(arch)
            torch_to_keras(theirs, ours)
            settings = (args.batch, args.eps, args.start, args.length, method, args.lr)
            our_times = ours_train(ours, x, y, orders, *settings)
            their_times = lirpa_train(theirs, x, y, orders, *settings)
            row = {"arch": arch, "method": method, "our_epoch_s": our_times,
                   "their_epoch_s": their_times}
            theirs_in_keras = keras_twin(arch)
            torch_to_keras(theirs, theirs_in_keras)
            ours_in_torch = getattr(feedforward, arch)(in_ch=1, in_dim=28)
            keras_to_torch(ours, ours_in_torch)
            for who, keras_net, torch_net in (("ours", ours, ours_in_torch),
                                              ("theirs", theirs_in_keras, theirs)):
                logits = keras.ops.convert_to_numpy(keras_net.predict(x_test, verbose=0))
                row[f"{who}_clean_accuracy"] = float((logits.argmax(1) == y_test).mean())
                for bound in ("ibp", "crown"):
                    by_us = certify.certify(keras_net, x_test, y_test, eps=args.eps,
                                            norm="linf", method=bound, clip_min=0.0,
                                            clip_max=1.0)
                    by_them = lirpa_certified(torch_net, x_test, y_test, args.eps, bound)
                    row[f"{who}_certified_{bound}_by_us"] = float(by_us.mean())
                    row[f"{who}_certified_{bound}_by_lirpa"] = float(by_them.mean())
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    report = {"cpu": cpu(), "commit": commit(), "args": vars(args),
              "keras": keras.__version__, "backend": keras.backend.backend(),
              "torch": torch.__version__, "rows": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(markdown(report))


def cpu() -> str:
    """The processor and its cores, as each run's environment.json records them."""
    from keras_margin.experiments.environment import machine

    where = machine()
    return f"{where.get('cpu') or where['platform']}, {where['cores']} cores"


def commit() -> str:
    """The keras-margin commit that ran (with "+changes" when the work tree differs)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(report: dict) -> str:
    a = report["args"]
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in a.items()
                       if k in ("epochs", "start", "length", "eps", "batch", "lr", "test"))
    lines = [f"<!-- PYTHONPATH=LIRPA python benchmarks/certified_training_vs_lirpa.py "
             f"--data-dir DIR --lirpa LIRPA {options} -->",
             "# Certified training: CertifiedTrainingModel and auto_LiRPA on the same work\n",
             f"MNIST, 60,000 training digits, {a['epochs']} epochs, batch {a['batch']}, Adam "
             f"{a['lr']}, l_inf eps {a['eps']} ramped over epochs {a['start']}-"
             f"{a['start'] + a['length'] - 1}; {a['test']} test digits. Keras "
             f"{report['keras']} ({report['backend']}), torch {report['torch']}; "
             f"{report.get('cpu', '?')}; keras-margin {report.get('commit', '?')}.\n",
             "| network | method | trained by | clean acc. | certified IBP (ours / auto_LiRPA) "
             "| certified CROWN (ours / auto_LiRPA) | s per epoch (median) |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        for who, label, times in (("ours", "keras-margin", row["our_epoch_s"]),
                                  ("theirs", "auto_LiRPA", row["their_epoch_s"])):
            lines.append(
                f"| {row['arch']} | {row['method']} | {label} | "
                f"{100 * row[f'{who}_clean_accuracy']:.1f} % | "
                f"{100 * row[f'{who}_certified_ibp_by_us']:.1f} / "
                f"{100 * row[f'{who}_certified_ibp_by_lirpa']:.1f} % | "
                f"{100 * row[f'{who}_certified_crown_by_us']:.1f} / "
                f"{100 * row[f'{who}_certified_crown_by_lirpa']:.1f} % | "
                f"{np.median(times):.1f} |")
    lines += ["", "Seconds per epoch by phase (median over its epochs), ours / auto_LiRPA's:",
              "", "| network | method | eps 0 | ramp (CROWN-IBP: CROWN's pass every step) "
              "| after the ramp | all epochs |", "|---|---|---|---|---|---|"]
    first, last = a["start"], a["start"] + a["length"] - 1  # epochs numbered from 1
    phases = (range(1, first), range(first, last + 1), range(last + 1, a["epochs"] + 1),
              range(1, a["epochs"] + 1))
    for row in report["rows"]:
        cells = []
        for epochs in phases:
            ours = [row["our_epoch_s"][e - 1] for e in epochs]
            theirs = [row["their_epoch_s"][e - 1] for e in epochs]
            cells.append(f"{np.median(ours):.1f} / {np.median(theirs):.1f} "
                         f"(x{np.median(ours) / np.median(theirs):.2f})" if ours else "-")
        lines.append(f"| {row['arch']} | {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
