"""A Keras model as the graph of operations that bound propagation works on.

Every supported layer becomes affine maps (`Linear`: z -> W z + b, with W given as operators:
`apply`, `apply_abs` (|W| z), `apply_square` (W∘W z) and `transpose` (W^T lam)), sums (`Add`,
a residual connection) and the two nonlinearities `ReLU` and `MaxPool`: Dense and Conv2D
(with a relu or linear activation), ReLU (layer or activation), Add, Flatten, Reshape,
AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D, BatchNormalization (inference),
Dropout (inference: the identity), Rescaling and the linear activation. Any other layer is
refused with its name. The operations are a list in topological order; each names the ones
it reads (`inputs`: their indices, -1 the network's input), so a Sequential model is a chain
and a functional one with skips (a ResNet) a graph. Written in `keras.ops`; the transposes of
convolutions and poolings are their vector-Jacobian products (`keras_margin.backend.vjp`), so
every backend runs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from keras_margin import backend

SUPPORTED = ("Dense", "Conv2D", "ReLU", "Activation (relu, linear)", "Add", "Flatten",
             "Reshape", "AveragePooling2D", "GlobalAveragePooling2D", "MaxPooling2D",
             "BatchNormalization", "Dropout", "Rescaling", "InputLayer")


class Conv:
    """A 2-D convolution's geometry for patch transposes: `kernel(z)` its (kh, kw, C_in,
    C_out) kernel in z's float type, strides, the padding (top, left) its 'same' adds."""

    def __init__(self, kernel: Callable, size: tuple, strides: tuple, pad: tuple) -> None:
        self.kernel, self.size, self.strides, self.pad = kernel, size, strides, pad


