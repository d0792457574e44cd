"""Files of a run folder: atomic JSON, JSON errors that name the file, one process per folder.

No TensorFlow here: `keras-margin report` and `--help` import this, not the trainers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Any


def write_json(path: str, payload: Any) -> None:
    """Atomic: write a temporary file, then rename it over the target."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class RunLockedError(RuntimeError):
    """Another live process is training the same run folder."""


@contextlib.contextmanager
def run_lock(folder: str) -> Iterator[None]:
    """Holds `folder/.lock` for one process at a time; refuses at once if another holds it.

    An advisory `flock`, which the operating system releases when its process ends, however it
    ends: a killed run never leaves the folder locked. (Where `fcntl` is missing, no lock.)
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLockedError(
                f"{folder} is being trained by {holder}; refusing to train it twice. Wait for "
                "it, or stop it (a killed process releases the folder).") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: str) -> Any:
    """`json.load` whose errors name the file and what to do about it."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is truncated or not JSON ({err}). Delete it to let the run "
                         "start that step again.") from None




def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys ("row.trainer_kwargs.C")."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# What a run folder's config.json records but what does not change the run: the paper's
# numbers, the row's label (presentation) and the package version (metrics.json has the code).
NOT_IDENTITY = ("row.paper", "row.label", "keras_margin")


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config (upgraded, `upgrade_config`) without the `NOT_IDENTITY` keys: equal
    for the same run."""
    return {k: v for k, v in flatten(upgrade_config(config)).items()
            if not any(k == p or k.startswith(p + ".") for p in NOT_IDENTITY)}


# The files of a run folder that are evidence: what ran, where, every epoch's numbers, the
# final and the stronger evaluations with their per-point arrays. Never the models.
EVIDENCE = ("config.json", "environment.json", "history.csv", "metrics.json", "points*.npz",
            "adversarial.npz", "robustness*.json")


def publish(runs_dir: str, dest: str) -> list[str]:
    """Copies every run folder's evidence files under `runs_dir` to the same place under
    `dest` (checkpoints, `.keras` files, locks and temporary files stay behind); returns the
    run folders copied, relative to `runs_dir`."""
    copied = []
    for root, _, files in os.walk(runs_dir):
        if "config.json" not in files:
            continue
        relative = os.path.relpath(root, runs_dir)
        names = [f for f in files if any(fnmatch.fnmatch(f, p) for p in EVIDENCE)
                 and not f.endswith(".tmp")]
        os.makedirs(os.path.join(dest, relative), exist_ok=True)
        for name in sorted(names):
            shutil.copy2(os.path.join(root, name), os.path.join(dest, relative, name))
        copied.append(relative)
    return sorted(copied)


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config.json in today's form (a copy): older runs stored DeepFool's settings
    without its defaults norm "l2" and candidates None, and adversarial training's clean-loss
    weight as "alpha" (now "clean_weight"). Applied wherever a stored config is compared."""
    config = json.loads(json.dumps(config))
    row = config.get("row")
    if not isinstance(row, dict):
        return config
    deepfool = row.get("deepfool")
    if isinstance(deepfool, dict):
        row["deepfool"] = {"norm": "l2", "candidates": None, **deepfool}
    kwargs = row.get("trainer_kwargs")
    if row.get("trainer") == "at" and isinstance(kwargs, dict) and "alpha" in kwargs:
        kwargs["clean_weight"] = kwargs.pop("alpha")
    return config
