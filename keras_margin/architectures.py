"""The paper's models, returning logits: MLP 1000-1000-1000, LeNet-5 and Network in Network; and
ResNet-20 (He et al., 2016), a residual network with batch norm as people train them."""

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

    `dropout` is applied after every hidden layer (the paper's "dropout" row uses 0.5). The
    hidden layers are named hidden1, hidden2, ... (for hidden-layer margins), the last logits.

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
    for i, width in enumerate(hidden, start=1):
        model.add(layers.Dense(width, activation="relu", kernel_initializer="glorot_uniform",
                               name=f"hidden{i}"))
        if dropout:
            model.add(layers.Dropout(dropout))
    model.add(layers.Dense(num_classes, kernel_initializer="glorot_uniform", name="logits"))
    return model


def lenet5(dropout: float = 0.0, input_shape: Sequence[int] = (28, 28, 1),
           num_classes: int = 10, name: str = "lenet5") -> keras.Model:
    """The reference code's "LeNet-5": conv32 5x5 - pool 2 - conv64 5x5 - pool 2 - fc512 - fc10.

    `dropout` is applied before the two dense layers (0.5 in the paper's dropout row). Layers
    conv1, pool1, conv2, pool2, flatten, dropout1, fc1, dropout2, logits.
    """
    _check(dropout, input_shape, num_classes)
    return keras.Sequential([
        keras.Input(tuple(input_shape)),
        layers.Conv2D(32, 5, activation="relu", name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(64, 5, activation="relu", name="conv2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dropout(dropout, name="dropout1"),
        layers.Dense(512, activation="relu", name="fc1"),
        layers.Dropout(dropout, name="dropout2"),
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


def resnet20(input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10,
             blocks: int = 3, name: str = "resnet20") -> keras.Model:
    """The CIFAR ResNet of He et al. (2016, sec. 4.2) with n = `blocks` (3: ResNet-20, 0.27M
    weights): conv 3x3 16 - BN - ReLU; three stages of `blocks` basic blocks (two conv 3x3 -
    BN, ReLU after the residual Add) with 16, 32, 64 filters, the first block of stages 2 and 3
    striding 2 with a 1x1 conv - BN projection on its shortcut (the paper's option B); global
    average pooling; dense logits. He-normal initialisation.

    Each block's output is the layer `stage{s}_block{b}` (s and b from 1), for hidden-layer
    margins (`MarginModel(..., layers=["input", "stage1_block3", ...])`).

    Example:
        >>> resnet20().output_shape
        (None, 10)
    """
    _check(0.0, input_shape, num_classes)
    check_integer("blocks", blocks)

    def conv(filters: int, size: int, strides: int, label: str) -> layers.Layer:
        return layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False,
                             kernel_initializer="he_normal", name=label)

    inputs = keras.Input(tuple(input_shape))
    x = conv(16, 3, 1, "stem_conv")(inputs)
    x = layers.ReLU(name="stem")(layers.BatchNormalization(name="stem_bn")(x))
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, blocks + 1):
            label = f"stage{stage}_block{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            y = conv(filters, 3, strides, f"{label}_conv1")(x)
            y = layers.ReLU(name=f"{label}_relu1")(layers.BatchNormalization(
                name=f"{label}_bn1")(y))
            y = layers.BatchNormalization(name=f"{label}_bn2")(
                conv(filters, 3, 1, f"{label}_conv2")(y))
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = layers.BatchNormalization(name=f"{label}_shortcut_bn")(
                    conv(filters, 1, strides, f"{label}_shortcut")(x))
            x = layers.ReLU(name=label)(layers.Add(name=f"{label}_add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, kernel_initializer="he_normal", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