def same_padding(in_shape: tuple, size: tuple, strides: tuple, padding: str) -> tuple:
    """The (top, left) zeros a 'same' convolution or pooling adds (TensorFlow's rule, which
    every Keras backend follows: the odd one goes to the bottom/right); (0, 0) for 'valid'."""
    if padding == "valid":
        return (0, 0)
    pads = []
    for n, k, s in zip(in_shape[:2], size, strides):
        out = -(-n // s)
        pads.append(max((out - 1) * s + k - n, 0) // 2)
    return tuple(pads)


class Linear:
    """z -> W z + b on a batch (shapes without the batch axis: `in_shape`, `out_shape`)."""

    def __init__(self, name: str, apply: Callable, in_shape: tuple, out_shape: tuple,
                 bias: Callable[[Any], Any] | None = None, apply_abs: Callable | None = None,
                 apply_square: Callable | None = None,
                 transpose: Callable | None = None, reshape: bool = False,
                 l2_norm: Callable[[], float] | None = None, conv: Conv | None = None,
                 pointwise: bool = False) -> None:
        self.name, self.in_shape, self.out_shape = name, tuple(in_shape), tuple(out_shape)
        # For CROWN's patches (`patches.py`): a convolution's geometry, or True for a map
        # whose transpose (and bias) acts the same at every position, per channel.
        self.conv, self.pointwise = conv, pointwise
        self.l2_norm = l2_norm  # an upper bound of ||W||_2 in float64, where one is cheap
        self.reshape = reshape  # a pure reshape (Flatten, Reshape): W is a permutation
        self.apply = apply
        self.apply_abs = apply_abs or apply  # maps with nonnegative weights: W = |W|
        self.apply_square = apply_square
        self._bias, self._transpose = bias, transpose

    def bias(self, dtype: Any = None):
        """b broadcast to (1, *out_shape) (in `dtype` if given), or None. The layer's callable
        gets `dtype` too, for a bias computed from several weights (batch normalization's):
        computed in float64, it is not rounded to float32 first."""
        if self._bias is None:
            return None
        b = self._bias(dtype)
        return b if dtype is None else ops.cast(b, dtype)

    def __call__(self, z):
        out = self.apply(z)
        b = self.bias(out.dtype)
        return out if b is None else out + b

    def transpose(self, lam):
        """W^T lam for a batch of rows lam (N, *out_shape) -> (N, *in_shape)."""
        if self._transpose is not None:
            return self._transpose(lam)
        zeros = ops.zeros((ops.shape(lam)[0],) + self.in_shape, lam.dtype)  # B may be traced
        return backend.vjp(self.apply, zeros)[1](lam)


class ReLU:
    """max(z, 0), elementwise."""

    name = "relu"

    def __init__(self, shape: tuple) -> None:
        self.in_shape = self.out_shape = tuple(shape)

    def __call__(self, z):
        return ops.relu(z)


class MaxPool:
    """2-D max pooling over non-overlapping or overlapping windows (channels last)."""

    def __init__(self, name: str, pool: tuple, strides: tuple, padding: str, in_shape: tuple,
                 out_shape: tuple) -> None:
        self.name, self.pool, self.strides, self.padding = name, pool, strides, padding
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    @property
    def non_overlapping(self) -> bool:
        return self.pool == self.strides and self.padding == "valid"

    def __call__(self, z):
        return ops.max_pool(z, self.pool, self.strides, self.padding)


class Add:
    """The sum of two or more maps of one shape (a residual connection's join)."""

    def __init__(self, name: str, shape: tuple, count: int) -> None:
        self.name, self.count = name, count
        self.in_shape = self.out_shape = tuple(shape)

    def __call__(self, *values):
        out = values[0]
        for value in values[1:]:
            out = out + value
        return out


def sources(operations: list, index: int) -> tuple:
    """The indices of the operations that operation `index` reads (-1: the network's input)."""
    return operations[index].inputs


def is_chain(operations: list) -> bool:
    """Each operation reads the one before it (the first the input): no branch, no skip."""
    return all(op.inputs == (i - 1,) for i, op in enumerate(operations))


def run(operations: list, x: Any) -> Any:
    """The graph's output at x (B, *in_shape)."""
    values = {-1: x}
    for index, op in enumerate(operations):
        values[index] = op(*(values[j] for j in op.inputs))
    return values[len(operations) - 1]


def _refuse(layer: Any, why: str = "") -> ValueError:
    return ValueError(
        f"certify cannot bound layer {layer.name!r} ({type(layer).__name__}{why}). Supported: "
        f"{', '.join(SUPPORTED)}; channels last.")


def _activation(layer: Any, shape: tuple) -> list:
    name = getattr(getattr(layer, "activation", None), "__name__", "linear")
    if name == "relu":
        return [ReLU(shape)]
    if name == "linear":
        return []
    raise _refuse(layer, f", activation {name!r}")


def _dense(layer: Any, in_shape: tuple) -> list:
    if len(in_shape) != 1:
        raise _refuse(layer, f" on inputs of shape {in_shape}: flatten them first")
    out = (layer.units,)
    bias = (lambda dtype: ops.reshape(layer.bias, (1,) + out)) if layer.use_bias else None
    kernel = layer.kernel
    linear = Linear(layer.name, lambda z: backend.matmul(z, like(kernel, z)), in_shape, out, bias,
                    apply_abs=lambda z: backend.matmul(z, ops.abs(like(kernel, z))),
                    apply_square=lambda z: backend.matmul(z, ops.square(like(kernel, z))),
                    transpose=lambda lam: backend.matmul(lam, ops.transpose(like(kernel, lam))),
                    l2_norm=lambda: spectral_norm(_float64(layer.kernel)))
    return [linear] + _activation(layer, out)


def _conv(layer: Any, in_shape: tuple) -> list:
    if layer.data_format != "channels_last" or layer.groups != 1:
        raise _refuse(layer, ": channels_first or grouped convolution")

    def conv(kernel):
        return lambda z: ops.conv(z, kernel(z), layer.strides, layer.padding,
                                  dilation_rate=layer.dilation_rate)

    out = tuple(layer.compute_output_shape((None,) + in_shape)[1:])
    bias = (lambda dtype: ops.reshape(layer.bias, (1, 1, 1, -1))) if layer.use_bias else None
    dilated = any(d != 1 for d in np.atleast_1d(layer.dilation_rate))
    size, strides = tuple(layer.kernel_size), tuple(np.broadcast_to(layer.strides, (2,)))
    geometry = None if dilated else Conv(
        lambda z: like(layer.kernel, z), size, strides,
        same_padding(in_shape, size, strides, layer.padding))
    linear = Linear(layer.name, conv(lambda z: like(layer.kernel, z)), in_shape, out, bias,
                    apply_abs=conv(lambda z: ops.abs(like(layer.kernel, z))),
                    apply_square=conv(lambda z: ops.square(like(layer.kernel, z))),
                    l2_norm=None if dilated else
                    lambda: convolution_norm_bound(_float64(layer.kernel), in_shape[:2]),
                    conv=geometry)
    return [linear] + _activation(layer, out)


def like(weight: Any, z: Any) -> Any:
    """A layer's weight in the float type of the values it meets: float64 inputs are bounded
    in float64 (the model's own float32 weights, exactly), float32 ones as the model runs."""
    return ops.cast(weight, z.dtype)


def _float64(variable: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(variable), np.float64)


# float64 singular values are exact to a few units of float64's rounding times the size
# (LAPACK's backward-stable SVD): 1e-9 relative covers every matrix here with room to spare.
SVD_GUARD = 1e-9


def spectral_norm(matrix: np.ndarray) -> float:
    """||W||_2 of a dense kernel: its largest singular value (float64 SVD), rounded up."""
    return float(np.linalg.norm(matrix, 2)) * (1 + SVD_GUARD)


def convolution_norm_bound(kernel: np.ndarray, spatial: tuple) -> float:
    """An upper bound of ||W||_2 for a 2-D convolution (any padding, any stride) on inputs of
    `spatial` size: the norm of the circular convolution on the (H + kh - 1, W + kw - 1) torus,
    whose operator contains the zero-padded one as a block (and a strided one as rows of it),
    so its norm is at least theirs; it is the largest singular value of the kernel's 2-D DFT
    over the frequencies (Sedghi et al., 2019), computed in float64 and rounded up."""
    kh, kw = kernel.shape[:2]
    grid = (spatial[0] + kh - 1, spatial[1] + kw - 1)
    spectrum = np.fft.fft2(kernel, s=grid, axes=(0, 1))  # (N1, N2, c_in, c_out)
    return float(np.linalg.norm(spectrum, 2, axis=(2, 3)).max()) * (1 + SVD_GUARD)


def _batch_norm(layer: Any, in_shape: tuple) -> list:
    axis = layer.axis if layer.axis >= 0 else len(in_shape) + 1 + layer.axis
    shape = [1] * (len(in_shape) + 1)
    shape[axis] = in_shape[axis - 1]

    def scale(dtype=None):
        """gamma / sqrt(variance + epsilon), computed in `dtype` (default: the weights' own)
        from the float32 weights and epsilon as the layer rounds it: certify's float64 bounds
        see the model's constants exactly, not their quotient rounded to float32."""
        own = layer.moving_variance.dtype

        def weight(value):
            value = ops.cast(value, own)
            return value if dtype is None else ops.cast(value, dtype)

        gamma = weight(layer.gamma) if layer.scale else 1.0
        return ops.reshape(gamma / ops.sqrt(weight(layer.moving_variance)
                                            + weight(layer.epsilon)), shape)

    def scale_float64():  # in NumPy: JAX outside its x64 mode has no float64
        own = np.dtype(layer.moving_variance.dtype)
        gamma = _float64(layer.gamma) if layer.scale else 1.0
        epsilon = np.float64(np.asarray(layer.epsilon, own))
        return gamma / np.sqrt(_float64(layer.moving_variance) + epsilon)

    def shift(dtype=None):
        beta = ops.reshape(ops.cast(layer.beta, dtype or layer.beta.dtype), shape) \
            if layer.center else 0.0
        mean = ops.cast(layer.moving_mean, dtype or layer.moving_mean.dtype)
        return beta - ops.reshape(mean, shape) * scale(dtype)

    return [Linear(layer.name, lambda z: z * scale(z.dtype), in_shape, in_shape, shift,
                   apply_abs=lambda z: z * ops.abs(scale(z.dtype)),
                   apply_square=lambda z: z * ops.square(scale(z.dtype)),
                   transpose=lambda lam: lam * scale(lam.dtype),
                   l2_norm=lambda: float(np.abs(scale_float64()).max()) * (1 + SVD_GUARD),
                   pointwise=axis == len(in_shape))]


def _reshape(name: str, in_shape: tuple, out_shape: tuple) -> Linear:
    return Linear(name, lambda z: ops.reshape(z, (-1,) + out_shape), in_shape, out_shape,
                  apply_square=lambda z: ops.reshape(z, (-1,) + out_shape),
                  transpose=lambda lam: ops.reshape(lam, (-1,) + in_shape), reshape=True,
                  l2_norm=lambda: 1.0)


def _pooling(layer: Any, in_shape: tuple) -> list:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _refuse(layer, ": channels_first")
    out = tuple(layer.compute_output_shape((None,) + in_shape)[1:])
    if isinstance(layer, layers.MaxPooling2D):
        return [MaxPool(layer.name, tuple(layer.pool_size), tuple(layer.strides),
                        layer.padding, in_shape, out)]
    if isinstance(layer, layers.GlobalAveragePooling2D):
        size = in_shape[0] * in_shape[1]
        return [Linear(layer.name, lambda z: ops.mean(z, axis=(1, 2)), in_shape, out,
                       apply_square=lambda z: ops.sum(z, axis=(1, 2)) / size ** 2)]
    if layer.padding != "valid":
        raise _refuse(layer, ": padding 'same' averages over fewer pixels at the edges")
    size, channels = math.prod(layer.pool_size), in_shape[-1]

    def kernel(z):  # the average as a convolution, channel by channel
        eye = ops.eye(channels, dtype=z.dtype) / size
        return ops.broadcast_to(eye, tuple(layer.pool_size) + (channels, channels))

    return [Linear(layer.name, lambda z: ops.average_pool(z, layer.pool_size, layer.strides,
                                                          "valid"), in_shape, out,
                   apply_square=lambda z: ops.average_pool(z, layer.pool_size, layer.strides,
                                                           "valid") / size,
                   conv=Conv(kernel, tuple(layer.pool_size), tuple(layer.strides), (0, 0)))]


def _rescaling(layer: Any, in_shape: tuple) -> list:
    scale, offset = float(np.mean(layer.scale)), float(np.mean(layer.offset))
    if np.ndim(layer.scale) or np.ndim(layer.offset):
        raise _refuse(layer, ": per-channel scale")
    return [Linear(layer.name, lambda z: z * scale, in_shape, in_shape,
                   (lambda dtype: ops.full((1,) + in_shape, offset)) if offset else None,
                   apply_abs=lambda z: z * abs(scale),
                   apply_square=lambda z: z * scale ** 2,
                   transpose=lambda lam: lam * scale,
                   l2_norm=lambda: abs(scale), pointwise=True)]


def _ops_of(layer: Any, in_shape: tuple, count: int = 1) -> list:
    """The operations one layer contributes (a chain, or a nested model's graph, with
    `inputs` relative to it: -1 - k its k-th input, j >= 0 its own j-th operation); `count`
    inputs of shape `in_shape`."""
    if isinstance(layer, layers.Add):
        return [_with_inputs(Add(layer.name, in_shape, count), tuple(range(-1, -1 - count, -1)))]
    if count != 1:
        raise _refuse(layer, f" with {count} inputs")
    if isinstance(layer, keras.Model):
        return chain(layer, in_shape)
    return [_with_inputs(op, (i - 1,)) for i, op in enumerate(_single(layer, in_shape))]


def _with_inputs(op: Any, inputs: tuple) -> Any:
    op.inputs = tuple(inputs)
    return op


def _single(layer: Any, in_shape: tuple) -> list:
    """The chain of operations of one layer with one input."""
    if isinstance(layer, (layers.InputLayer, layers.Dropout)):
        return []
    if isinstance(layer, layers.Dense):
        return _dense(layer, in_shape)
    if isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.Conv2DTranspose):
        return _conv(layer, in_shape)
    if isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D,
                          layers.GlobalAveragePooling2D)):
        return _pooling(layer, in_shape)
    if isinstance(layer, layers.BatchNormalization):
        return _batch_norm(layer, in_shape)
    if isinstance(layer, (layers.Flatten, layers.Reshape)):
        return [_reshape(layer.name, in_shape,
                         tuple(layer.compute_output_shape((None,) + in_shape)[1:]))]
    if isinstance(layer, layers.Rescaling):
        return _rescaling(layer, in_shape)
    if isinstance(layer, layers.ReLU):
        if layer.max_value is not None or layer.negative_slope or layer.threshold:
            raise _refuse(layer, ": only the plain max(x, 0)")
        return [ReLU(in_shape)]
    if isinstance(layer, layers.Activation):
        return _activation(layer, in_shape)
    raise _refuse(layer)


