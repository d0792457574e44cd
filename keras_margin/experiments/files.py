"""Files of a run folder: atomic JSON, JSON errors that name the file, one process per folder.

No TensorFlow here: `keras-margin report` and `--help` import this, not the trainers.
"""

from __future__ import annotations

import contextlib
import json
import os
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


