"""CROWN bounds of a convolutional layer's neurons with the rows kept as patches.

Back-substituting the bound of one neuron of a convolutional map gives rows that are zero
outside the neuron's receptive field. Stored densely (a row per neuron over every map below
it, `bounds.crown_layer_bounds`), they cost neurons x map size; stored as patches (auto_LiRPA's
"patches" mode, Xu et al. 2020) they cost neurons x receptive field. The row of neuron (i, j, c)
at a map below is a window of that map whose top-left corner is (i S_h - P_h, j S_w - P_w)
(S: the product of the strides passed, P: the padding they add up to), so every row shares one
window geometry and a map's values under all windows are one gather (`windows`).

Each operation is passed by its transpose on the patches: a convolution by the transposed
convolution of every patch with its kernel ('valid': the patch grows by kernel - 1, its corner
moves by the padding), a per-channel map (batch norm, rescaling) by its scale, a ReLU by
CROWN's relaxation with the bounds under the windows, a non-overlapping max pooling by
spreading each patch entry over its window and keeping the chosen input. Entries that fall on
padding (outside a map) are zeroed: they stand for no neuron. The result equals the dense
back-substitution (tests/test_crown_patches.py checks it to 1e-12 in float64).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from keras import ops

from keras_margin.propagation.network import Add, Linear, MaxPool, ReLU
from keras_margin.propagation.relaxations import relax_maxpool, relax_relu


def patchable(operations: list) -> bool:
    """True where every operation up to the last has a patch transpose and the last one's
    output is a (H, W, C) map: convolutions (undilated), per-channel maps, ReLU,
    non-overlapping max pooling and residual sums (`Add`), from a (H, W, C) input, where
    every path from the last operation down to a map passes the same strides (so the
    patches that meet there share one window grid)."""
    if len(operations[0].in_shape) != 3 or len(operations[-1].out_shape) != 3:
        return False
    for op in operations:
        if isinstance(op, (ReLU, Add)):
            continue
        if isinstance(op, MaxPool):
            if not op.non_overlapping:
                return False
        elif not isinstance(op, Linear) or (op.conv is None and not op.pointwise):
            return False
    try:
        geometries(operations)
    except _StridesDiffer:
        return False
    return True


class _StridesDiffer(ValueError):
    """Two paths reach one map through different strides."""


class _Geometry:
    """The windows of every neuron of a (Ho, Wo) map on one map below it: corner stride S,
    corner offset P (top, left), window size, and the map's (H, W, C)."""

    def __init__(self, stride: tuple, pad: tuple, size: tuple, shape: tuple) -> None:
        self.stride, self.pad, self.size, self.shape = stride, pad, size, tuple(shape)

    def below(self, op: Any) -> _Geometry:
        """The geometry on `op`'s input map, from the one on its output map."""
        if isinstance(op, MaxPool):
            (ph, pw) = op.pool
            return _Geometry((self.stride[0] * ph, self.stride[1] * pw),
                             (self.pad[0] * ph, self.pad[1] * pw),
                             (self.size[0] * ph, self.size[1] * pw), op.in_shape)
        if isinstance(op, Linear) and op.conv is not None:
            (kh, kw), (sh, sw), (th, tw) = op.conv.size, op.conv.strides, op.conv.pad
            return _Geometry((self.stride[0] * sh, self.stride[1] * sw),
                             (self.pad[0] * sh + th, self.pad[1] * sw + tw),
                             ((self.size[0] - 1) * sh + kh, (self.size[1] - 1) * sw + kw),
                             op.in_shape)
        return _Geometry(self.stride, self.pad, self.size, op.in_shape)

    @property
    def elements(self) -> int:
        return self.size[0] * self.size[1] * self.shape[2]


