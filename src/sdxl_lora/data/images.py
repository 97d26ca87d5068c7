"""Image preparation (spec 2.6, 2.9): load (EXIF orientation applied), resize to cover the bucket, crop to it,
flip, colour augmentation, to a [-1, 1] tensor; loss masks cropped exactly like their image. PIL and numpy only.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.data.buckets import Size, centre_offset

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

EXIF_ORIENTATION = 0x0112
_TRANSPOSES = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,), 3: (Image.Transpose.ROTATE_180,), 4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,), 6: (Image.Transpose.ROTATE_270,), 7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
"""EXIF orientation -> PIL operations that show the image upright (orientations 5-8 swap width and height)."""
_EXIF_FORMATS = {"JPEG", "MPO"}
"""Formats whose EXIF orientation is honoured: PIL reads their EXIF block with the header, so sizes honour it
without decoding (PIL reads a WebP's only by decoding it; photos with orientation tags are JPEGs)."""


class ImageError(ConfigError):
    """An image or mask file that cannot be used; the message names the file. The CLI prints it as one line,
    also when a DataLoader worker raised it (the worker's traceback that PyTorch adds is dropped)."""

    def __init__(self, message: str):
        if "Original Traceback" in message:  # re-raised by torch.utils.data from a worker
            message = message.rstrip().splitlines()[-1].split("ImageError: ", 1)[-1]
        super().__init__(message)


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = upright) of an opened, not yet decoded JPEG; 1 for other formats, so that
    scanned sizes and loaded pixels always agree."""
    if image.format not in _EXIF_FORMATS:
        return 1
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return value if value in _TRANSPOSES else 1


def upright_size(size: Size, orient: int) -> Size:
    """(width, height) as shown after applying EXIF orientation."""
    return (size[1], size[0]) if orient in (5, 6, 7, 8) else size


def load_upright(path: str | Path) -> Image.Image:
    """The decoded image, EXIF orientation applied. Raises ImageError naming the file when it cannot be read
    (not an image, truncated, corrupt)."""
    try:
        with Image.open(path) as file:
            turns = _TRANSPOSES.get(orientation(file), ())
            file.load()
            image = file.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from e
    for turn in turns:
        image = image.transpose(turn)
    return image


def to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale scaled to 8 bits (PIL's own conversion clips every value above 255 to white);
    other modes as they are."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(pixels / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image


def resize_filter(name: str | None, original: Size, resized: Size) -> Image.Resampling:
    """The named filter; by default area when shrinking both sides, lanczos otherwise."""
    if name is not None:
        return PIL_FILTERS[name]
    if resized[0] < original[0] and resized[1] < original[1]:
        return Image.Resampling.BOX
    return Image.Resampling.LANCZOS


def crop_offset(resized: Size, bucket: Size, rng: random.Random | None) -> tuple[int, int]:
    """(left, top) of the bucket window in the resized image: centred, or uniform when `rng` is given."""
    if rng is None:
        return centre_offset(resized, bucket)
    return rng.randint(0, max(0, resized[0] - bucket[0])), rng.randint(0, max(0, resized[1] - bucket[1]))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float32 (3, H, W) in [-1, 1] (x / 255 * 2 - 1)."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0 * 2.0 - 1.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def fit(image: Image.Image, resized: Size, bucket: Size, resample: Image.Resampling,
        offset: tuple[int, int], flip: bool) -> Image.Image:
    """Resize to `resized`, cut the bucket window at offset (left, top), flip horizontally when asked."""
    if image.size != resized:
        image = image.resize(resized, resample)
    left, top = offset
    image = image.crop((left, top, left + bucket[0], top + bucket[1]))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image


def color_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """color_aug (spec 2.6): with probability 1/3, half the time a hue shift of U(-8, 8) on a 0-180 hue scale
    (OpenCV's), otherwise a gamma of U(0.95, 1.05) on values scaled to [0, 1]. sd-scripts applies that gamma
    to raw 0-255 values, a much stronger brightness change than intended ([quirk]); we apply it as a gamma."""
    if rng.random() >= 1 / 3:
        return image
    if rng.random() < 0.5:
        shift = rng.uniform(-8, 8) / 180.0 * 256.0  # PIL's hue channel spans 0-255 for a full turn
        hsv = np.asarray(image.convert("HSV"), dtype=np.int32).copy()
        hsv[..., 0] = (hsv[..., 0] + round(shift)) % 256
        return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    gamma = rng.uniform(0.95, 1.05)
    pixels = (np.asarray(image, dtype=np.float32) / 255.0) ** gamma
    return Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")


def prepare_image(path: str | Path, *, bucket: Size, resized: Size, interpolation: str | None = None,
                  offset: tuple[int, int] | None = None, flip: bool = False, alpha_mask: bool = False,
                  color_rng: random.Random | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(image (3, bh, bw) in [-1, 1], alpha mask (bh, bw) in [0, 1] or None).

    `offset` None crops the centre. `color_rng` applies color_aug. The alpha channel is resized on its own
    (PIL would premultiply an RGBA resize and darken transparent edges); images without alpha get ones.
    """
    file = load_upright(path)
    rgb = to_8bit(file).convert("RGB")
    alpha = file.convert("RGBA").getchannel("A") if alpha_mask else None
    resample = resize_filter(interpolation, rgb.size, resized)
    offset = centre_offset(resized, bucket) if offset is None else offset
    fitted = fit(rgb, resized, bucket, resample, offset, flip)
    if color_rng is not None:
        fitted = color_augment(fitted, color_rng)
    image = to_tensor(fitted)
    if alpha is None:
        return image, None
    mask = np.asarray(fit(alpha, resized, bucket, resample, offset, flip), dtype=np.float32) / 255.0
    return image, torch.from_numpy(mask)


def prepare_mask(path: str | Path, *, original: Size, bucket: Size, resized: Size,
                 offset: tuple[int, int] | None = None, flip: bool = False) -> torch.Tensor:
    """A conditioning_data_dir mask (bh, bw) in [0, 1] from its red channel, resized and cropped exactly like
    its image of size `original` (sd-scripts stretches it straight to the bucket, [quirk] spec 2.9)."""
    red = to_8bit(load_upright(path)).convert("RGB").getchannel("R")
    if red.size != original:
        raise ImageError(f"mask {path} is {red.size[0]}x{red.size[1]} but its image is "
                         f"{original[0]}x{original[1]}; masks must have their image's size")
    offset = centre_offset(resized, bucket) if offset is None else offset
    fitted = fit(red, resized, bucket, resize_filter(None, original, resized), offset, flip)
    return torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0)


