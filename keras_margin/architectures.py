"""The paper's models, returning logits: MLP 1000-1000-1000, LeNet-5 and Network in Network."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers


def mlp(hidden: Sequence[int] = (1000, 1000, 1000), dropout: float = 0.0,
        input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
        name: str = "mlp") -> keras.Model:
    """Fully connected ReLU network with Glorot-uniform init, as the reference code's MLP.

    `dropout` is applied after every hidden layer (the paper's "dropout" row uses 0.5).

    Example:
        >>> mlp().output_shape
        (None, 10)
    """
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
