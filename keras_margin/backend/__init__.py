"""The seam between keras-margin and the Keras backends.

Everything else in keras-margin is written in `keras.ops`. The few things that `keras.ops` cannot
express live here, once per backend (tensorflow.py, jax.py, torch.py):

* `vjp(fn, x)`: `fn(x)` and its pullback, the vector-Jacobian product cotangent -> grad_x. With
  `create_graph=True` the gradient can itself be differentiated (double backprop, eq. 18).
* `compile_fn(fn, model, jit_compile)`: `fn` as one compiled program that reads `model`'s
  current weights at every call (tf.function; jax.jit with the weights passed as arguments;
  PyTorch runs eagerly).
* `value_and_weight_grad(fn, variables)`: a scalar function of the weights and its gradient.
* `is_traced(x)`: True while a compiled program is being built (values unknown), so checks on
  values run only where they can.
* `map_in_order(fn, xs, shape)`: fn over xs's first axis one element at a time inside a
  compiled program (certify's chunks of CROWN rows: unrolled, the schedules of TensorFlow and
  XLA kept every chunk alive at once).
* `matmul`, `minimum`, `maximum`: `keras.ops`'s, keeping float64 on every backend (certify's
  bounds).
* `Steps`: a mixin with `RobustModel`'s `train_step` / `test_step` in the signature Keras's
  trainer of the backend calls (`trainer.train_step` / `trainer.test_step` hold the bodies).
"""

from __future__ import annotations

import contextlib
import importlib

import keras

NAME = keras.backend.backend()

if NAME not in ("tensorflow", "jax", "torch"):  # Keras's numpy backend cannot train
    raise ImportError(f"keras_margin supports the Keras backends 'tensorflow', 'jax' and "
                      f"'torch'; the active backend is {NAME!r}.")
_seam = importlib.import_module(f"keras_margin.backend.{NAME}")
Steps = _seam.Steps
compile_fn = _seam.compile_fn
is_traced = _seam.is_traced
map_in_order = _seam.map_in_order
trainer = _seam.trainer
value_and_weight_grad = _seam.value_and_weight_grad
vjp = _seam.vjp


def value_and_grad(fn, x, has_aux: bool = False, create_graph: bool = False):
    """(fn(x), grad_x fn(x)) for a function returning one scalar per sample, summed.

    `fn(x)` returns a (batch,) tensor (or `(values, aux)` with `has_aux`); the gradient is that
    of its sum, i.e. each sample's own gradient since samples are independent.
    """
    result = vjp(fn, x, has_aux=has_aux, create_graph=create_graph)
    values, pullback = result[0], result[1]
    grad = pullback(keras.ops.ones_like(values))
    return (values, result[2], grad) if has_aux else (values, grad)


def matmul(a, b):
    """`keras.ops.matmul(a, b)`, in float64 where both are float64. Keras's PyTorch backend
    (3.15) computes a float64 matmul in float32 (its result type of two torch.float64 tensors
    is the float32 default), which would leave certify's float64 bounds with float32 rounding
    that its rounding allowance does not cover; torch.matmul keeps the type."""
    if NAME == "torch":
        import torch

        return torch.matmul(a, b)
    return keras.ops.matmul(a, b)


def _torch_pair(a, b):
    import torch

    like = a if torch.is_tensor(a) else b  # a Python number takes the tensor's type
    a, b = (v if torch.is_tensor(v) else torch.as_tensor(v, dtype=like.dtype) for v in (a, b))
    dtype = torch.promote_types(a.dtype, b.dtype)
    device = a.device if a.dim() >= b.dim() else b.device
    return a.to(dtype=dtype, device=device), b.to(dtype=dtype, device=device)


def minimum(a, b):
    """`keras.ops.minimum(a, b)`, in float64 where the tensors are (see `matmul`: Keras's
    PyTorch backend rounds a float64 minimum to float32)."""
    if NAME == "torch":
        import torch

        return torch.minimum(*_torch_pair(a, b))
    return keras.ops.minimum(a, b)


def maximum(a, b):
    """`keras.ops.maximum(a, b)`, in float64 where the tensors are (see `minimum`)."""
    if NAME == "torch":
        import torch

        return torch.maximum(*_torch_pair(a, b))
    return keras.ops.maximum(a, b)


def has_accelerator() -> bool:
    """Whether the backend computes on a GPU (or another accelerator) rather than the CPU."""
    if NAME == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if NAME == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if NAME == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return False


def float64() -> contextlib.AbstractContextManager:
    """A context in which float64 tensors stay float64: JAX turns them into float32 unless its
    x64 mode is on (switched on here for the context only); the other backends always keep
    them. `certify` computes its bounds in it."""
    if NAME == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


__all__ = ["NAME", "Steps", "compile_fn", "float64", "has_accelerator", "is_traced",
           "map_in_order", "matmul", "maximum", "minimum", "trainer", "value_and_grad",
           "value_and_weight_grad", "vjp"]
