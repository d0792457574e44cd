"""Where a run ran: the machine, the backend, the code's version (each run's environment.json),
and what is known to make a run slower than it needs to be there."""

from __future__ import annotations

import os
import time
from typing import Any

import keras
import numpy as np

import keras_margin
from keras_margin.experiments.files import read_json, write_json


def machine() -> dict[str, Any]:
    """The processor (model, cores, bfloat16 support) and the backend's devices."""
    import platform

    info: dict[str, Any] = {"platform": platform.platform(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.startswith("model name")), None)
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), [])
        info.update(cpu=model, avx512_bf16="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags)
    except OSError:
        info["cpu"] = platform.processor() or None
    if keras.backend.backend() == "jax":
        import jax

        info["devices"] = sorted({d.device_kind for d in jax.devices()})
    return info


def speed_advice(architecture: str, dtype_policy: str, backend: str, accelerator: bool,
                 cpu_bfloat16: bool) -> list[str]:
    """Why a run is about to be slower than it needs to be on this machine, as measured in
    docs/results/benchmarks/step_cost.md (empty when nothing is known)."""
    if accelerator:
        return []
    notes = []
    if backend == "jax" and architecture in ("lenet5", "nin"):
        notes.append("JAX runs convolutions on a CPU about 3x slower than TensorFlow (a LeNet-5 "
                     "margin step: 665 ms against 221 ms on 2 cores): for convolutional "
                     "networks on a CPU, set KERAS_BACKEND=tensorflow")
    if dtype_policy != "float32" and not cpu_bfloat16:
        notes.append("this CPU has no bfloat16 arithmetic (AVX-512 BF16 or AMX), so "
                     f"{dtype_policy} is no faster than float32 here (LeNet-5 on TensorFlow: "
                     "several times slower); it pays on chips that have it")
    return notes


def environment() -> dict[str, Any]:
    """What a run ran on: backend and its version, Keras, keras-margin, Python, the machine."""
    import importlib
    import platform

    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    version = getattr(importlib.import_module(module), "__version__", None) if module else None
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backend": backend, "backend_version": version, "keras": keras.__version__,
            "keras_margin": code_version(), "python": platform.python_version(),
            "numpy": np.__version__, "dtype_policy": keras.config.dtype_policy().name,
            "machine": machine()}


def record_environment(folder: str, start: int) -> dict[str, Any]:
    """Appends this start (or resume, from epoch `start`) to the folder's environment.json;
    returns it."""
    path = os.path.join(folder, "environment.json")
    sessions = read_json(path).get("sessions", []) if os.path.exists(path) else []
    sessions.append({**environment(), "from_epoch": start})
    write_json(path, {"sessions": sessions})
    return sessions[-1]


def code_version() -> str:
    """keras_margin's version, in a git checkout the commit, and the Keras backend (for the
    results' provenance)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(keras_margin.__file__))
    version = f"{keras_margin.__version__}"
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)
        version += f" ({commit.stdout.strip()})"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{version}, Keras {keras.__version__} on {keras.backend.backend()}"
