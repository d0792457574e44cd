"""AutoAttack against the reference (fra31/auto-attack, PyTorch) on the same weights and the
same MNIST test digits, side by side in one process (issue 25).

Per model (MLP 784-256-256-10, LeNet-5), training (plain, FGSM adversarial training at 0.3,
l2 margin maximization C = 0.1), attack seed and l_inf budget: the standard ensemble's robust
accuracy by `attacks.autoattack` and by the reference's `run_standard_evaluation`, and FAB-T
alone and Square alone (5,000 queries, the ensemble's settings) by each, with the time of
each. Every cell is one JSON line appended to OUT as it ends, so a stopped run resumes where
it was (a cell already in OUT is skipped) and a queue can run it over several sessions;
`--report` prints the Markdown table and verdicts from OUT alone.

    python benchmarks/autoattack_vs_reference.py --data-dir MNIST_DIR --reference AA_DIR \\
        --out ~/keras-margin-runs/autoattack_vs_reference.jsonl
    python benchmarks/autoattack_vs_reference.py --report \\
        --out docs/results/benchmarks/autoattack_vs_reference.jsonl \\
        > docs/results/benchmarks/autoattack_vs_reference.md

AA_DIR holds the `autoattack` package of github.com/fra31/auto-attack (needs torch).
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

from keras_margin import architectures, attacks, datasets  # noqa: E402
from keras_margin.experiments import environment  # noqa: E402
from keras_margin.training import AdversarialTrainingModel, MarginModel  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attacks_vs_peers import torch_copy  # noqa: E402

# The targets: the ensemble within 0.5 points of the reference, each attack within 1.
ENSEMBLE_GAP, MEMBER_GAP = 0.5, 1.0
REFERENCE_NAMES = {"fab-t": "fab-t", "square": "square"}


def train(arch: str, kind: str, x: np.ndarray, y: np.ndarray, epochs: int,
          cache: str) -> keras.Model:
    """The network of `arch` trained as `kind` (seed 0), kept in `cache` for a resumed run."""
    path = os.path.join(cache, f"{arch}-{kind}-e{epochs}.weights.h5")
    build = {"mlp256": lambda: architectures.mlp(hidden=(256, 256)),
             "lenet5": architectures.lenet5}[arch]
    if os.path.exists(path):
        net = build()
        net.load_weights(path)
        return net
    keras.utils.set_random_seed(0)
    net = build()
    model = {"plain": lambda: net,
             "at": lambda: AdversarialTrainingModel(net, eps=0.3, clip=(0.0, 1.0)),
             "l2-margin": lambda: MarginModel(net, C=0.1)}[kind]()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                  if kind == "plain" else None)
    model.fit(x, y, epochs=epochs, batch_size=100, verbose=0)
    os.makedirs(cache, exist_ok=True)
    net.save_weights(path)
    return net


def reference(net, x, y, eps, attack, seed):
    """The reference's robust points: the standard ensemble, or one of its attacks alone
    (its `run_standard_evaluation` with `version="custom"`, which keeps the ensemble's
    settings: FAB-T with 9 targets and one restart, Square's schedule per query)."""
    import torch
    from autoattack import AutoAttack

    runner = AutoAttack(net, norm="Linf", eps=eps, version="standard", seed=seed,
                        verbose=False, device="cpu")
    if attack != "standard":
        runner.attacks_to_run = [REFERENCE_NAMES[attack]]
    xt, yt = torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(y, dtype=torch.long)
    adv = runner.run_standard_evaluation(xt, yt, bs=500)
    with torch.no_grad():
        robust = net(adv).argmax(1).numpy() == y
    size = np.abs(adv.numpy().transpose(0, 2, 3, 1) - x).reshape(len(x), -1).max(1)
    assert (size <= eps * (1 + 1e-5)).all()
    return robust


def ours(model, x, y, eps, attack, seed):
    kwargs = {} if attack == "standard" else {"version": "custom", "attacks": [attack]}
    result = attacks.autoattack(model, x, y, eps=eps, seed=seed, clip_min=0.0, clip_max=1.0,
                                batch_size=500, **kwargs)
    return result.robust


def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.path.abspath(args.reference))
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = {tuple(json.loads(line)["cell"]) for line in f if line.strip()}
    (x_train, y_train), _, (x_test, y_test) = datasets.load("mnist", validation=0,
                                                            data_dir=args.data_dir)
    x, y = x_test[:args.n], y_test[:args.n]
    cache = os.path.join(os.path.dirname(os.path.abspath(args.out)), "autoattack-models")
    machine = {"cpu": environment.machine()["cpu"], "threads": os.cpu_count(),
               "keras": keras.__version__, "torch": torch.__version__}
    for arch in args.models.split(","):
        for kind in args.kinds.split(","):
            model = train(arch, kind, x_train[:args.train], y_train[:args.train], args.epochs,
                          cache)
            net = torch_copy(arch, model)
            with torch.no_grad():
                theirs = net(torch.tensor(x.transpose(0, 3, 1, 2))).numpy()
            np.testing.assert_allclose(theirs, keras.ops.convert_to_numpy(model(x)), atol=1e-4)
            for eps in (float(e) for e in args.budgets.split(",")):
                for seed in range(args.seeds):
                    for attack in args.attacks.split(","):
                        cell = (arch, kind, eps, seed, attack, args.n)
                        if cell in done:
                            continue
                        line = {"cell": list(cell), "machine": machine}
                        for who, fn, target in (("ours", ours, model),
                                                ("reference", reference, net)):
                            start = time.perf_counter()
                            robust = fn(target, x, y, eps, attack, seed)
                            line[f"{who}_s"] = time.perf_counter() - start
                            line[who] = float(robust.mean())
                        print(json.dumps(line), flush=True)
                        with open(args.out, "a") as f:
                            f.write(json.dumps(line) + "\n")


