"""Runs an iterative attack in a fixed number of lanes that are refilled as samples finish.

A batched attack loop over n samples runs until its slowest sample is done, so in one big batch
every finished sample keeps costing a forward and backward pass per step. Here the compiled loop
works on `lanes` samples at a time (one tensor shape, traced once); every `round_steps` steps the
driver takes out the lanes whose job ended and refills them with the next jobs. Done samples stop
costing, and memory is bounded by the lane count, whatever the number of samples.

An attack supplies a `Kernel`: `init` builds the per-lane state of freshly loaded jobs, `step`
advances every lane by one iteration, and each state carries a boolean `active` per lane. The
driver masks inactive lanes, so `step` need not. Jobs are rows of per-job inputs; a `follow_up`
callback may queue more jobs when some end (APGD's next target class for a still robust sample).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, Protocol

import keras
import numpy as np
from keras import ops

from keras_margin import backend


class Kernel(Protocol):
    """What an attack gives the driver (see the module docstring)."""

    def init(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Per-lane state from per-lane inputs (which include `valid`, False for empty lanes:
        their `active` must be False)."""

    def step(self, state: dict[str, Any]) -> dict[str, Any]:
        """The state after one more iteration of every lane."""


def _where(mask: Any, new: Any, old: Any):
    mask = ops.reshape(mask, (-1,) + (1,) * (len(old.shape) - 1))
    return ops.where(mask, new, old)


def _round(kernel: Kernel, state: dict[str, Any], round_steps: int) -> dict[str, Any]:
    """Up to `round_steps` steps; stops early once no lane is active."""

    def cond(i, state):
        return ops.logical_and(i < round_steps, ops.any(state["active"]))

    def body(i, state):
        new = kernel.step(state)
        active = state["active"]
        return i + 1, {key: _where(active, new[key], value) for key, value in state.items()}

    return ops.while_loop(cond, body, (ops.convert_to_tensor(0, "int32"), state))[1]


def _merge(state: dict[str, Any], fresh: dict[str, Any], loaded: Any) -> dict[str, Any]:
    return {key: _where(loaded, fresh[key], value) for key, value in state.items()}


class LaneRunner:
    """Compiled init/round/merge programs of one kernel for one model, reused across calls."""

    def __init__(self, kernel: Kernel, model: Any, round_steps: int,
                 jit_compile: bool | str = "auto") -> None:
        self.kernel = kernel
        self.init = backend.compile_fn(kernel.init, model, jit_compile)
        self.round = backend.compile_fn(lambda state: _round(kernel, state, round_steps), model,
                                        jit_compile)
        self.merge = backend.compile_fn(_merge, model, jit_compile)

    def run(self, jobs: dict[str, np.ndarray], lanes: int, outputs: tuple[str, ...],
            load: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
            follow_up: Callable[[np.ndarray, dict[str, np.ndarray]], dict | None] | None = None,
            progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
        """Runs every job; returns `outputs` of the state per job, in job order.

        Args:
            jobs: per-job parameters (small arrays of one length, e.g. a sample index).
            lanes: how many jobs run side by side (exactly: fewer jobs leave lanes empty, so
                the compiled programs keep one shape; see `base.check_lanes`).
            outputs: the state keys to collect when a job ends.
            load: the kernel's `init` inputs of some jobs from their parameters (e.g. their
                samples gathered by index); `valid` is added by the runner.
            follow_up: called with the ended job ids and their outputs; may return more jobs
                (a dict like `jobs`), which are queued and get the next ids.
            progress: called with the number of jobs ended so far.
        """
        params = {key: np.asarray(value) for key, value in jobs.items()}
        total = len(next(iter(params.values())))
        queue = collections.deque(range(total))
        lanes = max(1, lanes)
        lane_job = np.full(lanes, -1)
        results: dict[str, list] = {key: [] for key in outputs}
        ended_ids: list[np.ndarray] = []
        state = None
        done = 0
        while queue or (lane_job >= 0).any():
            free = np.flatnonzero(lane_job < 0)
            if free.size and queue:
                take = np.array([queue.popleft() for _ in range(min(free.size, len(queue)))])
                fill = free[: take.size]
                loaded = np.zeros(lanes, bool)
                loaded[fill] = True
                inputs = {}
                for key, values in load({k: v[take] for k, v in params.items()}).items():
                    values = np.asarray(values)
                    lane_values = np.zeros((lanes,) + values.shape[1:], values.dtype)
                    lane_values[fill] = values
                    inputs[key] = ops.convert_to_tensor(lane_values)
                inputs["valid"] = ops.convert_to_tensor(loaded)
                fresh = self.init(inputs)
                state = fresh if state is None else self.merge(state, fresh, inputs["valid"])
                lane_job[fill] = take
            state = self.round(state)
            active = keras.ops.convert_to_numpy(state["active"])
            ended = np.flatnonzero((lane_job >= 0) & ~active)
            if not ended.size:
                continue
            ids = lane_job[ended]
            out = {key: keras.ops.convert_to_numpy(state[key])[ended] for key in outputs}
            for key in outputs:
                results[key].append(out[key])
            ended_ids.append(ids)
            lane_job[ended] = -1
            done += ids.size
            if follow_up is not None:
                more = follow_up(ids, out)
                if more:
                    count = len(next(iter(more.values())))
                    params = {key: np.concatenate([params[key], np.asarray(more[key])])
                              for key in params}
                    queue.extend(range(total, total + count))
                    total += count
            if progress is not None:
                progress(done)
        order = np.argsort(np.concatenate(ended_ids), kind="stable")
        return {key: np.concatenate(parts)[order] for key, parts in results.items()}


def gather_samples(x: np.ndarray, labels: np.ndarray) -> Callable[[dict], dict]:
    """The `load` of jobs that are one sample each: x and label by the job's "index"."""
    return lambda params: {"x": x[params["index"]], "label": labels[params["index"]]}
