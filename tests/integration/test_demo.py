"""`make demo` runs end to end (a few steps): it trains, validates and samples before and after, and writes the
side-by-side picture."""

from __future__ import annotations

from PIL import Image

from sdxl_lora.demo import PROMPTS, main


def test_demo_writes_the_before_and_after_picture(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path / "demo"), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "validation loss" in out and "before_after.png" in out
    sheet = Image.open(tmp_path / "demo" / "before_after.png")
    assert sheet.size == (2 * 64 + 4, len(PROMPTS) * (64 + 4) - 4)
