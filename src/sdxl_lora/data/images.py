"""Image preparation (spec 2.6): load, resize to cover the bucket, crop to it, flip, to a [-1, 1] tensor."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdxl_lora.data.buckets import Size

PIL_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "linear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "cubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,  # PIL's BOX averages every covered source pixel, like OpenCV's INTER_AREA
    "box": Image.Resampling.BOX,
}
"""resize_interpolation name -> PIL filter (sd-scripts uses OpenCV for all but lanczos and box)."""


def resize_filter(name: str | None, original: Size, resized: Size) -> Image.Resampling:
    """The named filter; by default area when shrinking both sides, lanczos otherwise."""
    if name is not None:
        return PIL_FILTERS[name]
    if resized[0] < original[0] and resized[1] < original[1]:
        return Image.Resampling.BOX
    return Image.Resampling.LANCZOS


def crop_offset(resized: Size, bucket: Size, rng: random.Random | None) -> tuple[int, int]:
    """(left, top) of the bucket window in the resized image: centred, or uniform when `rng` is given."""
    excess_w, excess_h = max(0, resized[0] - bucket[0]), max(0, resized[1] - bucket[1])
    if rng is None:
        return excess_w // 2, excess_h // 2
    return rng.randint(0, excess_w), rng.randint(0, excess_h)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float32 (3, H, W) in [-1, 1] (x / 255 * 2 - 1)."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0 * 2.0 - 1.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _fit(image: Image.Image, resized: Size, bucket: Size, resample: Image.Resampling,
         offset: tuple[int, int], flip: bool) -> Image.Image:
    if image.size != resized:
        image = image.resize(resized, resample)
    left, top = offset
    image = image.crop((left, top, left + bucket[0], top + bucket[1]))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image


def prepare_image(path: str | Path, *, bucket: Size, resized: Size, interpolation: str | None = None,
                  crop_rng: random.Random | None = None, flip: bool = False,
                  alpha_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(image (3, bh, bw) in [-1, 1], alpha mask (bh, bw) in [0, 1] or None).

    `crop_rng` None crops the centre, else a uniform random window. The alpha channel is resized on its own
    (PIL would premultiply an RGBA resize and darken transparent edges); images without alpha get ones.
    """
    with Image.open(path) as file:
        file.load()
        rgb = file.convert("RGB")
        alpha = file.convert("RGBA").getchannel("A") if alpha_mask else None
    resample = resize_filter(interpolation, rgb.size, resized)
    offset = crop_offset(resized, bucket, crop_rng)
    image = to_tensor(_fit(rgb, resized, bucket, resample, offset, flip))
    if alpha is None:
        return image, None
    mask = np.asarray(_fit(alpha, resized, bucket, resample, offset, flip), dtype=np.float32) / 255.0
    return image, torch.from_numpy(mask)
