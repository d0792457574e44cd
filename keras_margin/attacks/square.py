"""Square Attack (Andriushchenko et al., ECCV 2020): a score-based l_inf / l2 attack that
uses no gradient, AutoAttack's fourth attack.

Random search on the margin f_y - max_{j != y} f_j: each query changes the current
perturbation on one random square window of each image (l_inf: the window moves to a random
vertex, +-2 eps per channel, then back into the ball; l2: mass moved between two windows in
the paper's pyramid shape), and the change is kept where the margin fell. The window's side
follows the paper's schedule, sqrt(p h w) with p from `p_init` halved at fixed fractions of
the query budget. It reads only the model's outputs, so a model that hides its gradients
(masking) is attacked as any other; that is what it is for beside the gradient attacks.

Queries run on the host (NumPy draws the windows, one per image and query) and the model in
one compiled program over at most `batch_size` rows; a point leaves once fooled, so fooled
points stop costing queries. A point counts as fooled, and stops, only at a strict flip (see
`base.STRICT_FLIP_EPS`), and every success is verified afterwards by a fresh forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keras_margin import backend
from keras_margin._validation import check_choice, check_integer, check_positive
from keras_margin.attacks import base
from keras_margin.jacobian import call_logits

NORMS = ("linf", "l2")
# The paper's schedule of p: (fraction of 10,000 rescaled queries after which p halves again).
P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@base.register
@dataclasses.dataclass(frozen=True)
class Square(base.BudgetAttack):
    """Square Attack's settings (AutoAttack's defaults); see `square`."""

    norm: str = "linf"
    n_queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    seed: int = 0
    shared_windows: bool = False
    rescale_schedule: bool = True

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        check_choice("shared_windows", self.shared_windows, (True, False))
        check_choice("rescale_schedule", self.rescale_schedule, (True, False))
        object.__setattr__(self, "n_queries", check_integer("n_queries", self.n_queries))
        object.__setattr__(self, "restarts", check_integer("restarts", self.restarts))
        object.__setattr__(self, "seed", check_integer("seed", self.seed, minimum=0))
        p_init = check_positive("p_init", self.p_init)
        if p_init > 1:
            raise ValueError(f"Invalid value for argument p_init: {self.p_init}. Expected the "
                             "share of the image the first windows cover, in (0, 1].")
        object.__setattr__(self, "p_init", p_init)

    @property
    def name(self) -> str:
        return f"square_{self.norm}"

    def run(self, model: Callable, inputs: base.Inputs, budgets: Sequence[float], lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0) -> dict[float, base.AttackResult]:
        check_images(inputs.x, self.name)
        scores = _Scores(model, inputs, lanes, jit_compile)
        bar = base.progress_bar(len(inputs.x) * len(budgets), verbose, self.name)
        results = {}
        for b, eps in enumerate(budgets):
            delta = np.zeros_like(inputs.x)
            fooled = np.zeros(len(inputs.x), bool)
            queries = np.zeros(len(inputs.x), np.int32)
            for restart in range(self.restarts):
                todo = np.flatnonzero(~fooled)
                if not todo.size:
                    break
                rng = np.random.default_rng([self.seed, restart])
                found, used, ok = self._single_run(scores, inputs, todo, float(eps), rng)
                delta[todo], queries[todo] = found, queries[todo] + used
                fooled[todo] = ok
                if bar is not None:
                    bar(b * len(inputs.x) + int(fooled.sum()))
            delta, success = base.verify(model, inputs, delta, lanes)
            delta = np.where(base.per_sample_mask(success, delta), delta, 0)
            results[float(eps)] = base.AttackResult(delta.astype(inputs.x.dtype), success,
                                                    queries, np.zeros(len(delta), bool))
            if bar is not None:
                bar((b + 1) * len(inputs.x))
        return results

    def p_at(self, query: int) -> float:
        """The share of the image a window covers at this query (the paper's schedule for
        10,000 queries, rescaled to `n_queries` unless `rescale_schedule` is False, as in
        AutoAttack's ensemble)."""
        at = int(query / self.n_queries * 10000) if self.rescale_schedule else query
        return self.p_init / 2 ** sum(at > step for step in P_SCHEDULE)

    def _single_run(self, scores: _Scores, inputs: base.Inputs, todo: np.ndarray, eps: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One run on the points `todo`: (their perturbations, queries used, fooled)."""
        x, labels = inputs.x[todo], inputs.labels[todo]
        n, h, w, c = x.shape
        lo, hi = inputs.box
        if self.norm == "linf":
            signs = rng.choice([-1.0, 1.0], size=(n, 1, w, c))  # vertical stripes
            best = np.clip(x + eps * signs, lo, hi).astype(x.dtype)
        else:
            best = np.clip(x + eps * _unit_l2(_l2_start(rng, n, h, w, c)), lo, hi)
            best = best.astype(x.dtype)
        margin, fooled = scores(best, labels)
        used = np.ones(n, np.int32)
        for query in range(self.n_queries):
            active = np.flatnonzero(~fooled)
            if not active.size:
                break
            side = math.sqrt(self.p_at(query) * h * w)
            draws = 1 if self.shared_windows else len(active)
            if self.norm == "linf":
                side = min(max(int(round(side)), 1), h, w)
                trial = _linf_step(rng, x[active], best[active], eps, side, lo, hi, draws)
            else:
                side = max(int(round(side)), 3)
                side = min(side + (side % 2 == 0), h, w)
                trial = _l2_step(rng, x[active], best[active], eps, side, lo, hi, draws)
            new_margin, new_fooled = scores(trial, labels[active])
            better = (new_margin < margin[active]) | new_fooled
            keep = active[better]
            best[keep], margin[keep] = trial[better], new_margin[better]
            fooled[active] |= new_fooled
            used[active] += 1
        return best - x, used, fooled



def _linf_step(rng, x, best, eps, side, lo, hi, draws):
    """Each image's window (one for all with draws=1) moves to a random vertex of the ball."""
    n, h, w, c = x.shape
    mask = _mask(_window_corners(rng, draws, n, h, w, side), h, w, side)
    vertex = 2.0 * eps * rng.choice([-1.0, 1.0], size=(draws, 1, 1, c))
    trial = np.clip(best + mask[..., None] * vertex, x - eps, x + eps)
    return np.clip(trial, lo, hi).astype(x.dtype)


def _l2_step(rng, x, best, eps, side, lo, hi, draws):
    """Moves the perturbation's mass: window 1 gets a new pyramid (plus its old content,
    renormalised), window 2 is emptied, and the total keeps norm eps."""
    n, h, w, c = x.shape
    delta = (best - x).astype(np.float64)
    first = _window_corners(rng, draws, n, h, w, side)
    second = _window_corners(rng, draws, n, h, w, side)
    window = _gather(delta, first, side)  # (n, s, s, c)
    norm_window = np.sqrt((window ** 2).sum(axis=(1, 2), keepdims=True))
    both = np.maximum(_mask(first, h, w, side), _mask(second, h, w, side))[..., None]
    norm_both = np.sqrt(((delta * both) ** 2).sum(axis=(1, 2), keepdims=True))
    norm_image = np.sqrt((delta ** 2).sum(axis=(1, 2, 3), keepdims=True))
    shape = _pyramid(side)
    flip = np.repeat(rng.random(draws) > 0.5, n // draws)
    shapes = np.where(flip[:, None, None], shape.T[None], shape[None])
    new = shapes[..., None] * rng.choice([-1.0, 1.0], size=(n, 1, 1, c))
    new = new + window / (1e-12 + norm_window)
    new = new / (1e-12 + np.sqrt((new ** 2).sum(axis=(1, 2), keepdims=True))) * \
        np.sqrt(np.maximum(eps ** 2 - norm_image ** 2, 0.0) / c + norm_both ** 2)
    _scatter(delta, second, side, 0.0)
    _scatter(delta, first, side, new)
    trial = np.clip(x + eps * _unit_l2(delta), lo, hi)
    return trial.astype(x.dtype)


class _Scores:
    """The margin f_y - max_{j != y} f_j and strict-flip flags of a batch, from one compiled
    logits program over `lanes` rows (the last chunk padded, so one shape is traced)."""

    def __init__(self, model: Callable, inputs: base.Inputs, lanes: int,
                 jit_compile: bool | str) -> None:
        dtype = str(inputs.x.dtype)
        self.model, self.lanes = model, lanes
        self.program = backend.compile_fn(lambda z: call_logits(model, z, dtype=dtype), model,
                                          jit_compile)

    def __call__(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flip, fooled = base.compiled_flips(self.program, self.model, x, labels, self.lanes)
        return -flip, fooled


def _window_corners(rng: np.random.Generator, draws: int, n: int, h: int, w: int,
                    side: int) -> tuple[np.ndarray, np.ndarray]:
    """A random top-left corner for a side x side window inside h x w, for each of n images:
    `draws` n (one each) or 1 (one for all)."""
    top, left = rng.integers(0, h - side + 1, draws), rng.integers(0, w - side + 1, draws)
    return np.repeat(top, n // draws), np.repeat(left, n // draws)


def _mask(corners: tuple[np.ndarray, np.ndarray], h: int, w: int, side: int) -> np.ndarray:
    """(n, h, w) 1.0 inside each image's window."""
    top, left = corners
    rows, cols = np.arange(h), np.arange(w)
    in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side)
    in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :]).astype(np.float64)


def _index(corners: tuple[np.ndarray, np.ndarray], side: int) -> tuple:
    top, left = corners
    offsets = np.arange(side)
    return (np.arange(len(top))[:, None, None], (top[:, None] + offsets)[:, :, None],
            (left[:, None] + offsets)[:, None, :])


def _gather(delta: np.ndarray, corners: tuple, side: int) -> np.ndarray:
    return delta[_index(corners, side)]


def _scatter(delta: np.ndarray, corners: tuple, side: int, values: Any) -> None:
    delta[_index(corners, side)] = values


def _rectangle(height: int, width: int) -> np.ndarray:
    """The paper's nested rectangles: weight 1 / (k + 1)^2 on the k-th ring around the centre,
    unit l2 norm."""
    out = np.zeros((height, width))
    top, left = height // 2, width // 2
    for k in range(max(height // 2 + 1, width // 2 + 1)):
        out[max(top - k, 0):min(top - k + 2 * k + 1, height),
            max(left - k, 0):min(left - k + 2 * k + 1, width)] += 1.0 / (k + 1) ** 2
    return out / np.sqrt((out ** 2).sum())


def _pyramid(side: int) -> np.ndarray:
    """An l2 window's shape: a positive pyramid over its top half, a negative one below."""
    out = np.zeros((side, side))
    out[:side // 2] = _rectangle(side // 2, side)
    out[side // 2:] = -_rectangle(side - side // 2, side)
    return out / np.sqrt((out ** 2).sum())


def _l2_start(rng: np.random.Generator, n: int, h: int, w: int, c: int) -> np.ndarray:
    """The l2 start: a grid of h // 5 windows, each a pyramid with a random sign per channel."""
    side = max(h // 5, 1)
    out = np.zeros((n, h, w, c))
    shape = _pyramid(side)
    margin_h, margin_w = (h - side * 5) // 2, (w - side * 5) // 2
    for top in range(max(margin_h, 0), h - side + 1, side):
        for left in range(max(margin_w, 0), w - side + 1, side):
            out[:, top:top + side, left:left + side] += \
                shape[None, :, :, None] * rng.choice([-1.0, 1.0], size=(n, 1, 1, c))
    return out


def check_images(x: np.ndarray, where: str) -> None:
    """Square perturbs square windows of images: x must be (n, height, width, channels).
    `where` names the caller (Square itself, or what runs it) in the error."""
    if x.ndim != 4:
        raise ValueError(f"{where} perturbs square windows of images: x must be "
                         f"(n, height, width, channels); received shape {x.shape}. Reshape "
                         "flat inputs to images (the model may flatten them).")


def _unit_l2(delta: np.ndarray) -> np.ndarray:
    return delta / (base.per_sample_mask(base.lp_norms(delta, "l2"), delta) + 1e-12)


def square(model: Callable, x: Any, y: Any, eps: float, norm: str = "linf",
           n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1, seed: int = 0,
           shared_windows: bool = False, rescale_schedule: bool = True,
           clip_min: float | None = None,
           clip_max: float | None = None, batch_size: int | None = None,
           jit_compile: bool | str = "auto", verbose: int = 0) -> base.AttackResult:
    """Adversarial examples within ||delta||_p <= eps by Square Attack (no gradients).

    Args:
        model: a Keras model or callable returning logits (batch, k), k >= 2.
        x, y: images (n, height, width, channels) and their true labels (n,).
        eps: the budget in the threat model's norm (e.g. 0.3 l_inf on MNIST in [0, 1]).
        norm: "linf" or "l2".
        n_queries: queries per run after the first (AutoAttack: 5,000).
        p_init: the share of the image the first windows cover, in (0, 1] (AutoAttack: 0.8).
        restarts: runs from new random starts for the points not yet fooled.
        seed: seed of the windows, signs and starts.
        shared_windows: one window (and for l_inf one sign per channel) per query for the
            whole batch, as the reference implementation draws them; default one per image,
            as the paper's code (stronger at equal queries on MNIST; see README).
        rescale_schedule: the paper's schedule of window sizes (for 10,000 queries) stretched
            to `n_queries` (default, as the reference alone); False keeps it per query, as
            AutoAttack's ensemble runs it.
        clip_min, clip_max: optional input box; x must lie inside it.
        batch_size: rows per model call (lanes, default 256).
        jit_compile: as for `deepfool`.
        verbose: 1 shows a progress bar.

    Returns:
        An `AttackResult`: a verified adversarial perturbation where `success` (zeros
        elsewhere); `iterations` are the queries spent per point.

    Example:
        >>> res = square(model, x_test, y_test, eps=0.3, clip_min=0.0, clip_max=1.0)
        >>> robust_accuracy = 1 - res.success.mean()
    """
    return Square(norm=norm, n_queries=n_queries, p_init=p_init, restarts=restarts,
                  seed=seed, shared_windows=shared_windows, rescale_schedule=rescale_schedule)(
        model, x, y, eps=eps, clip_min=clip_min, clip_max=clip_max, batch_size=batch_size,
        jit_compile=jit_compile, verbose=verbose)
