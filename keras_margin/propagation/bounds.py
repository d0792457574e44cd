"""Sound bounds on a network's margins over an l_inf or l2 ball: interval, CROWN, Lipschitz.

The specification is the margin of each rival, f_y(x') - f_j(x'), over every x' with
||x' - x||_p <= eps (and, for l_inf, inside the input box). `margin_bounds` returns lower
bounds of it per sample and rival; a sample is certified at eps when all are > 0.

* Interval bound propagation ("ibp", Gowal et al. 2018): [l, u] layer by layer, the last layer
  folded into the margins (elision).
* CROWN (Zhang et al. 2018): the margins back-substituted as linear functions through every
  layer to the input, each ReLU relaxed linearly between its pre-activation bounds (upper: the
  chord; lower: slope 1 where u > -l, else 0), max pooling by the window's input with the
  largest lower bound (below) and by it, or by the window's largest upper bound, above; the
  result concretised exactly over the ball. "crown" computes every ReLU's and max pool's input
  bounds by the same back-substitution (as auto_LiRPA's method="CROWN"): a convolutional
  map's neurons with their rows as patches (`patches.py`), other layers with dense rows where
  they have at most `CROWN_NEURONS` neurons (a first layer's bounds are exact anyway); only a
  wider layer that patches cannot pass takes intervals (`crown_plan`; certify warns).
  "auto" follows "crown"'s plan layer by layer while the rows' summed entries per point stay
  within `AUTO_BUDGET`, and takes intervals for the layers beyond it (route "interval-cost"):
  all of LeNet-5 or an MLP, the first layers of a ResNet-20.
  "crown-ibp" takes intervals for all (cheaper, looser). Each intermediate bound is the
  tighter of CROWN's and the interval's, both sound.
* "lipschitz": a global bound, the margin over the product of the layers' operator norms
  (l2: each layer's exact spectral norm or a proven upper bound of it, never an estimate),
  for every supported layer (overlapping max pooling included).

Everything is `keras.ops` over batches; rows of a back-substitution are processed in chunks so
that memory stays bounded whatever the layer widths.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin.propagation.network import Add, Linear, MaxPool, ReLU, run
from keras_margin.propagation.patches import (
    back_substitute_patches,
    dense_cost,
    largest_patch,
    patch_cost,
    patchable,
    spread,
)
from keras_margin.propagation.relaxations import relax_maxpool, relax_relu

METHODS = ("crown", "auto", "crown-ibp", "ibp", "lipschitz")
NORMS = ("linf", "l2")
ROW_BUDGET = 2 ** 24  # floats of one chunk of back-substitution rows
# "crown" back-substitutes dense rows for layers of at most this many neurons (the cost grows
# with neurons x the widths below them); wider convolutional maps go by patches, and any other
# wider layer takes intervals (`crown_route`).
CROWN_NEURONS = 2048
# method="auto": the most entries of back-substituted rows per point (summed over the layers
# CROWN bounds, `route_cost`) before the next layers take intervals. The time of CROWN's
# bounds grows with this sum (measured, `benchmarks/crown_auto.py`); 2^27 holds all of
# LeNet-5 and the MLPs, and the first four layers of a ResNet-20 on MNIST, whose full CROWN
# needs 3.5e10.
AUTO_BUDGET = 2 ** 27
# Each CROWN bound (intermediate and final) is intersected with the interval bound: both are
# sound. False gives CROWN alone, as auto_LiRPA's method="CROWN" computes it (for comparisons).
INTERSECT_INTERVALS = True


class Region:
    """The input set: ||x' - x0||_p <= eps per sample (eps: (B,)), for l_inf inside the box."""

    def __init__(self, x0: Any, eps: Any, norm: str, box: tuple[float | None, float | None]):
        self.x0, self.norm = x0, norm
        if isinstance(eps, (int, float)):  # a Python number: no float32 detour on the way
            eps = np.float64(eps)
        self.eps = ops.reshape(ops.cast(eps, x0.dtype), (-1,))
        if norm == "linf":
            radius = _per_sample(self.eps, x0)
            lo, hi = x0 - radius, x0 + radius
            if box[0] is not None:
                lo = backend.maximum(lo, box[0])
            if box[1] is not None:
                hi = backend.minimum(hi, box[1])
            self.lower, self.upper = lo, hi
        else:  # the l2 ball; its bounding box for intervals (the input box is not used)
            radius = _per_sample(self.eps, x0)
            self.lower, self.upper = x0 - radius, x0 + radius

    def magnitude(self, lam: Any) -> Any:
        """sum |lam_r x'| bounded over the region, per row (B, m): the scale of `minimum`'s
        sums, for the rounding allowance."""
        axes = tuple(range(2, len(lam.shape)))
        if self.norm == "linf":
            reach = backend.maximum(ops.abs(self.lower), ops.abs(self.upper))[:, None]
            return ops.sum(ops.abs(lam) * reach, axis=axes)
        return ops.sum(ops.abs(lam * self.x0[:, None]), axis=axes) + \
            self.eps[:, None] * _l2_norms(lam, axes)

    def minimum(self, lam: Any, align: Any = None, axes: tuple | None = None) -> Any:
        """min over the region of <lam_r, x'> for rows lam (B, m, *in_shape) -> (B, m).
        Rows of another layout (`patches.py`'s) give `align`, which brings a (B, *in_shape)
        map under them, and the row axes `axes`."""
        align = align or (lambda values: values[:, None])
        axes = axes or tuple(range(2, len(lam.shape)))
        if self.norm == "linf":
            lower, upper = align(self.lower), align(self.upper)
            return ops.sum(ops.relu(lam) * lower + backend.minimum(lam, 0.0) * upper, axis=axes)
        centre = ops.sum(lam * align(self.x0), axis=axes)
        eps = ops.reshape(self.eps, (-1,) + (1,) * (len(lam.shape) - len(axes) - 1))
        return centre - eps * _l2_norms(lam, axes)


