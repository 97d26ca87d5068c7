"""Image preparation: resize filter choice, crop, flip, normalisation, alpha masks (spec 2.6, 2.9)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_lora.data.images import crop_offset, prepare_image, resize_filter


def test_default_filter_is_area_only_when_shrinking_both_sides():
    assert resize_filter(None, (100, 100), (50, 50)) == Image.Resampling.BOX
    assert resize_filter(None, (100, 100), (50, 100)) == Image.Resampling.LANCZOS
    assert resize_filter(None, (100, 100), (200, 150)) == Image.Resampling.LANCZOS
    assert resize_filter("cubic", (100, 100), (50, 50)) == Image.Resampling.BICUBIC
    assert resize_filter("area", (100, 100), (200, 200)) == Image.Resampling.BOX


def test_crop_offset_centre_and_random():
    assert crop_offset((1248, 832), (1216, 832), None) == (16, 0)
    assert crop_offset((64, 101), (64, 64), None) == (0, 18)
    offsets = {crop_offset((80, 64), (64, 64), random.Random(i)) for i in range(200)}
    assert offsets == {(x, 0) for x in range(17)}


def stripes(path, size=(8, 4)):
    """Left half black, right half white, one red pixel top-left."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:, size[0] // 2:] = 255
    pixels[0, 0] = (255, 0, 0)
    Image.fromarray(pixels).save(path)
    return path


def test_prepare_image_range_layout_and_flip(tmp_path):
    path = stripes(tmp_path / "s.png")
    image, mask = prepare_image(path, bucket=(8, 4), resized=(8, 4))
    assert image.shape == (3, 4, 8) and image.dtype == torch.float32 and mask is None
    assert image[:, 1, 0].tolist() == [-1.0, -1.0, -1.0] and image[:, 1, 7].tolist() == [1.0, 1.0, 1.0]
    assert image[:, 0, 0].tolist() == [1.0, -1.0, -1.0]  # RGB channel order
    flipped, _ = prepare_image(path, bucket=(8, 4), resized=(8, 4), flip=True)
    assert torch.equal(flipped, image.flip(-1))


def test_prepare_image_centre_crops_the_resized_image(tmp_path):
    path = stripes(tmp_path / "s.png", size=(16, 4))
    image, _ = prepare_image(path, bucket=(8, 4), resized=(16, 4), interpolation="nearest")
    # Columns 4..11 of 16: four black then four white.
    assert image[0, 1].tolist() == [-1.0] * 4 + [1.0] * 4


def test_prepare_image_resizes_to_cover_then_crops(tmp_path):
    Image.new("RGB", (100, 50), (0, 255, 0)).save(tmp_path / "g.png")
    image, _ = prepare_image(tmp_path / "g.png", bucket=(64, 64), resized=(128, 64))
    assert image.shape == (3, 64, 64)
    assert torch.allclose(image[1], torch.ones(64, 64)) and torch.allclose(image[0], -torch.ones(64, 64))


@pytest.mark.parametrize("mode", ["RGBA", "RGB"])
def test_alpha_mask(tmp_path, mode):
    pixels = np.full((4, 8, 4), 255, dtype=np.uint8)
    pixels[:, :4, 3] = 0  # left half transparent
    Image.fromarray(pixels, "RGBA").convert(mode).save(tmp_path / "a.png")
    image, mask = prepare_image(tmp_path / "a.png", bucket=(8, 4), resized=(8, 4), alpha_mask=True, flip=True)
    expected = torch.ones(4, 8)
    if mode == "RGBA":
        expected[:, 4:] = 0  # flipped with the image
    assert image.shape == (3, 4, 8) and torch.equal(mask, expected)
