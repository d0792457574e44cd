"""The data a run trains and is measured on: the paper's splits, or QUICK's CPU-sized subsets."""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_margin import datasets

QUICK = {"epochs": 10, "train": 7000, "validation": 1000, "test": 2000, "monitor": 200}


@dataclasses.dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    protocol: str


_DATA_CACHE: dict[tuple, Data] = {}


def load_data(dataset: str, data_dir: str | None, quick: bool, validation: int = 10000,
              pixel_scale: float = 255.0) -> Data:
    """The paper's splits, or with `quick` a subset (MNIST's test set alone when that is all).

    The MNISTs are split as the reference code does (`datasets.split_validation`, "reference");
    `pixel_scale` divides their bytes (256 under the "reference" protocol, 255 under "boxed").
    """
    key = (dataset, data_dir, quick, validation, pixel_scale)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    split = "random" if dataset == "cifar10" else "reference"
    try:
        train, val, test = datasets.load(dataset, validation=validation, data_dir=data_dir,
                                         split=split, pixel_scale=pixel_scale,
                                         allow_sample=False)
        protocol = f"{dataset} train {len(train[0])} / validation {len(val[0])} / test " \
                   f"{len(test[0])}, {split} split, pixels / {pixel_scale:g}"
        if quick:
            train, val, test = ((a[:n], b[:n]) for (a, b), n in (
                (train, QUICK["train"]), (val, QUICK["validation"]), (test, QUICK["test"])))
            protocol = f"QUICK: {dataset} subsets, train {len(train[0])} / validation " \
                       f"{len(val[0])} / test {len(test[0])}"
    except datasets.DatasetNotFoundError:
        if not quick or dataset == "cifar10":
            raise
        n_fit = QUICK["train"] + QUICK["validation"]
        try:
            (x, y), test = datasets.split_test_set(dataset, data_dir, train=n_fit, seed=0,
                                                   pixel_scale=pixel_scale)
        except datasets.DatasetNotFoundError:
            if dataset != "mnist" or data_dir is not None:
                raise
            return _embedded_quick(pixel_scale)
        train, val = (x[:QUICK["train"]], y[:QUICK["train"]]), (x[QUICK["train"]:],
                                                                y[QUICK["train"]:])
        protocol = f"QUICK: {dataset}'s test set only (no training files here), cut into " \
                   f"train {len(train[0])} / validation {len(val[0])} / test {len(test[0])}, " \
                   f"pixels / {pixel_scale:g}"
    if dataset == "cifar10":
        gcn = datasets.GlobalContrastNormalization()
        zca = datasets.ZCAWhitening().fit(gcn(train[0]))
        train, val, test = ((zca(gcn(a)), b) for a, b in (train, val, test))
        protocol += ", GCN + ZCA fitted on train"
    data = Data(*train, *val, *test, protocol=protocol)
    _DATA_CACHE[key] = data
    return data


def _embedded_quick(pixel_scale: float) -> Data:
    """QUICK on the MNIST sample embedded in the package (no files, no network)."""
    (x, y), (x_val, y_val), test = datasets.load(
        "mnist", validation=QUICK["validation"], split="reference", pixel_scale=pixel_scale)
    return Data(x, y, x_val, y_val, *test,
                protocol=f"QUICK: the MNIST sample embedded in keras-margin, train {len(x)} / "
                         f"validation {len(x_val)} / test {len(test[0])}, pixels / "
                         f"{pixel_scale:g}")
