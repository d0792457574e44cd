"""What a user sees: TensorFlow's start-up noise filtered out, real errors kept."""

import subprocess
import sys

import pytest

from keras_margin import _quiet


@pytest.mark.slow
def test_the_noise_is_filtered_and_a_real_error_kept():
    code = (
        "import os\nfrom keras_margin._quiet import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called "
        "are written to STDERR\\n')\n"
        "    os.write(2, b'E0000 00:00:1 123 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error (303)\\n')\n"
        "    os.write(2, b'E0000 real_thing.cc:1] something is really wrong\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stderr.strip() == "E0000 real_thing.cc:1] something is really wrong"


@pytest.mark.slow
def test_importing_keras_margin_prints_no_start_up_noise():
    proc = subprocess.run([sys.executable, "-c", "import keras_margin"], capture_output=True,
                          text=True, timeout=300, check=True)
    lines = [line for line in proc.stderr.splitlines() if _quiet.NOISE.search(line)]
    assert lines == []


def test_the_tensorflow_datasets_probe_prints_no_folder_warning(caplog, tmp_path, monkeypatch):
    # Issue 31: asking tfds whether it holds a prepared copy logged "Variant folder ... has
    # no dataset_info.json", naming a folder that does not exist, before the one-line notice.
    import logging

    pytest.importorskip("tensorflow_datasets")
    from keras_margin import datasets

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(datasets, "_server_answers", lambda *a, **k: False)
    with caplog.at_level(logging.DEBUG, logger="absl"), \
            pytest.raises(datasets.DatasetNotFoundError, match="no prepared copy"):
        datasets._load_tfds("mnist", "train")
    assert not [r for r in caplog.records if r.name == "absl" and r.levelno >= logging.WARNING]