def _union(a: _Geometry, b: _Geometry) -> _Geometry:
    """The smallest geometry whose windows hold both's (one stride): where two paths meet."""
    if a.stride != b.stride:
        raise _StridesDiffer(f"strides {a.stride} and {b.stride}")
    pad = (max(a.pad[0], b.pad[0]), max(a.pad[1], b.pad[1]))
    end = (max(a.size[0] - a.pad[0], b.size[0] - b.pad[0]),
           max(a.size[1] - a.pad[1], b.size[1] - b.pad[1]))
    return _Geometry(a.stride, pad, (pad[0] + end[0], pad[1] + end[1]), a.shape)


def _embed(lam: Any, inner: _Geometry, outer: _Geometry) -> Any:
    """Patches (..., kh, kw, C) of `inner` as patches of `outer` (zeros around them)."""
    if inner.size == outer.size and inner.pad == outer.pad:
        return lam
    top, left = outer.pad[0] - inner.pad[0], outer.pad[1] - inner.pad[1]
    bottom = outer.size[0] - inner.size[0] - top
    right = outer.size[1] - inner.size[1] - left
    return ops.pad(lam, [(0, 0)] * 4 + [(top, bottom), (left, right), (0, 0)])


def geometries(operations: list) -> dict:
    """The last operation's neurons' windows on the output map of every operation it reads,
    directly or not (key -1: the input): where paths meet, the union of theirs."""
    last = len(operations) - 1
    found = {last: _Geometry((1, 1), (0, 0), (1, 1), operations[last].out_shape)}
    for index in range(last, -1, -1):
        if index not in found:
            continue
        below = found[index].below(operations[index])
        for j in operations[index].inputs:
            found[j] = _union(found[j], below) if j in found else below
    return found


def windows(values: Any, geometry: _Geometry, positions: tuple) -> Any:
    """values (b, H, W, C) under every neuron's window -> (b, Ho, Wo, 1, kh, kw, C); zeros
    where a window leaves the map."""
    (height, width, _), (sh, sw) = values.shape[1:], geometry.stride
    (th, tw), (kh, kw), (ho, wo) = geometry.pad, geometry.size, positions
    bottom = max(0, (ho - 1) * sh - th + kh - height)
    right = max(0, (wo - 1) * sw - tw + kw - width)
    # A corner above or left of the padded map (never for the paddings Keras computes) would
    # need negative indices; padding by the offset keeps every index >= 0.
    padded = ops.pad(values, [(0, 0), (th, bottom), (tw, right), (0, 0)])
    rows = (np.arange(ho)[:, None] * sh + np.arange(kh)[None]).reshape(-1)
    cols = (np.arange(wo)[:, None] * sw + np.arange(kw)[None]).reshape(-1)
    out = ops.take(ops.take(padded, rows, axis=1), cols, axis=2)
    out = ops.reshape(out, (values.shape[0], ho, kh, wo, kw, values.shape[3]))
    return ops.expand_dims(ops.transpose(out, (0, 1, 3, 2, 4, 5)), 3)


def _transpose_conv(op: Linear, lam: Any) -> Any:
    """Every patch (b, Ho, Wo, m, kh, kw, C_out) through the convolution's transpose."""
    lead = tuple(lam.shape[:4])
    flat = ops.reshape(lam, (-1,) + tuple(lam.shape[4:]))
    out = ops.conv_transpose(flat, op.conv.kernel(flat), op.conv.strides, "valid")
    # (n - 1) s + k entries; Keras's 'valid' transpose gives n s where k < s (a strided 1 x 1
    # projection shortcut): those last entries are zeros past the window.
    (kh, kw), (sh, sw) = op.conv.size, op.conv.strides
    out = out[:, :(flat.shape[1] - 1) * sh + kh, :(flat.shape[2] - 1) * sw + kw]
    return ops.reshape(out, lead + tuple(out.shape[1:]))


def _bias_term(op: Linear, lam: Any, geometry: _Geometry, positions: tuple) -> Any:
    b = op.bias(lam.dtype)
    if b is None:
        return None
    under = windows(ops.broadcast_to(b, (1,) + op.out_shape), geometry, positions)
    return ops.sum(lam * under, axis=(4, 5, 6))


