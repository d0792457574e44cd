"""TensorFlow's start-up lines, silenced without hiding a real error.

Importing TensorFlow on a CPU machine prints, from C++ and before its log level applies, lines
no user can act on: absl's "All log messages before absl::InitializeLog()", "Could not find
cuda drivers", "failed call to cuInit: ... (303)", the CPU-instructions and oneDNN banners.
Keras imports TensorFlow on every backend where it is installed (`keras.utils.set_random_seed`,
its tf.data adapters), so on JAX and PyTorch too `import_tensorflow()` imports it first (and
lets it look for devices, which is when cuInit fails) with the process's stderr captured at the
file-descriptor level, then writes back every captured line that is not one of those
(`NOISE`): a real error still shows. It does nothing where TensorFlow is already imported, is
not installed, or stderr cannot be captured.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called",
    r"cudart_stub\.cc.*Could not find cuda drivers",
    r"cuda_platform\.cc.*failed call to cuInit",
    r"cpu_feature_guard\.cc",
    r"^To enable the following instructions: ",
    r"oneDNN custom operations are on",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation_placer\.cc.*already registered",
    r"TF-TRT Warning: Could not find TensorRT",
]))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Captures file descriptor 2 for the block, then writes back its lines but the `NOISE`;
    a no-op where stderr has no file descriptor (some notebooks)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not NOISE.search(line)]
            if kept:
                os.write(2, ("\n".join(kept) + "\n").encode())


def import_tensorflow() -> None:
    """Imports TensorFlow with its start-up noise filtered out (see the module docstring)."""
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's own info and warning lines
    with filtered_stderr():
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        except ImportError:
            pass
