"""The paper's experiments: table rows as data, a resumable runner, reports and figures."""

from keras_margin.experiments.rows import (
    ABLATION,
    TABLE1,
    TABLE2,
    TABLES,
    Row,
    build_model,
    compile_row,
    epoch_decay,
    get_row,
    sweep_row,
)


def run_example(*args, **kwargs):
    """`keras_margin.experiments.example.run_example` (imported on use: it starts Keras)."""
    from keras_margin.experiments.example import run_example as run

    return run(*args, **kwargs)


__all__ = ["ABLATION", "TABLE1", "TABLE2", "TABLES", "Row", "build_model", "compile_row",
           "epoch_decay", "get_row", "run_example", "sweep_row"]
