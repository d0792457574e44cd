"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020): minimum-norm l_inf / l2
adversarials, AutoAttack's third attack as FAB-T (targeted).

Each step linearises the margin f_t - f_y at the current point x1 into a hyperplane and
projects both x1 and the clean point x0 onto it, inside the input box, in the threat norm
(`project_onto_hyperplane`, exact); the next point mixes the two projections, biased towards
the one from x0 (weight alpha = ||d1|| / (||d1|| + ||d2||), at most `alpha_max`) and
overshooting by `eta`. Where the point is adversarial (a strict flip, `base.STRICT_FLIP_EPS`),
it is kept if closer than the best so far and pulled back towards x0 by `beta`. FAB-T runs once
per target class, the 2nd to (n_target_classes + 1)-th largest clean logits, and keeps each
point's closest adversarial; untargeted FAB (`targeted=False`) linearises towards the class
whose hyperplane is nearest at each step.

Gradients come from one compiled program over at most `batch_size` rows; the projections run
on the host in float64 (a sort per row). Given a budget eps (`run_within`, AutoAttack's use),
a point stops once it has an adversarial within eps, and later targets attack only the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin._validation import check_choice, check_integer, check_positive
from keras_margin.attacks import base
from keras_margin.jacobian import call_logits, logits_and_pullback, margin_gradients, rival_classes
from keras_margin.threat import ThreatModel

NORMS = ("linf", "l2")
# The reference's radius of random restarts where no budget is given (FAB's defaults).
DEFAULT_START_EPS = {"linf": 0.3, "l2": 1.0}


@base.register
@dataclasses.dataclass(frozen=True)
class FAB(base.MinimumNormAttack):
    """FAB's settings (AutoAttack's FAB-T defaults); see `fab`."""

    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    targeted: bool = True
    n_target_classes: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    start_eps: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        check_choice("targeted", self.targeted, (True, False))
        for name in ("steps", "restarts", "n_target_classes"):
            object.__setattr__(self, name, check_integer(name, getattr(self, name)))
        object.__setattr__(self, "seed", check_integer("seed", self.seed, minimum=0))
        alpha_max = check_positive("alpha_max", self.alpha_max)
        if alpha_max > 1:
            raise ValueError(f"Invalid value for argument alpha_max: {self.alpha_max}. "
                             "Expected the largest weight of the step from x0, in (0, 1].")
        beta = check_positive("beta", self.beta)
        if beta > 1:
            raise ValueError(f"Invalid value for argument beta: {self.beta}. Expected the "
                             "factor of the step back towards x0, in (0, 1].")
        eta = check_positive("eta", self.eta)
        if eta < 1:
            raise ValueError(f"Invalid value for argument eta: {self.eta}. Expected the "
                             "overshoot past the linearised boundary, >= 1.")
        object.__setattr__(self, "alpha_max", alpha_max)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "eta", eta)
        if self.start_eps is not None:
            object.__setattr__(self, "start_eps", check_positive("start_eps", self.start_eps))

    @property
    def name(self) -> str:
        return f"fab{'_t' if self.targeted else ''}_{self.norm}"

    positional: ClassVar[tuple[str, ...]] = ("eps", "clip_min", "clip_max") + base.EXECUTION

    def attack(self, model: Callable, x: Any, y: Any, threat: ThreatModel,
               batch_size: int | None, jit_compile: bool | str, verbose: int,
               **options: Any) -> base.AttackResult:
        """The smallest adversarial found per point; with a budget eps, success only within
        eps (points found within eps stop early, as in AutoAttack)."""
        inputs = base.check_inputs(model, x, y, threat.clip_min, threat.clip_max, self.name)
        lanes = base.check_lanes(batch_size, len(inputs.x))
        if threat.eps is None:
            return self.run(model, inputs, lanes, jit_compile, verbose)
        return self.run_within(model, inputs, threat.eps, lanes, jit_compile, verbose)

    def run(self, model: Callable, inputs: base.Inputs, lanes: int,
            jit_compile: bool | str = "auto", verbose: int = 0,
            init_result: base.AttackResult | None = None) -> base.AttackResult:
        del init_result
        delta, found = self._search(model, inputs, None, lanes, jit_compile, verbose)
        delta, success = base.verify_minimum_norm(model, inputs, delta, found, lanes)
        return base.AttackResult(delta, success, self._iterations(inputs),
                                 np.zeros(len(delta), bool))

    def run_within(self, model: Callable, inputs: base.Inputs, eps: float, lanes: int,
                   jit_compile: bool | str = "auto", verbose: int = 0) -> base.AttackResult:
        """The attack with budget `eps` on checked inputs: success where the verified
        adversarial lies within eps (the random restarts start within eps / 2)."""
        delta, found = self._search(model, inputs, eps, lanes, jit_compile, verbose)
        delta, success = base.verify_minimum_norm(model, inputs, delta, found, lanes)
        success &= base.lp_norms(delta, self.norm) <= eps * (1 + 1e-6)
        delta = np.where(base.per_sample_mask(success, delta), delta, 0).astype(delta.dtype)
        return base.AttackResult(delta, success, self._iterations(inputs),
                                 np.zeros(len(delta), bool))

    def _iterations(self, inputs: base.Inputs) -> np.ndarray:
        runs = self.restarts * (self._targets(inputs.num_classes) if self.targeted else 1)
        return np.full(len(inputs.x), runs * self.steps, np.int32)

    def _targets(self, num_classes: int) -> int:
        return min(self.n_target_classes, num_classes - 1)

    def _search(self, model: Callable, inputs: base.Inputs, eps: float | None, lanes: int,
                jit_compile: bool | str, verbose: int) -> tuple[np.ndarray, np.ndarray]:
        """(each point's closest adversarial delta found, found), over targets and restarts."""
        x, labels = inputs.x, inputs.labels
        linearise = _Linearisation(model, inputs, self.targeted, self.norm, lanes, jit_compile)
        clean = base.logits_in_chunks(linearise.logits, x, lanes)
        fooled = base.flip_margins(clean, labels) > base.flip_tolerance(model, clean)
        best = np.zeros(x.shape, np.float64)
        dist = np.where(fooled, 0.0, np.inf)
        ranked = np.argsort(-np.where(np.eye(inputs.num_classes, dtype=bool)[labels], -np.inf,
                                      clean), axis=1, kind="stable")
        start_eps = eps if eps is not None else (self.start_eps or DEFAULT_START_EPS[self.norm])
        runs = [(rank, restart) for rank in range(self._targets(inputs.num_classes))
                for restart in range(self.restarts)] if self.targeted \
            else [(None, restart) for restart in range(self.restarts)]
        bar = base.progress_bar(len(x) * len(runs), verbose, self.name)
        for done_runs, (rank, restart) in enumerate(runs):
            todo = np.flatnonzero(~fooled if eps is None else dist > eps)
            if todo.size:
                rng = np.random.default_rng([self.seed, restart, 0 if rank is None else rank])
                targets = None if rank is None else ranked[todo, rank].astype(np.int32)
                found, found_dist = self._single_run(
                    linearise, inputs, todo, targets, start_eps if restart else None, eps, rng)
                better = found_dist < dist[todo]
                best[todo[better]] = found[better]
                dist[todo[better]] = found_dist[better]
            if bar is not None:
                bar((done_runs + 1) * len(x))
        return best, np.isfinite(dist)

    def _single_run(self, linearise: _Linearisation, inputs: base.Inputs, todo: np.ndarray,
                    targets: np.ndarray | None, start_eps: float | None, eps: float | None,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One FAB run on the points `todo`: (closest adversarial delta, its norm; inf where
        none)."""
        lo, hi = inputs.box
        x0 = inputs.x[todo].reshape(len(todo), -1).astype(np.float64)
        labels = inputs.labels[todo]
        x1 = x0.copy()
        if start_eps is not None:
            x1 = np.clip(x0 + 0.5 * start_eps * _random_unit(rng, x0.shape, self.norm), lo, hi)
        best = np.zeros_like(x0)
        dist = np.full(len(x0), np.inf)
        for _ in range(self.steps):
            active = np.flatnonzero(dist > (-1 if eps is None else eps))
            if not active.size:
                break
            df, dg = linearise(x1[active], labels[active],
                               None if targets is None else targets[active])
            x1[active] = self._step(x0[active], x1[active], df, dg, lo, hi)
            adv = linearise.fooled(x1[active], labels[active])
            rows = active[adv]
            norms = base.lp_norms(x1[rows] - x0[rows], self.norm)
            closer = norms < dist[rows]
            best[rows[closer]] = x1[rows[closer]] - x0[rows[closer]]
            dist[rows[closer]] = norms[closer]
            x1[rows] = x0[rows] + (x1[rows] - x0[rows]) * self.beta
        return best.reshape((len(todo),) + inputs.x.shape[1:]), dist

    def _step(self, x0: np.ndarray, x1: np.ndarray, df: np.ndarray, dg: np.ndarray,
              lo: float, hi: float) -> np.ndarray:
        """The next point: projections of x1 and x0 onto the linearised boundary
        {z: df + <dg, z - x1> = 0}, mixed and overshot (the paper's eq. 7)."""
        offset = df + np.einsum("nd,nd->n", dg, x0 - x1)
        d = project_onto_hyperplane(np.concatenate([x1, x0]), np.concatenate([dg, dg]),
                                    np.concatenate([df, offset]), lo, hi, self.norm)
        d1, d2 = d[:len(x1)], d[len(x1):]
        a1 = np.maximum(base.lp_norms(d1, self.norm), 1e-8)
        a2 = np.maximum(base.lp_norms(d2, self.norm), 1e-8)
        alpha = np.clip(a1 / (a1 + a2), 0.0, self.alpha_max)[:, None]
        mixed = (x1 + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d2) * alpha
        return np.clip(mixed, lo, hi)


def project_onto_hyperplane(t: np.ndarray, w: np.ndarray, c: np.ndarray, lo: float,
                            hi: float, norm: str) -> np.ndarray:
    """d of least ||d||_p (p = inf or 2) with <w_i, t_i + d_i> - <w_i, t_i> = -c_i and
    lo <= t_i + d_i <= hi, per row i (rows of the hyperplane <w, z> = <w, t> - c).

    Exact: after orienting each row so that <w, d> must fall by c >= 0, a coordinate moves
    against sign(w_j) by min(lambda, room_j) (l_inf) or min(lambda |w_j|, room_j) (l2, the
    KKT conditions), room_j its distance to the box side it moves to; lambda solves the
    piecewise linear sum_j a_j min(lambda, r_j) = c (a_j = |w_j|, r_j = room_j for l_inf,
    a_j = w_j^2, r_j = room_j / |w_j| for l2) at its breakpoints. Where the box does not
    reach the hyperplane, every coordinate moves to its side (the box's nearest corner). A
    side may be infinite (no box)."""
    t, w, c = (np.asarray(a, np.float64) for a in (t, w, c))
    orient = np.where(c < 0, -1.0, 1.0)
    w, c = w * orient[:, None], c * orient
    absw = np.abs(w)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        room = np.where(w > 0, t - lo, hi - t)
        room = np.where(w != 0, np.maximum(room, 0.0), 0.0)
        if norm == "linf":
            a, r = absw, room
        else:
            a, r = w ** 2, np.where(w != 0, room / np.where(w != 0, absw, 1.0), 0.0)
        order = np.argsort(r, axis=1, kind="stable")
        a_sorted = np.take_along_axis(a, order, axis=1)
        r_sorted = np.take_along_axis(r, order, axis=1)
        weighted = np.where(a_sorted > 0, a_sorted * r_sorted, 0.0)
        zero = np.zeros((len(t), 1))
        below = np.concatenate([zero, np.cumsum(weighted, axis=1)[:, :-1]], axis=1)  # i < k
        above = np.cumsum(a_sorted[:, ::-1], axis=1)[:, ::-1]  # sum_{i >= k} a_i
        at_breakpoints = below + np.where(above > 0, r_sorted * above, 0.0)
        reach = at_breakpoints >= c[:, None]
        feasible = reach[:, -1] | (c == 0)
        k = np.argmax(reach, axis=1)
        rows = np.arange(len(t))
        lam = np.where(above[rows, k] > 0,
                       (c - below[rows, k]) / np.where(above[rows, k] > 0, above[rows, k], 1),
                       0.0)
        lam = np.where(feasible, np.maximum(lam, 0.0), np.inf)
        lam = lam[:, None]
        move = np.minimum(lam, room) if norm == "linf" else \
            np.minimum(np.where(absw > 0, lam * absw, 0.0), room)
    return np.where(w != 0, -np.sign(w) * move, 0.0)


def _random_unit(rng: np.random.Generator, shape: tuple, norm: str) -> np.ndarray:
    """Rows of unit l_inf (uniform in the cube, rescaled) or l2 (Gaussian) norm."""
    if norm == "linf":
        t = rng.uniform(-1.0, 1.0, shape)
        return t / np.abs(t).max(axis=1, keepdims=True)
    t = rng.standard_normal(shape)
    return t / np.sqrt((t ** 2).sum(axis=1, keepdims=True))


class _Linearisation:
    """The margins f_j - f_y and their input gradients at a batch of flat points, from one
    compiled program over at most `lanes` rows: for a target t, (f_t - f_y, grad); untargeted,
    the rival whose linearised boundary is nearest in the dual norm."""

    def __init__(self, model: Callable, inputs: base.Inputs, targeted: bool, norm: str,
                 lanes: int, jit_compile: bool | str) -> None:
        self.model, self.lanes, self.targeted = model, lanes, targeted
        self.dual = "l1" if norm == "linf" else "l2"
        self.shape, self.dtype = inputs.x.shape[1:], str(inputs.x.dtype)
        k, dtype = inputs.num_classes, self.dtype

        def targeted_fn(x, labels, targets):
            def diff(z):
                logits = call_logits(model, z, dtype=dtype)
                hot = ops.one_hot(targets, k, dtype=dtype) - ops.one_hot(labels, k, dtype=dtype)
                return ops.sum(logits * hot, axis=1)

            return backend.value_and_grad(diff, x)

        def untargeted_fn(x, labels):
            logits, pullback = logits_and_pullback(model, x, dtype=dtype)
            rivals = rival_classes(logits, labels)
            grads = margin_gradients(pullback, labels, rivals, k)
            own = ops.take_along_axis(logits, labels[:, None], axis=1)
            return ops.take_along_axis(logits, rivals, axis=1) - own, grads

        self.program = backend.compile_fn(targeted_fn if targeted else untargeted_fn, model,
                                          jit_compile)
        self.logits = backend.compile_fn(lambda z: call_logits(model, z, dtype=dtype), model,
                                         jit_compile)

    def __call__(self, x: np.ndarray, labels: np.ndarray,
                 targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        images = x.reshape((len(x),) + self.shape).astype(self.dtype)
        args = (images, labels) if targets is None else (images, labels, targets)
        df, dg = base.call_in_chunks(self.program, self.lanes, *args)
        df = df.astype(np.float64)
        dg = dg.reshape(len(x), -1, x.shape[1]) if targets is None else dg.reshape(len(x), -1)
        dg = dg.astype(np.float64)
        if targets is not None:
            return df, dg
        dual = np.abs(dg).sum(axis=2) if self.dual == "l1" else np.sqrt((dg ** 2).sum(axis=2))
        nearest = np.argmin(np.abs(df) / (1e-12 + dual), axis=1)
        rows = np.arange(len(x))
        return df[rows, nearest], dg[rows, nearest]

    def fooled(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Strict flips (`base.STRICT_FLIP_EPS`) at the flat points x."""
        images = x.reshape((len(x),) + self.shape).astype(self.dtype)
        return base.compiled_flips(self.logits, self.model, images, labels, self.lanes)[1]


def fab(model: Callable, x: Any, y: Any, eps: float | None = None, norm: str = "linf",
        steps: int = 100, restarts: int = 1, targeted: bool = True, n_target_classes: int = 9,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
        start_eps: float | None = None, seed: int = 0, clip_min: float | None = None,
        clip_max: float | None = None, batch_size: int | None = None,
        jit_compile: bool | str = "auto", verbose: int = 0) -> base.AttackResult:
    """Minimum-norm adversarial examples by FAB (FAB-T by default), or within a budget eps.

    Args:
        model: a Keras model or callable returning logits (batch, k), k >= 2.
        x, y: inputs (n, ...) and their true labels (n,).
        eps: optional budget in the threat norm: success then means an adversarial within
            eps (AutoAttack's use); None looks for each point's smallest.
        norm: "linf" or "l2".
        steps: iterations per run (AutoAttack: 100).
        restarts: runs per target; runs after the first start at random within start_eps / 2.
        targeted: FAB-T (one run per target class, AutoAttack's); False: untargeted FAB.
        n_target_classes: target classes of FAB-T, by clean logit (AutoAttack: 9).
        alpha_max, eta, beta: the paper's step bias bound (0.1), overshoot (1.05) and
            backward step (0.9).
        start_eps: the random restarts' radius without a budget (default 0.3 l_inf, 1 l2).
        seed: seed of the random restarts.
        clip_min, clip_max: optional input box; x must lie inside it.
        batch_size: rows per model call (lanes, default 256).
        jit_compile: as for `deepfool`.
        verbose: 1 shows a progress bar.

    Returns:
        An `AttackResult`: a verified adversarial perturbation where `success` (zeros
        elsewhere); `iterations` are the steps run per point.

    Example:
        >>> res = fab(model, x_test, y_test, clip_min=0.0, clip_max=1.0)
        >>> median = np.median(res.distances("linf"))
    """
    return FAB(norm=norm, steps=steps, restarts=restarts, targeted=targeted,
               n_target_classes=n_target_classes, alpha_max=alpha_max, eta=eta, beta=beta,
               start_eps=start_eps, seed=seed)(
        model, x, y, eps=eps, clip_min=clip_min, clip_max=clip_max, batch_size=batch_size,
        jit_compile=jit_compile, verbose=verbose)
