"""Fixtures shared by the config unit tests."""

from __future__ import annotations

import pytest

from helpers import make_images


@pytest.fixture(scope="module")
def base_argv(tmp_path_factory):
    """A valid command line needing no model on disk (`check` does not load one)."""
    root = tmp_path_factory.mktemp("argv")
    make_images(root / "img" / "2_ohwx dog", [(64, 64)])
    return ["--pretrained_model_name_or_path=stabilityai/stable-diffusion-xl-base-1.0",
            f"--train_data_dir={root / 'img'}", f"--output_dir={root / 'out'}", "--resolution=64",
            "--network_module=networks.lora"]
