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
        queue = _JobQueue(jobs)
        lane_job = np.full(max(1, lanes), -1)
        collected: dict[str, list] = {key: [] for key in outputs}
        ended_ids: list[np.ndarray] = []
        state = None
        while queue or (lane_job >= 0).any():
            state = self._refill(state, lane_job, queue, load)
            state = self.round(state)
            ids, out = _take_ended(state, lane_job, outputs)
            if not ids.size:
                continue
            ended_ids.append(ids)
            for key in outputs:
                collected[key].append(out[key])
            more = follow_up(ids, out) if follow_up is not None else None
            if more:
                queue.extend(more)
            if progress is not None:
                progress(sum(len(i) for i in ended_ids))
        order = np.argsort(np.concatenate(ended_ids), kind="stable")
        return {key: np.concatenate(parts)[order] for key, parts in collected.items()}

    def _refill(self, state: dict[str, Any] | None, lane_job: np.ndarray, queue: _JobQueue,
                load: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]):
        """Loads queued jobs into the free lanes (`lane_job` -1) and merges their fresh state."""
        free = np.flatnonzero(lane_job < 0)
        if not (free.size and queue):
            return state
        take = queue.pop(free.size)
        fill = free[: take.size]
        loaded = np.zeros(len(lane_job), bool)
        loaded[fill] = True
        inputs = {}
        for key, values in load(queue.params_of(take)).items():
            values = np.asarray(values)
            lane_values = np.zeros((len(lane_job),) + values.shape[1:], values.dtype)
            lane_values[fill] = values
            inputs[key] = ops.convert_to_tensor(lane_values)
        inputs["valid"] = ops.convert_to_tensor(loaded)
        fresh = self.init(inputs)
        lane_job[fill] = take
        return fresh if state is None else self.merge(state, fresh, inputs["valid"])


def _take_ended(state: dict[str, Any], lane_job: np.ndarray, outputs: tuple[str, ...]):
    """(ids of the jobs whose lanes went inactive, their `outputs`); frees those lanes."""
    active = keras.ops.convert_to_numpy(state["active"])
    ended = np.flatnonzero((lane_job >= 0) & ~active)
    ids = lane_job[ended]
    out = {key: keras.ops.convert_to_numpy(state[key])[ended] for key in outputs} \
        if ended.size else {}
    lane_job[ended] = -1
    return ids, out


class _JobQueue:
    """Job parameters by id and the ids still to run, in order; `extend` adds jobs."""

    def __init__(self, jobs: dict[str, np.ndarray]) -> None:
        self.params = {key: np.asarray(value) for key, value in jobs.items()}
        self.waiting = collections.deque(range(len(next(iter(self.params.values())))))

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def pop(self, count: int) -> np.ndarray:
        return np.array([self.waiting.popleft() for _ in range(min(count, len(self.waiting)))])

    def params_of(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return {key: value[ids] for key, value in self.params.items()}

    def extend(self, more: dict[str, Any]) -> None:
        total = len(next(iter(self.params.values())))
        count = len(next(iter(more.values())))
        self.params = {key: np.concatenate([self.params[key], np.asarray(more[key])])
                       for key in self.params}
        self.waiting.extend(range(total, total + count))


def gather_samples(x: np.ndarray, labels: np.ndarray) -> Callable[[dict], dict]:
    """The `load` of jobs that are one sample each: x and label by the job's "index"."""
    return lambda params: {"x": x[params["index"]], "label": labels[params["index"]]}
