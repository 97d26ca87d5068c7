"""Shared fixtures: the tiny SDXL saved once per session as a diffusers folder, and loaded once."""

from __future__ import annotations

import pytest

from sdxl_lora.config.schema import ModelConfig
from sdxl_lora.models.load import load_sdxl


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_sdxl_dir):
    return load_sdxl(ModelConfig(pretrained_model_name_or_path=str(tiny_sdxl_dir)))
