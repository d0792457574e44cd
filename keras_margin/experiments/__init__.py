"""The paper's experiments: table rows as data, a resumable runner, reports and figures."""

from keras_margin.experiments.example import run_example
from keras_margin.experiments.rows import (
    TABLE1,
    TABLE2,
    TABLES,
    Row,
    build_model,
    compile_row,
    get_row,
    sweep_row,
)

__all__ = ["TABLE1", "TABLE2", "TABLES", "Row", "build_model", "compile_row", "get_row",
           "run_example", "sweep_row"]
