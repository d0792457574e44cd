"""Whether one step of CROWN's back-substitution fits in memory, checked before it runs.

Rows are chunked (`bounds.ROW_BUDGET`), but a chunk cannot be smaller than one row per point
(dense) or one channel per point (patches), and the final margins' rows (every rival of every
point) are not chunked: at a large batch on wide inputs one step outgrows the machine, and the
operating system kills the process without a word. `certify` checks the largest of those steps
(`bounds.growing_steps`) before it runs: `check_fits` raises `TooLargeError`, naming a batch
size that fits (the steps grow linearly with the batch).

Measured (TensorFlow, AMD EPYC): a step's peak memory is 4.2-5.5 times its rows in their float
type (the rows, their positive and negative parts, the products with the layer below), hence
`COPIES`; with rows as patches, whole certify calls at 100 points peaked at 8 (LeNet-5) and
17 (ResNet-20) times one channel's patches above the process's memory before them (the patches
of the lower and upper bounds, the layer bounds under every window, the sums where residual
paths meet: `docs/results/benchmarks/certify_memory.md`), hence `PATCH_COPIES`. Every layer's
bounds are held beside the step (`bounds.held_floats`). tests/test_benchmarks.py checks that
the estimate covers each measured peak. Only host memory is checked: on an accelerator the
rows live in its own memory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from keras_margin import backend

COPIES = 6  # a step's peak memory over its rows' size, rounded up from 4.2-5.5 (measured)
PATCH_COPIES = 20  # the same for one channel of patches, above the 8-17 measured


class TooLargeError(MemoryError):
    """One step of CROWN at this batch size needs more memory than the machine has free."""


def available_bytes() -> int | None:
    """Memory free for this process: Linux's MemAvailable, capped by a cgroup v2 limit; None
    where neither can be read or the backend computes on an accelerator."""
    if backend.has_accelerator():
        return None
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
        if limit != "max" and free is not None:
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def needed_bytes(floats: int, dtype: Any, layout: str) -> int:
    """The memory a step of `floats` row entries of `dtype` takes, dense rows ("rows") or
    patches ("patches")."""
    return floats * (PATCH_COPIES if layout == "patches" else COPIES) * np.dtype(dtype).itemsize


def check_fits(floats: int, dtype: Any, batch: int, what: str, layout: str = "rows",
               held: int = 0) -> None:
    """Raises `TooLargeError` where `floats` row entries of `dtype` for `batch` points side by
    side (the smallest chunk `what` can take, as `layout`), beside `held` entries kept for the
    whole computation (the layer bounds), would not fit in the memory free now."""
    free = available_bytes()
    if free is None:
        return
    needed = needed_bytes(floats, dtype, layout) + held * np.dtype(dtype).itemsize
    if needed <= free:
        return
    fits = math.floor(batch * free / needed)
    advice = (f"lower certify's batch_size to {fits} or below" if fits >= 1 else
              "even one point does not fit: use method='ibp' or 'lipschitz' (no rows), or a "
              "machine with more memory")
    raise TooLargeError(
        f"CROWN's rows for {what} at batch_size={batch} need about {needed / 2 ** 30:.1f} GiB, "
        f"more than the {max(free, 0) / 2 ** 30:.1f} GiB free; {advice}.")


__all__ = ["COPIES", "PATCH_COPIES", "TooLargeError", "available_bytes", "check_fits",
           "needed_bytes"]
