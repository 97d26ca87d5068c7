"""Shared fixtures: the tiny SDXL model is built once per test session (about 10 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


def make_images(folder: Path, sizes: list[tuple[int, int]], caption_ext: str = ".txt", seed: int = 0) -> Path:
    """Write small random PNGs (and captions 'image N') into folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
        if caption_ext:
            (folder / f"img{i:02d}{caption_ext}").write_text(f"image {i}, a test picture\n", encoding="utf-8")
    return folder


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def train_keeping_result(argv: list[str]):
    """Run the real CLI in-process; returns (exit code, RunResult or None) so a test can inspect the models."""
    from sdxl_lora.cli import main
    from sdxl_lora.train import loop

    seen = {}
    real_run = loop.run

    def keep(cfg):
        seen["result"] = real_run(cfg)
        return seen["result"]

    loop.run = keep
    try:
        code = main(argv)
    finally:
        loop.run = real_run
    return code, seen.get("result")