def back_substitute_patches(operations: list, bounds: list, relaxations: dict, region: Any,
                            selector: Any) -> tuple[Any, Any]:
    """Lower and upper bounds of m combinations of the last operation's (Ho, Wo, C) output
    channels over the region, (B, Ho, Wo, m) each: `selector` (m, C) holds their weights (rows
    of the identity: those channels' neurons; a zero row bounds nothing, 0). The operations
    are passed from the last down (a graph's in reverse topological order); at an `Add` every
    input gets the same patches, and where paths meet their patches are summed on the union
    of their windows (`geometries`)."""
    batch = region.x0.shape[0]
    last = operations[-1]
    ho, wo, _ = last.out_shape
    positions = (ho, wo)
    m = selector.shape[0]
    dtype = region.x0.dtype
    grid = geometries(operations)
    # The rows: the selector's, as patches of size 1 x 1.
    lam = ops.broadcast_to(ops.reshape(selector, (1, 1, 1, m, 1, 1, -1)),
                           (batch, ho, wo, m, 1, 1, last.out_shape[2]))
    pending = {len(operations) - 1: (lam, lam, grid[len(operations) - 1])}
    bias_lo = bias_up = ops.zeros((batch, ho, wo, m), dtype)
    readers = _readers(operations)

    def hand(j, lam_lo, lam_up, geometry):
        if j in pending:
            lo, up, seen = pending[j]
            lam_lo = _embed(lam_lo, geometry, grid[j]) + _embed(lo, seen, grid[j])
            lam_up = _embed(lam_up, geometry, grid[j]) + _embed(up, seen, grid[j])
            geometry = grid[j]
        pending[j] = (lam_lo, lam_up, geometry)

    for index in range(len(operations) - 1, -1, -1):
        if index not in pending:
            continue
        lam_lo, lam_up, geometry = pending.pop(index)
        op = operations[index]
        if isinstance(op, Add):
            for j in op.inputs:
                hand(j, lam_lo, lam_up, geometry)
            continue
        (j,) = op.inputs
        if isinstance(op, Linear):
            add = _bias_term(op, lam_lo, geometry, positions)
            if add is not None:
                bias_lo = bias_lo + add
                bias_up = bias_up + _bias_term(op, lam_up, geometry, positions)
            below = geometry.below(op)
            if op.conv is not None:
                inside = windows(ops.ones((1,) + op.in_shape, dtype), below, positions)
                if index == len(operations) - 1:  # the identity's rows: the kernel itself
                    kernel = ops.einsum("hwic,mc->mhwi", op.conv.kernel(lam), selector)
                    lam_lo = lam_up = ops.expand_dims(kernel, (0, 1, 2)) * inside
                else:
                    lam_lo = _transpose_conv(op, lam_lo) * inside
                    lam_up = _transpose_conv(op, lam_up) * inside
            else:  # per channel: the same transpose on every patch entry
                lam_lo, lam_up = _transpose_entries(op, lam_lo), _transpose_entries(op, lam_up)
            hand(j, lam_lo, lam_up, below)
            continue
        lower, upper = _input_bounds(bounds, region, j)
        if isinstance(op, ReLU):
            lam_lo, lam_up, add_lo, add_up = relax_relu(
                lam_lo, lam_up, windows(lower, geometry, positions),
                windows(upper, geometry, positions), axes=(4, 5, 6))
            bias_lo, bias_up = bias_lo + add_lo, bias_up + add_up
            hand(j, lam_lo, lam_up, geometry)
            continue
        chosen, decided, pooled_up = relaxations[index]
        lam_lo, lam_up, add_lo, add_up = relax_maxpool(
            lam_lo, lam_up, windows(ops.cast(decided, dtype), geometry, positions) > 0,
            windows(pooled_up, geometry, positions), (4, 5, 6))
        bias_lo, bias_up = bias_lo + add_lo, bias_up + add_up
        if j >= 0 and isinstance(operations[j], ReLU) and readers[j] == 1:
            # A ReLU under the pooling, read by it alone: each row entry goes to its window's
            # chosen input only, so the ReLU is relaxed before spreading, with the chosen
            # inputs' bounds (the same rows, a quarter of the work for 2 x 2 windows).
            below_lo, below_up = _input_bounds(bounds, region, operations[j].inputs[0])
            lam_lo, lam_up, add_lo, add_up = relax_relu(
                lam_lo, lam_up, windows(_pick(below_lo, chosen, op), geometry, positions),
                windows(_pick(below_up, chosen, op), geometry, positions), (4, 5, 6))
            bias_lo, bias_up = bias_lo + add_lo, bias_up + add_up
            j = operations[j].inputs[0]
        below = geometry.below(op)
        mask = windows(chosen, below, positions)
        hand(j, spread(lam_lo, mask, op.pool), spread(lam_up, mask, op.pool), below)
    lam_lo, lam_up, geometry = pending.pop(-1)
    low = _minimum(region, lam_lo, geometry, positions) + bias_lo
    up = -_minimum(region, -lam_up, geometry, positions) + bias_up
    return low, up