def face_box(path: str | Path) -> tuple[int, int, int, int] | None:
    """(centre x, centre y, width, height) of the face from a face-crop file name `name_cx_cy_w_h.ext`
    (original pixels), or None when the name carries no face."""
    parts = Path(path).stem.split("_")
    if len(parts) < 5 or not all(p.isdigit() for p in parts[-4:]):
        return None
    cx, cy, width, height = (int(p) for p in parts[-4:])
    return (cx, cy, width, height) if width > 0 and height > 0 else None


def face_crop_window(original: Size, bucket: Size, face: tuple[int, int, int, int],
                     aug_range: tuple[float, float], rng: random.Random) -> tuple[Size, tuple[int, int]]:
    """face_crop_aug_range (spec 2.6): (resized size, window (left, top)) for one sample.

    The scale makes the face's larger side a uniform U(low, high) fraction of the bucket's shorter side,
    clamped so that the image still covers the bucket and is not enlarged beyond that; the window is centred
    on the face, moved by up to a tenth of the bucket each way, and kept inside the image.
    """
    cx, cy, face_w, face_h = face
    cover = max(bucket[0] / original[0], bucket[1] / original[1])
    scale = rng.uniform(*aug_range) * min(bucket) / max(face_w, face_h)
    scale = min(max(scale, cover), max(cover, 1.0))
    resized = (max(bucket[0], int(original[0] * scale + 0.5)), max(bucket[1], int(original[1] * scale + 0.5)))
    offset = []
    for centre, side, length in ((cx, bucket[0], resized[0]), (cy, bucket[1], resized[1])):
        start = centre * scale - side / 2 + rng.uniform(-0.1, 0.1) * side
        offset.append(int(min(max(0.0, start), length - side)))
    return resized, (offset[0], offset[1])
