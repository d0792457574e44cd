"""The paper's experiments: table rows as data, a resumable runner, reports and figures.

The names below are imported on first use (the rows hold attack objects, which start Keras), so
that the `keras-margin` command answers `--help` at once.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"ABLATION": "rows", "TABLE1": "rows", "TABLE2": "rows", "TABLES": "rows", "Row": "rows",
          "build_model": "rows", "compile_row": "rows", "epoch_decay": "rows", "get_row": "rows",
          "sweep_row": "rows", "run_example": "example"}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"keras_margin.experiments.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'keras_margin.experiments' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
