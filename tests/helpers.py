"""Helpers shared by the tests (import them with `from helpers import ...`; tests/ is on sys.path because the
root conftest.py lives there). Not in conftest.py: several conftest.py files exist and `from conftest import`
picks whichever was imported first."""

from __future__ import annotations

from pathlib import Path


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


def two_image_dataset(tmp: Path, resolution: int = 64) -> Path:
    """Two captioned random images and a one-subset dataset TOML for them; returns the TOML path."""
    images = make_images(tmp / "images", [(resolution, resolution)] * 2)
    return write_toml(tmp / "dataset.toml", (
        f"[[datasets]]\nresolution = {resolution}\nbatch_size = 1\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"))
