"""Shared fixtures: the tiny SDXL model is built once per test session (about 10 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_images, train_keeping_result, write_toml  # noqa: F401  (older tests import them from here)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision state per process and refuses to change it; a real run is one
    process, so the trainer never resets it. Tests train several times in one process: each test starts clean
    and leaves clean (so a module-scoped fixture that trains, set up before this one, starts clean too)."""
    _reset_accelerator_state()
    yield
    _reset_accelerator_state()


def _reset_accelerator_state() -> None:
    import sys

    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight SDXL saved as a diffusers folder."""
    from sdxl_lora.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")