def _l2_norms(lam: Any, axes: tuple) -> Any:
    """||lam_r||_2 over `axes`, with a finite gradient at a zero row (the margin row of the
    label itself, a row every ReLU stopped): sqrt's derivative there is infinite, and
    certified training differentiates these bounds."""
    squares = ops.sum(ops.square(lam), axis=axes)
    positive = squares > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, squares, ops.ones_like(squares))),
                     ops.zeros_like(squares))


def _per_sample(values: Any, like: Any) -> Any:
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


def _expand(bound: Any) -> Any:
    """(B, *shape) -> (B, 1, *shape), to meet rows (B, m, *shape)."""
    return ops.expand_dims(bound, 1)


def _flat_rows(lam: Any) -> Any:
    return ops.reshape(lam, (-1,) + tuple(lam.shape[2:]))


def _rows(lam: Any, m: int) -> Any:
    """(B m, *shape) -> (B, m, *shape); B may be unknown (a traced batch)."""
    return ops.reshape(lam, (-1, m) + tuple(lam.shape[1:]))


# -- intervals -------------------------------------------------------------------------------
def input_bounds(operations: list, index: int, bounds: list, region: Region) -> list:
    """The bounds of each input of operation `index` (the region's box for the network's)."""
    return [bounds[j] if j >= 0 else (region.lower, region.upper)
            for j in operations[index].inputs]


def interval_step(op: Any, lower: Any, upper: Any, *others: tuple) -> tuple[Any, Any]:
    """The interval of one operation's output from its input's (an Add's: from each of its
    inputs', `lower, upper` the first and `others` the rest)."""
    if isinstance(op, Add):
        for low, up in others:
            lower, upper = lower + low, upper + up
        return lower, upper
    if isinstance(op, Linear):
        centre, radius = (lower + upper) / 2, (upper - lower) / 2
        out = op(centre)
        reach = op.apply_abs(radius)
        return out - reach, out + reach
    return op(lower), op(upper)  # ReLU and max pooling are monotone


def _reshapes_below(operations: list, index: int) -> list | None:
    """The reshapes between the network's input and operation `index`, in order, where only
    reshapes lie between them (one path); None otherwise."""
    path, j = [], operations[index].inputs
    while j != (-1,):
        if len(j) != 1 or not (isinstance(operations[j[0]], Linear)
                               and operations[j[0]].reshape):
            return None
        path.append(operations[j[0]])
        j = operations[j[0]].inputs
    return path[::-1]


