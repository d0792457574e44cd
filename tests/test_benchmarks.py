"""The prepared GPU script runs end to end (tiny settings, on the CPU of CI)."""

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