def report(path: str) -> None:
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines:
        raise SystemExit(f"{path} holds no cells yet.")
    machine = lines[0]["machine"]
    n = lines[0]["cell"][5]
    print(f"# AutoAttack (l_inf) vs the reference (fra31/auto-attack), {n} MNIST test digits\n")
    print(f"Generated by `python benchmarks/autoattack_vs_reference.py --report --out {path}` "
          f"from the cells in that file. CPU: {machine['cpu']}, {machine['threads']} threads; "
          f"Keras {machine['keras']} (TensorFlow), torch {machine['torch']}. Robust accuracy in "
          "%; a difference is ours minus the reference (negative: ours fools more).\n")
    print("| model | training | eps | attack | seeds | ours | reference | mean difference "
          "| largest | target | ours s | reference s | time ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list] = {}
    for line in lines:
        arch, kind, eps, _, attack, _ = line["cell"]
        groups.setdefault((arch, kind, eps, attack), []).append(line)
    verdicts = []
    for (arch, kind, eps, attack), cells in sorted(groups.items()):
        gaps = [100 * (c["ours"] - c["reference"]) for c in cells]
        target = ENSEMBLE_GAP if attack == "standard" else MEMBER_GAP
        mean = float(np.mean(gaps))
        met = abs(mean) <= target
        verdicts.append(met)
        ours_s = sum(c["ours_s"] for c in cells)
        ref_s = sum(c["reference_s"] for c in cells)
        print(f"| {arch} | {kind} | {eps:g} | {attack} | {len(cells)} | "
              f"{100 * np.mean([c['ours'] for c in cells]):.1f} | "
              f"{100 * np.mean([c['reference'] for c in cells]):.1f} | {mean:+.2f} | "
              f"{max(gaps, key=abs):+.1f} | {'met' if met else 'MISSED'} (±{target:g}) | "
              f"{ours_s:.0f} | {ref_s:.0f} | {ours_s / ref_s:.2f} |")
    print(f"\n{sum(verdicts)} of {len(verdicts)} groups within their target (the ensemble "
          f"±{ENSEMBLE_GAP:g} points, an attack alone ±{MEMBER_GAP:g}, on the seeds' mean).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the cells, one JSON line each")
    parser.add_argument("--report", action="store_true", help="print the table from --out")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--reference", default=None, help="folder holding autoattack/")
    parser.add_argument("--models", default="mlp256,lenet5")
    parser.add_argument("--kinds", default="plain,at,l2-margin")
    parser.add_argument("--budgets", default="0.1,0.2,0.3")
    parser.add_argument("--attacks", default="standard,fab-t,square")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train", type=int, default=10000, help="training digits")
    args = parser.parse_args()
    if args.report:
        report(args.out)
    else:
        if args.reference is None:
            parser.error("--reference is required to run the cells")
        run(args)


if __name__ == "__main__":
    main()