def _exact_first(operations: list, index: int, region: Region) -> tuple[Any, Any] | None:
    """The exact bounds of the first weighted affine map (after reshapes only) over the ball:
    centre +- eps ||row||_q; None where operation `index` is not of that form."""
    op, prefix = operations[index], _reshapes_below(operations, index)
    if not isinstance(op, Linear) or prefix is None:
        return None
    x = region.x0
    for p in prefix:
        x = p(x)
    centre = op(x)
    if region.norm == "linf":
        if region.lower is None:
            return None
        lower, upper = region.lower, region.upper
        for p in prefix:
            lower, upper = p(lower), p(upper)
        return interval_step(op, lower, upper)
    if op.apply_square is None:
        return None
    ones = ops.ones((1,) + op.in_shape, x.dtype)
    rows = ops.sqrt(op.apply_square(ones))
    radius = _per_sample(region.eps, centre) * rows
    return centre - radius, centre + radius


# -- back-substitution (CROWN) ---------------------------------------------------------------
def _relu_step(lam_lo: Any, lam_up: Any, lower: Any, upper: Any) -> tuple:
    """Rows and bias terms after relaxing one ReLU with input bounds [lower, upper]."""
    return relax_relu(lam_lo, lam_up, _expand(lower), _expand(upper),
                      tuple(range(2, len(lam_lo.shape))))


def _upsample(values: Any, op: MaxPool) -> Any:
    """A pooled map (B, m, Ho, Wo, C) spread back over its windows, (B, m, H, W, C)."""
    height, width = op.in_shape[:2]
    out = spread(values, 1.0, op.pool)
    pad_h, pad_w = height - out.shape[2], width - out.shape[3]
    if pad_h or pad_w:
        out = ops.pad(out, [(0, 0), (0, 0), (0, pad_h), (0, pad_w), (0, 0)])
    return out


def _maxpool_relaxation(op: MaxPool, lower: Any, upper: Any) -> tuple:
    """(mask of each window's chosen input, window decided, the window's largest upper bound):
    the chosen input has the largest lower bound; the window is decided when that lower bound
    is at least every other input's upper bound (then max = the chosen input exactly)."""
    if not op.non_overlapping:
        raise ValueError(f"CROWN relaxes max pooling over non-overlapping windows only; layer "
                         f"{op.name!r} has pool {op.pool} and strides {op.strides}. Use "
                         "method='ibp' or 'lipschitz' for this model.")
    pooled_low = op(lower)
    pooled_up = op(upper)
    spread_low = _upsample(_expand(pooled_low), op)[:, 0]
    chosen = ops.cast(lower >= spread_low, lower.dtype)
    # One input per window: keep the first of ties by a cumulative count within the window.
    chosen = _first_in_window(chosen, op)
    others_up = ops.where(chosen > 0, ops.full_like(upper, -np.inf), upper)
    decided = pooled_low >= op(others_up)
    return chosen, decided, pooled_up


