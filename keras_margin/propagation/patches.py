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

from keras_margin.propagation.network import Linear, MaxPool, ReLU, is_chain
from keras_margin.propagation.relaxations import relax_maxpool, relax_relu


def patchable(operations: list) -> bool:
    """True where every operation up to the last has a patch transpose and the last one's
    output is a (H, W, C) map: convolutions (undilated), per-channel maps, ReLU and
    non-overlapping max pooling, from a (H, W, C) input, one after the other (a chain)."""
    if not is_chain(operations) or len(operations[0].in_shape) != 3 or \
            len(operations[-1].out_shape) != 3:
        return False
    for op in operations:
        if isinstance(op, ReLU):
            continue
        if isinstance(op, MaxPool):
            if not op.non_overlapping:
                return False
        elif not isinstance(op, Linear) or (op.conv is None and not op.pointwise):
            return False
    return True


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
    return ops.reshape(out, lead + tuple(out.shape[1:]))


def _bias_term(op: Linear, lam: Any, geometry: _Geometry, positions: tuple) -> Any:
    b = op.bias(lam.dtype)
    if b is None:
        return None
    under = windows(ops.broadcast_to(b, (1,) + op.out_shape), geometry, positions)
    return ops.sum(lam * under, axis=(4, 5, 6))


def back_substitute_patches(operations: list, bounds: list, relaxations: dict, region: Any,
                            channels: tuple) -> tuple[Any, Any]:
    """Lower and upper bounds of the neurons of channels [start, stop) of the last
    operation's (Ho, Wo, C) output over the region: (B, Ho, Wo, stop - start) each."""
    batch = region.x0.shape[0]
    last = operations[-1]
    ho, wo, _ = last.out_shape
    positions = (ho, wo)
    start, stop = channels
    dtype = region.x0.dtype
    geometry = _Geometry((1, 1), (0, 0), (1, 1), last.out_shape)
    # The rows of channels [start, stop): one-hot patches of size 1 x 1.
    eye = ops.eye(last.out_shape[2], dtype=dtype)[start:stop]
    lam = ops.broadcast_to(ops.reshape(eye, (1, 1, 1, stop - start, 1, 1, -1)),
                           (batch, ho, wo, stop - start, 1, 1, last.out_shape[2]))
    lam_lo = lam_up = lam
    bias_lo = bias_up = ops.zeros((batch, ho, wo, stop - start), dtype)
    axes = (4, 5, 6)
    index = len(operations) - 1
    while index >= 0:
        op = operations[index]
        if isinstance(op, Linear):
            add = _bias_term(op, lam_lo, geometry, positions)
            if add is not None:
                bias_lo = bias_lo + add
                bias_up = bias_up + _bias_term(op, lam_up, geometry, positions)
            below = geometry.below(op)
            if op.conv is not None:
                inside = windows(ops.ones((1,) + op.in_shape, dtype), below, positions)
                if index == len(operations) - 1:  # the identity's rows: the kernel itself
                    kernel = ops.transpose(op.conv.kernel(lam)[..., start:stop], (3, 0, 1, 2))
                    lam_lo = lam_up = ops.expand_dims(kernel, (0, 1, 2)) * inside
                else:
                    lam_lo = _transpose_conv(op, lam_lo) * inside
                    lam_up = _transpose_conv(op, lam_up) * inside
            else:  # per channel: the same transpose on every patch entry
                lam_lo, lam_up = _transpose_entries(op, lam_lo), _transpose_entries(op, lam_up)
            geometry = below
            index -= 1
            continue
        lower, upper = _input_bounds(bounds, region, index)
        if isinstance(op, ReLU):
            lam_lo, lam_up, add_lo, add_up = relax_relu(
                lam_lo, lam_up, windows(lower, geometry, positions),
                windows(upper, geometry, positions), axes)
            bias_lo, bias_up = bias_lo + add_lo, bias_up + add_up
            index -= 1
            continue
        chosen, decided, pooled_up = relaxations[index]
        lam_lo, lam_up, add_lo, add_up = relax_maxpool(
            lam_lo, lam_up, windows(ops.cast(decided, dtype), geometry, positions) > 0,
            windows(pooled_up, geometry, positions), axes)
        bias_lo, bias_up = bias_lo + add_lo, bias_up + add_up
        if index and isinstance(operations[index - 1], ReLU):
            # A ReLU under the pooling: each row entry goes to its window's chosen input
            # only, so the ReLU is relaxed before spreading, with the chosen inputs' bounds
            # (the same rows, a quarter of the work for 2 x 2 windows).
            below_lo, below_up = _input_bounds(bounds, region, index - 1)
            lam_lo, lam_up, add_lo, add_up = relax_relu(
                lam_lo, lam_up, windows(_pick(below_lo, chosen, op), geometry, positions),
                windows(_pick(below_up, chosen, op), geometry, positions), axes)
            bias_lo, bias_up = bias_lo + add_lo, bias_up + add_up
            index -= 1
        below = geometry.below(op)
        mask = windows(chosen, below, positions)
        lam_lo, lam_up = spread(lam_lo, mask, op.pool), spread(lam_up, mask, op.pool)
        geometry = below
        index -= 1
    low = _minimum(region, lam_lo, geometry, positions) + bias_lo
    up = -_minimum(region, -lam_up, geometry, positions) + bias_up
    return low, up


def _input_bounds(bounds: list, region: Any, index: int) -> tuple:
    return bounds[index - 1] if index else (region.lower, region.upper)


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
    geometry = _Geometry((1, 1), (0, 0), (1, 1), operations[-1].out_shape)
    largest = geometry.elements
    for op in reversed(operations):
        geometry = geometry.below(op)
        largest = max(largest, geometry.elements)
    return largest


def dense_cost(operations: list) -> int:
    """Entries of the dense rows of every neuron of the last operation, summed over the maps."""
    neurons = math.prod(operations[-1].out_shape)
    return neurons * sum(math.prod(op.in_shape) for op in operations)


def patch_cost(operations: list) -> int:
    """Entries of the patch rows of every neuron of the last operation, summed over the maps."""
    geometry = _Geometry((1, 1), (0, 0), (1, 1), operations[-1].out_shape)
    neurons, total = math.prod(operations[-1].out_shape), 0
    for op in reversed(operations):
        geometry = geometry.below(op)
        total += neurons * geometry.elements
    return total