def _place(operations: list, new: list, feeds: tuple) -> int:
    """Appends `new` (inputs relative to it, as `_ops_of` gives them) fed by the operations
    `feeds`; the index of its output (feeds[0] where it adds nothing: Dropout, InputLayer)."""
    offset = len(operations)
    for op in new:
        op.inputs = tuple(feeds[-1 - j] if j < 0 else j + offset for j in op.inputs)
        operations.append(op)
    return len(operations) - 1 if new else feeds[0]


def _shape(operations: list, index: int, in_shape: tuple) -> tuple:
    return tuple(in_shape) if index < 0 else operations[index].out_shape


def _graph_nodes(model: keras.Model) -> list | None:
    """A functional model's layer calls in topological order (Keras's nodes by depth), or None
    for a model read by its layer list (Sequential, or a functional one Keras gives no graph
    for)."""
    by_depth = getattr(model, "_nodes_by_depth", None)
    if isinstance(model, keras.Sequential) or not by_depth:
        return None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"certify bounds models with one input and one output; "
                         f"{model.name!r} has {len(model.inputs)} and {len(model.outputs)}.")
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def chain(model: keras.Model, in_shape: tuple | None = None) -> list:
    """The model's operations in topological order, each with its `inputs`: a Sequential
    model's layers one after the other, a functional model's calls as its graph (branches and
    skips joined by Add). Refuses an unsupported layer by its name, and a model whose layers
    cannot be read (a subclassed model: its `call` is code)."""
    if in_shape is None:
        try:
            in_shape = tuple(model.input_shape[1:])
        except (AttributeError, ValueError):
            raise ValueError(
                f"certify reads a model's layers in order, from its input; {type(model).__name__}"
                " has no defined input (a subclassed model, whose call is code, or one never "
                "built). Rebuild it as keras.Sequential or a functional model of the supported "
                f"layers ({', '.join(SUPPORTED)}).") from None
    operations: list = []
    nodes = _graph_nodes(model)
    if nodes is None:
        current = -1
        for layer in model.layers:
            new = _ops_of(layer, _shape(operations, current, in_shape))
            current = _place(operations, new, (current,))
    else:
        produced = {id(model.inputs[0]): -1}
        for node in nodes:
            layer = node.operation
            if isinstance(layer, layers.InputLayer):
                continue
            feeds = tuple(produced[id(t)] for t in node.input_tensors)
            shapes = {_shape(operations, j, in_shape) for j in feeds}
            if len(shapes) != 1:
                raise _refuse(layer, f" on inputs of shapes {sorted(shapes)}")
            new = _ops_of(layer, shapes.pop(), len(feeds))
            for tensor in node.outputs:
                produced[id(tensor)] = _place(operations, new, feeds)
                new = []
        current = produced[id(model.outputs[0])]
    if current != len(operations) - 1:
        raise ValueError(f"certify cannot bound {model.name!r}: its output is not the last "
                         "operation of its graph (a branch that does not reach the output).")
    return operations


def check_chain(model: keras.Model, operations: list, x: np.ndarray) -> None:
    """The graph of operations must compute the model."""
    z = run(operations, ops.convert_to_tensor(x[:8]))
    expected = ops.convert_to_numpy(model(ops.convert_to_tensor(x[:8]), training=False))
    got = ops.convert_to_numpy(z)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise ValueError("certify reads a model's layers as its graph (a Sequential model's "
                         "in list order); this model computes something else from them (a "
                         "layer not called in list order, or arguments the graph does not "
                         f"show). Use a Sequential or functional model of the supported layers "
                         f"({', '.join(SUPPORTED)}).")
