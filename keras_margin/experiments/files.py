"""Files of a run folder: one atomic writer (JSON, text, arrays, models), JSON errors that
name the file, one process per folder.

No TensorFlow here: `keras-margin report` and `--help` import this, not the trainers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import socket
import warnings
from collections.abc import Callable, Iterator
from typing import Any


def write_json(path: str, payload: Any) -> None:
    """Atomic: write a temporary file, then rename it over the target."""
    write_text(path, json.dumps(payload, indent=1, sort_keys=True))


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` whole or not at all (`write_atomically`)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)

    write_atomically(path, write)


def write_npz(path: str, arrays: dict[str, Any]) -> None:
    """Saves `arrays` compressed to `path` (an .npz) whole or not at all."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    write_atomically(path, write)


def save_model(model: Any, path: str) -> None:
    """`model.save(path)` (a .keras file) whole or not at all."""
    write_atomically(path, model.save, suffix=".keras")


def write_atomically(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """The one writer of a run's files: `write(tmp)` makes a temporary file beside `path`,
    which is then flushed to the disk and renamed over it, and the rename flushed too: a
    crash or power cut leaves the old file or the new one, never a torn or empty one. A failed
    write (a full disk, a read-only folder) leaves the old file as it was and raises an
    `OSError` that says so in one line."""
    tmp = f"{path}.{os.getpid()}.tmp{suffix}"
    try:
        write(tmp)
        _flush(tmp)
        if os.path.exists(path):
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
        _flush(os.path.dirname(os.path.abspath(path)), folder=True)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        kept = "left as it was" if os.path.exists(path) else "not written"
        raise OSError(err.errno, f"Could not write {path} ({err.strerror or err}); the file "
                      f"is {kept}.") from None


def _flush(path: str, folder: bool = False) -> None:
    """fsync a file (or, best effort, a folder's entries: not every system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


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


def _evidence(folder: str) -> list[str]:
    """The evidence files of one run folder (`EVIDENCE`), without temporary files."""
    return sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))
                  and any(fnmatch.fnmatch(f, p) for p in EVIDENCE) and not f.endswith(".tmp"))


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_publishable(source: str, target: str) -> None:
    """Refuses to replace a published run by another run or by an unfinished one."""
    if not os.path.exists(os.path.join(target, "config.json")):
        return
    old, new = (run_identity(read_json(os.path.join(f, "config.json")))
                for f in (target, source))
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"{target} holds another run than {source} (their configs differ in "
                         f"{', '.join(changed[:5])}); refusing to publish over it. Publish "
                         "into another folder, or delete the old one first.")
    if os.path.exists(os.path.join(target, "metrics.json")) and \
            not os.path.exists(os.path.join(source, "metrics.json")):
        raise ValueError(f"{source} has not finished (no metrics.json) but {target} holds the "
                         "finished run; refusing to replace its evidence by less. Publish once "
                         "the run has finished.")


RUN_FILES = ("environment.json", "history.csv", "points.npz")  # beside config and metrics


def _copied_numbers_only(source: str) -> bool:
    """A finished-looking folder without a run's own files (a run queue copies a published
    seed's config.json and metrics.json so that `reproduce` skips it): never published, since
    it would replace the publication's evidence by those two files; said in a warning."""
    missing = [f for f in RUN_FILES if not os.path.exists(os.path.join(source, f))]
    if not os.path.exists(os.path.join(source, "metrics.json")) or not missing:
        return False
    warnings.warn(f"publish: {source} has metrics.json but no {', '.join(missing)}: not a run's "
                  "evidence (a copy of a published run's numbers?); skipped.", stacklevel=3)
    return True


def publish(runs_dir: str, dest: str) -> list[str]:
    """Makes each run folder under `runs_dir` hold, at the same place under `dest`, exactly
    that run's evidence files (checkpoints, `.keras` files, locks and temporary files stay
    behind; evidence files of an earlier publication that the run no longer has are removed).
    Each file is copied to a temporary name and renamed. Refused, before anything is copied:
    a `dest` inside `runs_dir` (the publication would be published into itself), and a
    destination folder that holds another run or a finished run where the source has not
    finished. Skipped, with a warning: a folder with metrics.json but without the run's own
    files (`RUN_FILES`). Returns the run folders copied, relative to `runs_dir`."""
    if not os.path.isdir(runs_dir):
        raise FileNotFoundError(f"No folder {runs_dir}.")
    if _inside(dest, runs_dir) or _inside(runs_dir, dest):
        raise ValueError(f"Invalid value for dest: {dest!r} and the runs folder {runs_dir!r} "
                         "lie one inside the other; the publication would copy itself. "
                         "Publish into a folder outside the runs folder.")
    sources = sorted(os.path.relpath(root, runs_dir) for root, _, files in os.walk(runs_dir)
                     if "config.json" in files)
    sources = [r for r in sources if not _copied_numbers_only(os.path.join(runs_dir, r))]
    for relative in sources:
        _check_publishable(os.path.join(runs_dir, relative), os.path.join(dest, relative))
    for relative in sources:
        _publish_run(os.path.join(runs_dir, relative), os.path.join(dest, relative))
    return sources


def _publish_run(source: str, target: str) -> None:
    """The run's evidence staged in a folder beside `target`, then swapped in by renames: a
    failure (a full disk) leaves `target` as it was and no staged files behind."""
    parent, name = os.path.split(os.path.normpath(target))
    os.makedirs(parent, exist_ok=True)
    stage, old = (os.path.join(parent, f".{name}.{kind}.{os.getpid()}")
                  for kind in ("publishing", "replaced"))
    try:  # copies: the step that needs space, and may fail
        os.makedirs(stage)
        for file in _evidence(source):
            shutil.copy2(os.path.join(source, file), os.path.join(stage, file))
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if os.path.isdir(target):  # renames only from here: what is not evidence stays
        for file in set(os.listdir(target)) - set(_evidence(target)):
            os.replace(os.path.join(target, file), os.path.join(stage, file))
        os.replace(target, old)
    os.replace(stage, target)
    shutil.rmtree(old, ignore_errors=True)


def check_unique_runs(folders: list[str]) -> None:
    """Refuses two run folders that hold the same run (its config and seed): a copy of a run
    (a backup, a publication inside the runs folder) would count as a second seed."""
    seen: dict[str, str] = {}
    for folder in folders:
        path = os.path.join(folder, "config.json")
        if not os.path.exists(path):
            continue
        key = json.dumps(run_identity(read_json(path)), sort_keys=True)
        if key in seen:
            raise ValueError(f"{seen[key]} and {folder} hold the same run (the same config "
                             "and seed): a copy would count as a second seed. Keep one of "
                             "them under the runs folder (move the copy elsewhere).")
        seen[key] = folder


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config.json in today's form (a copy): older runs stored DeepFool's settings
    without its defaults norm "l2" and candidates None, adversarial training's clean-loss
    weight as "alpha" (now "clean_weight"), and no "monitor_every" (every epoch: 1). Applied
    wherever a stored config is compared."""
    config = json.loads(json.dumps(config))
    row = config.get("row")
    if not isinstance(row, dict):
        return config
    row.setdefault("monitor_every", 1)  # before it existed the callback ran every epoch
    deepfool = row.get("deepfool")
    if isinstance(deepfool, dict):
        row["deepfool"] = {"norm": "l2", "candidates": None, **deepfool}
    kwargs = row.get("trainer_kwargs")
    if row.get("trainer") == "at" and isinstance(kwargs, dict) and "alpha" in kwargs:
        kwargs["clean_weight"] = kwargs.pop("alpha")
    return config
