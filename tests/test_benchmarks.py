"""The prepared GPU script runs end to end (tiny settings, on the CPU of CI); published
benchmark tables regenerate from their raw files, and the README quotes them as they are."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow
def test_the_gpu_script_runs_on_a_cpu_with_tiny_settings(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep +
           os.environ.get("PATH", "")}
    env.pop("MNIST_DIR", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), str(tmp_path),
                           "--backend", "tensorflow", "--tiny"], capture_output=True,
                          text=True, timeout=1200, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    for name in ("device.txt", "step_cost_16.json", "step_cost_16.md", "mlp_l2_run.log",
                 "attacks.log"):
        assert os.path.getsize(tmp_path / name) > 0, name
    assert "| mlp | jacobian |" in (tmp_path / "step_cost_16.md").read_text()
    assert "rho_fmn_l2" in (tmp_path / "attacks.log").read_text()


@pytest.mark.parametrize("script,name", [("certified_training_vs_lirpa", "certified_training"),
                                         ("certified_step_cost", "certified_step_cost"),
                                         ("resnet_step_cost", "resnet_step_cost"),
                                         ("crown_graphs_vs_lirpa", "crown_graphs"),
                                         ("crown_auto", "crown_auto"),
                                         ("certify_memory", "certify_memory")])
def test_the_certified_training_tables_regenerate_from_their_json(script, name):
    """docs/results/benchmarks/NAME.md is what the script prints from NAME.json (no hand edits);
    the README quotes those tables."""
    import importlib.util
    import json

    root = os.path.join(os.path.dirname(__file__), "..")
    spec = importlib.util.spec_from_file_location(
        script, os.path.join(root, "benchmarks", script + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = os.path.join(root, "docs", "results", "benchmarks")
    with open(os.path.join(folder, name + ".json")) as f:
        report = json.load(f)
    with open(os.path.join(folder, name + ".md")) as f:
        table = f.read()
    assert table == module.markdown(report) + "\n"
    if name == "certified_training":  # the README's copy of the table, row by row
        with open(os.path.join(root, "README.md")) as f:
            readme = f.read()
        rows = [line for line in table.splitlines() if line.startswith(("| mlp", "| cnn"))]
        assert len(rows) == 12 and all(row in readme for row in rows[:8]), rows


def test_the_readme_resnet_figures_are_the_benchmarks():
    """Every ratio and memory figure of the README's ResNet-20 paragraph is in its json."""
    import json

    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "docs", "results", "benchmarks", "resnet_step_cost.json")) as f:
        report = json.load(f)
    with open(os.path.join(root, "README.md")) as f:
        readme = f.read()
    start = readme.index("**ResNet-20 training steps**")
    paragraph = " ".join(readme[start:readme.index("\n\n", start)].split())
    ratio = {(r["backend"], r["mode"]): f"x{r['ratio_to_plain']:.2f}" for r in report["rows"]}
    rss = {(m["backend"], m["mode"]): f"{m['peak_rss_mib']:.0f}" for m in report["memory"]}
    for mode in ("margin", "margin-logit", "margin-hidden", "large-margin"):
        assert f"{ratio['tensorflow', mode]} and {ratio['jax', mode]}" in paragraph.replace(
            " on TensorFlow and ", " and ").replace(" on JAX", ""), mode
    for mode in ("plain", "margin", "margin-hidden", "large-margin", "none"):
        assert f"{rss['tensorflow', mode]} / {rss['jax', mode]} MiB" in paragraph, mode


def test_the_readme_auto_figures_are_the_benchmarks():
    """The README's figures for method="auto" are its benchmark's json: the rate at the default
    budget, the layers it pays for, full CROWN's cost and the margins' gain over crown-ibp."""
    import json

    from keras_margin.propagation import bounds

    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "docs", "results", "benchmarks", "crown_auto.json")) as f:
        report = json.load(f)
    with open(os.path.join(root, "README.md")) as f:
        readme = " ".join(f.read().split())
    ibp, *autos = report["rows"]
    (default,) = [r for r in autos if r["budget"] == report["default_budget"]]
    assert report["default_budget"] == bounds.AUTO_BUDGET == 2 ** 27 and "2^27 per point" in readme
    rate = default["seconds"] / (report["points"] * default["cost_per_point"] / 1e9)
    full = report["full_crown_cost_per_point"]
    gain = ibp["median_smallest_margin"] / default["median_smallest_margin"]
    for figure in (f"about {rate:.1f} s per 1e9",
                   f"the first {default['crown_layers']} of {default['layers']} layers",
                   f"cost {full:.3g} entries per point, {full / bounds.AUTO_BUDGET:.0f} times",
                   f"are {gain:.0f} times tighter",
                   f"at {default['seconds'] / ibp['seconds']:.1f} times the time"):
        assert figure in readme, figure
    assert all(r["certified_share"] == 0 for r in report["rows"]) and "prove nothing" in readme


def test_the_memory_check_covers_the_measured_peaks():
    """certify's memory estimate (the largest growing step, `memory.COPIES` or
    `PATCH_COPIES` times its rows, beside the layer bounds held throughout) is at least what
    each whole call took above the process's memory before it, in certify_memory.json."""
    import json

    import numpy as np

    from keras_margin import architectures, certify
    from keras_margin.propagation import bounds, memory

    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "docs", "results", "benchmarks", "certify_memory.json")) as f:
        report = json.load(f)
    assert {(r["model"], r["method"]) for r in report["rows"]} >= {
        ("lenet5", "auto"), ("resnet20", "auto"), ("resnet20", "crown-ibp")}
    for row in report["rows"]:
        net = architectures.lenet5() if row["model"] == "lenet5" else \
            architectures.resnet20(input_shape=(28, 28, 1))
        operations = certify.chain_of(net)
        batch = row["batch_size"]
        steps = bounds.growing_steps(operations, (28, 28, 1), batch, row["method"])
        needed = max(memory.needed_bytes(floats, np.float64, layout)
                     for _, floats, layout in steps) + \
            bounds.held_floats(operations, (28, 28, 1), batch) * 8
        measured = (row["peak_mib"] - row["peak_before_mib"]) * 2 ** 20
        assert needed >= measured, (row["model"], row["method"], needed / 2 ** 20,
                                    measured / 2 ** 20)
    with open(os.path.join(root, "README.md")) as f:
        readme = " ".join(f.read().split())
    above = {(r["model"], r["method"]): round(r["peak_mib"] - r["peak_before_mib"])
             for r in report["rows"]}
    assert (f"peaked {above['lenet5', 'auto']} MiB above the process's start on LeNet-5 and "
            f"{above['resnet20', 'auto']} MiB on a ResNet-20 (`\"crown-ibp\"`: "
            f"{above['lenet5', 'crown-ibp']} and {above['resnet20', 'crown-ibp']} MiB") in readme
