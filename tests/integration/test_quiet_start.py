"""A plain run is quiet: no library chatter (progress bars per component, torchvision fallbacks, bitsandbytes'
kernel probe), one line per model-loading phase with its time. Runs the CLI in a fresh process, as a user does,
because library logging and imports are process-wide."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_images, write_toml

SRC = Path(__file__).resolve().parents[2] / "src"
CHATTER = ("Loading weights", "Writing model shards", "requires torchvision", "gemm_4bit", "kernels-community",
           "it/s]\n", "Loading pipeline components")
# Run the CLI, then report whether bitsandbytes was really imported (a None entry would mean "blocked").
RUNNER = ("import sys; from sdxl_lora.cli import main; code = main(sys.argv[1:]); "
          "print('bitsandbytes imported:', sys.modules.get('bitsandbytes') is not None); sys.exit(code)")


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _chatter(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(c in line + "\n" for c in CHATTER) and "steps:" not in line]


@pytest.fixture(scope="module")
def tiny_model_output(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("quiet")
    return tmp / "tiny", _run(["tiny-model", str(tmp / "tiny")], tmp)


def test_tiny_model_command_is_quiet(tiny_model_output):
    model, output = tiny_model_output
    assert _chatter(output) == []
    assert f"wrote {model}" in output


def test_training_run_is_quiet_and_reports_each_loading_phase(tiny_model_output, tmp_path):
    model, _ = tiny_model_output
    images = make_images(tmp_path / "images", [(64, 64)])
    toml = write_toml(tmp_path / "dataset.toml", "[general]\nenable_bucket = false\n[[datasets]]\nresolution = 64\n"
                      f"batch_size = 1\n  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n")
    output = _run([f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}",
                   f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora", "--max_train_steps=1",
                   "--seed=1", "--max_data_loader_n_workers=0", "--optimizer_type=AdamW"], tmp_path)
    assert _chatter(output) == []
    assert "bitsandbytes imported: False" in output
    for label in ("U-Net", "text encoder 1", "text encoder 2", "VAE"):
        assert sum(f"loaded {label} in " in line and line.rstrip().endswith(" s") for line in output.splitlines()) == 1
    # A log line written while the progress bar is drawn gets a line of its own, not the end of the bar's line
    # (the bar redraws with "\r"; the final save is logged before the bar closes).
    drawn = re.split(r"[\r\n]", output)
    assert any("INFO sdxl_lora.train.events: saved " in part for part in drawn)
    assert [part for part in drawn if "steps:" in part and " INFO " in part] == []
    assert "saved " in output


@pytest.mark.parametrize(("optimizer", "needed"), [
    ("AdamW", False), ("adamw", False), ("Lion", False), ("Prodigy", False), ("AdamW8bit", True),
    ("PagedAdamW32bit", True), ("Lion8bit", True), ("bitsandbytes.optim.AdEMAMix8bit", True),
])
def test_bitsandbytes_is_kept_for_its_own_optimizers(optimizer, needed):
    from sdxl_lora.runtime import needs_bitsandbytes

    assert needs_bitsandbytes(optimizer) is needed
