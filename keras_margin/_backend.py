"""Which Keras backend is running, checked where a module needs a particular one."""

from __future__ import annotations

import keras


def require_tensorflow() -> None:
    """Raises `ImportError` naming the active backend unless it is TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            f"keras_margin supports the Keras 'tensorflow' backend only; the active backend is "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras.")