def _first_in_window(mask: Any, op: MaxPool) -> Any:
    """Keeps, per window, only the first 1 of `mask` in row-major order."""
    (ph, pw) = op.pool
    height, width = (op.in_shape[0] // ph) * ph, (op.in_shape[1] // pw) * pw
    core = mask[:, :height, :width]
    b, c = ops.shape(core)[0], op.in_shape[2]
    windows = ops.reshape(core, (b, height // ph, ph, width // pw, pw, c))
    windows = ops.reshape(ops.transpose(windows, (0, 1, 3, 5, 2, 4)),
                          (b, height // ph, width // pw, c, ph * pw))
    first = ops.cast(ops.cumsum(windows, axis=-1) == 1, mask.dtype) * windows
    first = ops.reshape(first, (b, height // ph, width // pw, c, ph, pw))
    first = ops.reshape(ops.transpose(first, (0, 1, 4, 2, 5, 3)), (b, height, width, c))
    pad_h, pad_w = op.in_shape[0] - height, op.in_shape[1] - width
    if pad_h or pad_w:
        first = ops.pad(first, [(0, 0), (0, pad_h), (0, pad_w), (0, 0)])
    return first


def _maxpool_step(op: MaxPool, lam_lo: Any, lam_up: Any, relaxation: tuple) -> tuple:
    chosen, decided, pooled_up = relaxation
    through_lo, through_up, bias_lo, bias_up = relax_maxpool(
        lam_lo, lam_up, _expand(decided), _expand(pooled_up), tuple(range(2, len(lam_lo.shape))))
    mask = _expand(chosen)
    return _upsample(through_lo, op) * mask, _upsample(through_up, op) * mask, bias_lo, bias_up


def back_substitute(operations: list, bounds: list, relaxations: dict, rows: Any,
                    region: Region, upper: bool = True, first: int = 0) -> tuple[Any, Any]:
    """Lower and upper bounds of rows · z over the region, z the output of the last of
    `operations`; rows (B, m, *out_shape) -> (B, m). With upper=False: the lower bound and the
    magnitude of the sums that make it (for the rounding allowance) instead. The rows go
    back through the graph in reverse topological order; an Add hands them to each input,
    and the rows that reach one map from several paths add up. Operations below `first` are
    not passed: their outputs are the region (IBP's elision passes the last one alone)."""
    m = rows.shape[1]
    axes = tuple(range(2, len(rows.shape)))
    # (B, m) zeros; B may be unknown where a training step traces a partial batch
    bias_lo = bias_up = bias_abs = ops.zeros_like(ops.sum(rows, axis=axes))
    pending = {len(operations) - 1: (rows, rows if upper else None)}

    def hand(target: int, lo: Any, up: Any) -> None:
        target = max(target, first - 1)  # below `first`: the region's input
        if target in pending:
            lo_before, up_before = pending[target]
            lo, up = lo_before + lo, (up_before + up if upper else None)
        pending[target] = (lo, up)

    for index in range(len(operations) - 1, first - 1, -1):
        if index not in pending:
            continue
        lam_lo, lam_up = pending.pop(index)
        op = operations[index]
        axes = tuple(range(2, len(lam_lo.shape)))
        if isinstance(op, Add):
            for j in op.inputs:
                hand(j, lam_lo, lam_up)
            continue
        if isinstance(op, Linear):
            b = op.bias(lam_lo.dtype)
            if b is not None:
                bias_lo = bias_lo + ops.sum(lam_lo * b[:, None], axis=axes)
                bias_abs = bias_abs + ops.sum(ops.abs(lam_lo * b[:, None]), axis=axes)
                if upper:
                    bias_up = bias_up + ops.sum(lam_up * b[:, None], axis=axes)
            lam_lo = _rows(op.transpose(_flat_rows(lam_lo)), m)
            if upper:
                lam_up = _rows(op.transpose(_flat_rows(lam_up)), m)
        else:
            (j,) = op.inputs
            lower, up_bound = bounds[j] if j >= first else (region.lower, region.upper)
            if isinstance(op, ReLU):
                step = _relu_step(lam_lo, lam_up if upper else lam_lo, lower, up_bound)
            else:
                step = _maxpool_step(op, lam_lo, lam_up if upper else lam_lo,
                                     relaxations[index])
            lam_lo, new_up, add_lo, add_up = step
            bias_lo = bias_lo + add_lo
            bias_abs = bias_abs + ops.abs(add_lo)
            if upper:
                lam_up, bias_up = new_up, bias_up + add_up
        hand(op.inputs[0], lam_lo, lam_up)
    lam_lo, lam_up = pending.pop(first - 1)
    low = region.minimum(lam_lo) + bias_lo
    if not upper:
        return low, region.magnitude(lam_lo) + bias_abs
    return low, -region.minimum(-lam_up) + bias_up


def dense_row_floats(operations: list, input_shape: tuple, batch: int) -> int:
    """Entries of one dense row per point through `operations`: the batch times the widest
    map (the input's or an operation's output)."""
    return batch * max([math.prod(input_shape)] + [math.prod(op.out_shape) for op in operations])


def patch_channel_floats(operations: list, batch: int) -> int:
    """Entries of one channel of patch rows per point for the last operation's map."""
    ho, wo, _ = operations[-1].out_shape
    return batch * ho * wo * int(largest_patch(operations))


def held_floats(operations: list, input_shape: tuple, batch: int) -> int:
    """Entries held through a whole bound computation: every operation's lower and upper
    bounds (and the input's) for `batch` points."""
    return 2 * batch * (math.prod(input_shape) + sum(math.prod(op.out_shape)
                                                     for op in operations))


def growing_steps(operations: list, input_shape: tuple, batch: int, method: str
                  ) -> list[tuple[str, int, str]]:
    """(what, floats, layout) of every back-substitution step whose rows grow with the batch:
    the final margins' (every rival of every point, not chunked) and the layers whose smallest
    chunk (one row, or one channel of patches, per point) is still above `ROW_BUDGET`; layout
    "rows" or "patches". The others stay near the budget whatever the batch. For
    `memory.check_fits`, before a run."""
    if method not in ("crown", "auto", "crown-ibp"):
        return []
    rivals = operations[-1].out_shape[-1]
    steps = [("the margins", rivals * dense_row_floats(operations, input_shape, batch), "rows")]
    for index, route in crown_routes(operations, method).items():
        prefix = operations[:index + 1]
        if route == "dense":
            floats, layout = dense_row_floats(prefix, input_shape, batch), "rows"
        elif route == "patches":
            floats, layout = patch_channel_floats(prefix, batch), "patches"
        else:
            continue
        if floats > ROW_BUDGET:
            steps.append((f"layer {prefix[-1].name!r}" +
                          (" (as patches)" if route == "patches" else ""), floats, layout))
    return steps


def _in_chunks(size: int, chunk: int, dtype: Any, bound: Any, out_shape: tuple
               ) -> tuple[Any, Any]:
    """bound(selector) -> (lower, upper) of shape out_shape + (chunk,), over the rows of the
    (size, size) identity in chunks taken one at a time (`backend.map_in_order`: unrolled,
    the compiled program kept every chunk alive at once: 11 GB at 100 points on a small
    ResNet's dense rows in TensorFlow, and certify of a ResNet-20's patches at 100 points was
    killed for memory). The last chunk is padded by zero rows; the results are joined along
    the last axis, out_shape + (size,)."""
    count = -(-size // chunk)
    blocks = ops.reshape(ops.eye(count * chunk, size, dtype=dtype), (count, chunk, size))
    lows, ups = backend.map_in_order(bound, blocks, out_shape + (chunk,))
    order = tuple(range(1, len(out_shape) + 1)) + (0, len(out_shape) + 1)

    def joined(values):  # (count, *out_shape, chunk) -> (*out_shape, size)
        values = ops.reshape(ops.transpose(values, order), out_shape + (count * chunk,))
        return values[..., :size]
    return joined(lows), joined(ups)


def crown_layer_bounds(operations: list, index: int, bounds: list, relaxations: dict,
                       region: Region) -> tuple[Any, Any]:
    """The output bounds of operation `index` by back-substitution, its neurons in chunks of
    dense rows (`_in_chunks`)."""
    shape = operations[index].out_shape
    size, batch = math.prod(shape), region.x0.shape[0]
    per_row = dense_row_floats(operations[:index + 1], region.x0.shape[1:], batch)
    chunk = min(size, max(1, ROW_BUDGET // max(1, per_row)))

    def bound(block):
        rows = ops.broadcast_to(ops.reshape(block, (1, chunk) + shape), (batch, chunk) + shape)
        return back_substitute(operations[:index + 1], bounds, relaxations, rows, region)

    lows, ups = _in_chunks(size, chunk, region.x0.dtype, bound, (batch,))
    return ops.reshape(lows, (batch,) + shape), ops.reshape(ups, (batch,) + shape)


def crown_patch_bounds(operations: list, index: int, bounds: list, relaxations: dict,
                       region: Region) -> tuple[Any, Any]:
    """The output bounds of convolutional operation `index` by back-substitution of patches
    (`patches.py`), its channels in chunks (`_in_chunks`)."""
    prefix = operations[:index + 1]
    ho, wo, channels = prefix[-1].out_shape
    batch = region.x0.shape[0]
    chunk = min(channels, max(1, ROW_BUDGET // max(1, patch_channel_floats(prefix, batch))))

    def bound(block):
        return back_substitute_patches(prefix, bounds, relaxations, region, block)

    return _in_chunks(channels, chunk, region.x0.dtype, bound, (batch, ho, wo))


def crown_route(operations: list, index: int) -> str:
    """How "crown" bounds operation `index`'s outputs: "exact" (a first affine map),
    "patches" (a convolutional map, residual sums allowed: rows as patches, where cheaper
    than dense rows or the map is too wide for them), "dense" (dense rows, at most
    `CROWN_NEURONS` neurons) or "interval" (the fallback: a layer too wide for dense rows
    that patches cannot pass)."""
    prefix = operations[:index + 1]
    if isinstance(prefix[-1], Linear) and _reshapes_below(operations, index) is not None:
        return "exact"
    dense_ok = math.prod(prefix[-1].out_shape) <= CROWN_NEURONS
    if patchable(prefix) and \
            (not dense_ok or patch_cost(prefix) < dense_cost(prefix)):
        return "patches"
    return "dense" if dense_ok else "interval"


def route_cost(operations: list, route: str) -> int:
    """Entries per point of the rows that bound the last operation by `route` (0: none)."""
    return {"dense": dense_cost, "patches": patch_cost}.get(route, lambda _: 0)(operations)


def crown_routes(operations: list, method: str) -> dict[int, str]:
    """{index: route} of every affine map whose bounds shape a relaxation (feeding a ReLU or
    a max pooling): `crown_route` for "crown"; for "auto" the same while the summed
    `route_cost` stays within `AUTO_BUDGET`, "interval-cost" for a layer beyond it; "interval"
    for every such map under the other methods."""
    routes, spent = {}, 0
    for index in range(len(operations)):
        if not _bounded_by_crown(operations, index):
            continue
        route = crown_route(operations, index) if method in ("crown", "auto") else "interval"
        if method == "auto":
            cost = route_cost(operations[:index + 1], route)
            if spent + cost > AUTO_BUDGET:
                route = "interval-cost"
            else:
                spent += cost
        routes[index] = route
    return routes


def crown_plan(operations: list, method: str = "crown") -> list[tuple[str, str]]:
    """(layer name, route) of every affine map whose bounds "crown" (or "auto") computes
    (those feeding a ReLU or a max pooling): see `crown_route` and `crown_routes`."""
    return [(operations[index].name, route)
            for index, route in crown_routes(operations, method).items()]


def _bounded_by_crown(operations: list, index: int) -> bool:
    """An affine map or a sum feeding a ReLU or a max pooling: its bounds shape their
    relaxation."""
    return isinstance(operations[index], (Linear, Add)) and any(
        index in op.inputs and isinstance(op, (ReLU, MaxPool)) for op in operations[index + 1:])


def layer_bounds(operations: list, region: Region, method: str) -> tuple[list, dict]:
    """Every operation's output bounds and the max poolings' relaxations."""
    bounds, relaxations = [], {}
    routes = crown_routes(operations, method)
    for index, op in enumerate(operations):
        exact = _exact_first(operations, index, region)
        if exact is not None:
            lower, upper = exact
        else:
            first, *others = input_bounds(operations, index, bounds, region)
            lower, upper = interval_step(op, *first, *others)
            route = routes.get(index, "interval")
            if route in ("dense", "patches"):
                by = crown_layer_bounds if route == "dense" else crown_patch_bounds
                crown_low, crown_up = by(operations, index, bounds, relaxations, region)
                lower, upper = (backend.maximum(lower, crown_low), backend.minimum(
                    upper, crown_up)) if INTERSECT_INTERVALS else (crown_low, crown_up)
        if isinstance(op, MaxPool) and method != "ibp":
            relaxations[index] = _maxpool_relaxation(
                op, *input_bounds(operations, index, bounds, region)[0])
        bounds.append((lower, upper))
    return bounds, relaxations


def margin_rows(labels: Any, k: int, dtype: str) -> Any:
    """(B, k, k): row j is e_y - e_j (row y is zero)."""
    label_hot = ops.one_hot(labels, k, dtype=dtype)
    return label_hot[:, None, :] - ops.eye(k, dtype=dtype)[None]


def propagated_margins(operations: list, region: Region, rows: Any, method: str) -> tuple:
    """Lower bounds of rows · f over the region on one set of layer bounds (`layer_bounds` by
    `method`), each with the magnitude of the sums that made it: IBP's (elision: the last
    layer folded into the rows, over the intervals below it), and CROWN's back-substitution
    through every layer as a function, computed only where it is called."""
    bounds, relaxations = layer_bounds(operations, region, method)
    last = len(operations) - 1
    if isinstance(operations[last], Add):  # no single map to fold: the sum's own interval
        ibp = back_substitute(operations, bounds, {}, rows, _interval_region(*bounds[last]),
                              upper=False, first=last + 1)
    else:  # over its input's interval, or the region itself where that is the input
        (j,) = operations[last].inputs
        below = _interval_region(*bounds[j]) if j >= 0 else region
        ibp = back_substitute(operations, bounds, relaxations, rows, below, upper=False,
                              first=last)
    return ibp, lambda: back_substitute(operations, bounds, relaxations, rows, region,
                                        upper=False)


def margin_bounds(operations: list, x0: Any, labels: Any, eps: Any, norm: str, method: str,
                  box: tuple[float | None, float | None]) -> Any:
    """Lower bounds of f_y - f_j over the region, (B, k); +inf at j = y."""
    region = Region(x0, eps, norm, box)
    k = operations[-1].out_shape[-1]
    rows = margin_rows(labels, k, x0.dtype)
    allowance = rounding_allowance(operations, x0)
    if method != "lipschitz":
        (low, size), crown_of = propagated_margins(operations, region, rows, method)
        low = low - allowance * size
        if method != "ibp":  # both bounds are sound: each margin takes the better one, so
            # CROWN's radius is never below the interval bound's on the same layer bounds
            crown, size = crown_of()
            low = backend.maximum(low, crown - allowance * size) if INTERSECT_INTERVALS \
                else crown - allowance * size
    else:
        low, size = lipschitz_margins(operations, x0, rows, region)
        low = low - allowance * size
    own = ops.one_hot(labels, k) > 0
    return ops.where(own, np.inf, low)


# Rounding (issue 30): a bound computed in floating point can exceed the exact one by the
# rounding of its sums. Each margin gives up gamma_n times the magnitude of the sums that made
# it (`Region.magnitude` and the absolute bias terms: Higham's a-priori bound for a sum of
# n terms, gamma_n = n u / (1 - n u), u the unit roundoff), with n the network's whole size
# (input and every operation's outputs) times ROUNDING_SAFETY, which leaves room for the
# rounding of the intermediate bounds and back-substituted rows. It is a documented allowance,
# not a machine-checked proof; tests/test_certify.py checks that it covers the float32 bounds'
# measured error against float64 on random networks. certify computes in float64, where it is
# about 1e-11 of the margins' scale on LeNet-5.
ROUNDING_SAFETY = 4


def rounding_allowance(operations: list, x0: Any) -> float:
    """gamma_n (times `ROUNDING_SAFETY`) for bounds computed in x0's float type."""
    n = ROUNDING_SAFETY * (math.prod(x0.shape[1:]) +
                           sum(math.prod(op.out_shape) for op in operations))
    u = _epsilon(x0.dtype) / 2
    return n * u / (1 - n * u)


def _epsilon(dtype: Any) -> float:
    """The machine epsilon of a backend float type (twice its unit roundoff)."""
    return float(np.finfo(keras.backend.standardize_dtype(dtype)).eps)


def _interval_region(lower: Any, upper: Any) -> Region:
    region = Region.__new__(Region)
    region.x0, region.norm, region.eps = (lower + upper) / 2, "linf", None
    region.lower, region.upper = lower, upper
    return region


# -- Lipschitz -------------------------------------------------------------------------------
def _abs_sums(op: Any) -> tuple[float, float]:
    """(largest absolute row sum, largest absolute column sum) of W, rounded up: the sums are
    computed in the layer's float type over at most n terms, so each is within n u of the
    exact one (u its unit roundoff), and the factor 1 + 2 n u covers that."""
    rows = op.apply_abs(ops.ones((1,) + op.in_shape))
    dtype = rows.dtype
    n = max(math.prod(op.in_shape), math.prod(op.out_shape))
    guard = 1 + 2 * n * _epsilon(dtype)
    columns = backend.vjp(op.apply_abs, ops.zeros((1,) + op.in_shape, dtype))[1](
        ops.ones((1,) + op.out_shape, dtype))
    return (float(ops.convert_to_numpy(ops.max(rows))) * guard,
            float(ops.convert_to_numpy(ops.max(columns))) * guard)


def operator_norm(op: Any, norm: str) -> float:
    """An upper bound of ||W||_{p -> p} for one operation, never an estimate. ReLU: 1; max
    pooling: 1, or for l2 the square root of the number of windows an input lies in; l_inf:
    the largest absolute row sum. l2: the smaller of the layer's own bound (`Linear.l2_norm`:
    a dense kernel's exact largest singular value, a convolution's DFT bound, a diagonal's
    largest entry) and sqrt(||W||_1 ||W||_inf), which holds for any matrix."""
    if isinstance(op, ReLU):
        return 1.0
    if isinstance(op, MaxPool):
        overlap = math.ceil(op.pool[0] / op.strides[0]) * math.ceil(op.pool[1] / op.strides[1])
        return 1.0 if norm == "linf" else math.sqrt(overlap)
    rows, columns = _abs_sums(op)
    if norm == "linf":
        return rows
    bound = math.sqrt(rows * columns)
    return min(bound, op.l2_norm()) if op.l2_norm is not None else bound


def lipschitz_constants(operations: list, norm: str) -> dict:
    """An upper bound of each operation's Lipschitz constant from the network's input (key -1:
    1): a map's operator norm times its input's; a sum's, the sum of its inputs' (along a chain,
    the product of the norms)."""
    constants = {-1: 1.0}
    for index, op in enumerate(operations):
        if isinstance(op, Add):
            constants[index] = sum(constants[j] for j in op.inputs)
        else:
            constants[index] = operator_norm(op, norm) * constants[op.inputs[0]]
    return constants


def lipschitz_margins(operations: list, x0: Any, rows: Any, region: Region) -> tuple:
    """(margin_j(x) - eps * L_j, the magnitude of its sums) with
    L_j = ||c_j^T W_last||_dual * prod of the other norms.

    Logits that end in a ReLU (relu(W z + b)): each logit is 1-Lipschitz in its own
    pre-activation, so f_y - f_j moves by at most ||W^T e_y||_dual + ||W^T e_j||_dual per unit
    of z, which replaces ||W^T (e_y - e_j)||_dual."""
    k = operations[-1].out_shape[-1]
    z = run(operations, x0)
    centre = ops.sum(rows * z[:, None], axis=-1)
    relu_last = isinstance(operations[-1], ReLU)
    index = operations[-1].inputs[0] if relu_last else len(operations) - 1
    last = operations[index] if index >= 0 else None
    if not isinstance(last, Linear):
        raise ValueError("certify's 'lipschitz' method needs the logits to come from a Dense "
                         "or Conv2D layer (with or without a ReLU): this model ends otherwise.")
    product = lipschitz_constants(operations[:index], region.norm)[last.inputs[0]]

    def dual_norms(vectors: Any) -> Any:
        flat = ops.reshape(vectors, (-1, k))
        through = ops.reshape(last.transpose(flat), (vectors.shape[0], k, -1))
        return ops.sum(ops.abs(through), axis=-1) if region.norm == "linf" else \
            ops.sqrt(ops.sum(ops.square(through), axis=-1))

    if relu_last:
        own = dual_norms(ops.eye(k, dtype=rows.dtype)[None])[0]  # ||W^T e_c|| per class c
        dual = ops.sum(ops.abs(rows) * own[None, None], axis=-1)  # |e_y - e_j| . norms
    else:
        dual = dual_norms(rows)
    reach = region.eps[:, None] * dual * product
    return centre - reach, ops.sum(ops.abs(rows * z[:, None]), axis=-1) + reach