def _readers(operations: list) -> dict:
    """How many operations read each one's output."""
    count: dict = {}
    for op in operations:
        for j in op.inputs:
            count[j] = count.get(j, 0) + 1
    return count


def _input_bounds(bounds: list, region: Any, j: int) -> tuple:
    """The bounds of operation j's output (j = -1: the region's box)."""
    return bounds[j] if j >= 0 else (region.lower, region.upper)


def _transpose_entries(op: Linear, lam: Any) -> Any:
    flat = ops.reshape(lam, (-1,) + tuple(lam.shape[4:]))
    return ops.reshape(op.transpose(flat), tuple(lam.shape))


def _pick(values: Any, chosen: Any, op: MaxPool) -> Any:
    """Each pooling window's chosen input of `values` (B, H, W, C) -> (B, Ho, Wo, C)."""
    (ph, pw), (ho, wo, channels) = op.pool, op.out_shape
    core = (values * chosen)[:, :ho * ph, :wo * pw]
    return ops.sum(ops.reshape(core, (-1, ho, ph, wo, pw, channels)), axis=(2, 4))


def spread(lam: Any, mask: Any, pool: tuple) -> Any:
    """Each entry of lam (..., h, w, C) over its pooling window, times the window's mask
    (broadcastable to (..., h ph, w pw, C)). A broadcast, not a repeat (TensorFlow's float64
    repeat took 34 s of LeNet-5's 59)."""
    (ph, pw), (h, w, channels) = pool, tuple(lam.shape[-3:])
    lead = tuple(lam.shape[1:-3])  # the first axis may be unknown (a traced batch)
    flat = ops.reshape(lam, (-1, h, 1, w, 1, channels))
    out = flat * ops.ones((1, 1, ph, 1, pw, 1), lam.dtype)
    return ops.reshape(out, (-1,) + lead + (h * ph, w * pw, channels)) * mask


def _minimum(region: Any, lam: Any, geometry: _Geometry, positions: tuple) -> Any:
    """min over the region of every patch row's <lam, x'>: (B, Ho, Wo, m)."""
    return region.minimum(lam, lambda values: windows(values, geometry, positions), (4, 5, 6))


def largest_patch(operations: list) -> int:
    """The most entries one neuron's patch reaches on any map below the last operation."""
    return max(geometry.elements for geometry in geometries(operations).values())


def dense_cost(operations: list) -> int:
    """Entries of the dense rows of every neuron of the last operation, summed over the maps."""
    neurons = math.prod(operations[-1].out_shape)
    return neurons * sum(math.prod(op.in_shape) for op in operations)


def patch_cost(operations: list) -> int:
    """Entries of the patch rows of every neuron of the last operation, summed over the maps
    each operation it reads passes them to."""
    neurons, grid = math.prod(operations[-1].out_shape), geometries(operations)
    return sum(neurons * grid[index].below(operations[index]).elements
               for index in grid if index >= 0)
