"""The paper's models, returning logits: MLP 1000-1000-1000, LeNet-5 and Network in Network."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from keras_margin._validation import check_integer, check_non_negative


def _check(dropout: float, input_shape: Sequence[int], num_classes: int) -> None:
    """The arguments every architecture shares: dropout in [0, 1), a shape of positive
    integers, and k >= 1 logits."""
    dropout = check_non_negative("dropout", dropout)
    if dropout >= 1:
        raise ValueError(f"Invalid value for argument dropout: {dropout!r}. Expected a rate "
                         "in [0, 1).")
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ValueError(f"Invalid value for argument input_shape: {input_shape!r}. Expected "
                         "a sequence of positive integers, e.g. (28, 28, 1).")
    for size in input_shape:
        check_integer("input_shape", size)
    check_integer("num_classes", num_classes)


def mlp(hidden: Sequence[int] = (1000, 1000, 1000), dropout: float = 0.0,
        input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
        name: str = "mlp") -> keras.Model:
    """Fully connected ReLU network with Glorot-uniform init, as the reference code's MLP.

    `dropout` is applied after every hidden layer (the paper's "dropout" row uses 0.5).

    Example:
        >>> mlp().output_shape
        (None, 10)
    """
    _check(dropout, input_shape, num_classes)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ValueError(f"Invalid value for argument hidden: {hidden!r}. Expected a sequence "
                         "of layer widths, e.g. (1000, 1000, 1000).")
    for width in hidden:
        check_integer("hidden", width)
    model = keras.Sequential([keras.Input(tuple(input_shape)), layers.Flatten()], name=name)
    for width in hidden:
        model.add(layers.Dense(width, activation="relu", kernel_initializer="glorot_uniform"))
        if dropout:
            model.add(layers.Dropout(dropout))
    model.add(layers.Dense(num_classes, kernel_initializer="glorot_uniform", name="logits"))
    return model


def lenet5(dropout: float = 0.0, input_shape: Sequence[int] = (28, 28, 1),
           num_classes: int = 10, name: str = "lenet5") -> keras.Model:
    """The reference code's "LeNet-5": conv32 5x5 - pool 2 - conv64 5x5 - pool 2 - fc512 - fc10.

    `dropout` is applied before the two dense layers (0.5 in the paper's dropout row).
    """
    _check(dropout, input_shape, num_classes)
    return keras.Sequential([
        keras.Input(tuple(input_shape)),
        layers.Conv2D(32, 5, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 5, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(dropout),
        layers.Dense(512, activation="relu"),
        layers.Dropout(dropout),
        layers.Dense(num_classes, name="logits"),
    ], name=name)


def nin(dropout: float = 0.5, input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10,
        name: str = "nin") -> keras.Model:
    """Network in Network (Lin et al., 2014) for CIFAR-10: three mlpconv blocks, global pooling.

    Blocks: 192 5x5 - 160 1x1 - 96 1x1 - maxpool 3/2 - dropout; 192 5x5 - 192 1x1 - 192 1x1 -
    avgpool 3/2 - dropout; 192 3x3 - 192 1x1 - k 1x1 - global average pooling (the logits).
    """
    _check(dropout, input_shape, num_classes)

    def conv(filters: int, size: int, activation: str | None = "relu") -> layers.Layer:
        return layers.Conv2D(filters, size, padding="same", activation=activation)

    return keras.Sequential([
        keras.Input(tuple(input_shape)),
        conv(192, 5), conv(160, 1), conv(96, 1),
        layers.MaxPooling2D(3, strides=2, padding="same"), layers.Dropout(dropout),
        conv(192, 5), conv(192, 1), conv(192, 1),
        layers.AveragePooling2D(3, strides=2, padding="same"), layers.Dropout(dropout),
        conv(192, 3), conv(192, 1), conv(num_classes, 1, activation=None),
        layers.GlobalAveragePooling2D(name="logits"),
    ], name=name)
