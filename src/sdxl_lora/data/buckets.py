"""Aspect-ratio buckets and SDXL crop conditioning (spec 2.6, 2.8): pure math on (width, height) pairs.

Sizes and offsets are (width, height) / (left, top) throughout this module except `crop_top_left`, which
returns (top, left) like the SDXL conditioning it feeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdxl_lora.config.dataset_toml import DatasetConfig

Size = tuple[int, int]


def bucket_resolutions(resolution: Size, min_reso: int, max_reso: int, step: int) -> list[Size]:
    """All buckets of area at most resolution's, sides in [min_reso, max_reso] on a `step` grid, sorted.

    The square bucket comes first: side = floor(sqrt(max_area) / step) * step. Then for every width w on the
    grid, the tallest height h = min(max_reso, floor((max_area // w) / step) * step) with h >= min_reso gives
    (w, h) and (h, w).
    """
    max_area = resolution[0] * resolution[1]
    side = int(math.sqrt(max_area) // step) * step
    buckets = {(side, side)}
    for width in range(min_reso, max_reso + 1, step):
        height = min(max_reso, int((max_area // width) // step) * step)
        if height >= min_reso:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def nearest_bucket(size: Size, buckets: list[Size]) -> Size:
    """The image's own size when it is a bucket, else the bucket with the closest w/h (first on ties)."""
    if size in buckets:
        return size
    aspect = size[0] / size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))


def cover_size(size: Size, bucket: Size) -> Size:
    """Resize keeping aspect so the image covers the bucket; the excess is cropped later."""
    width, height = size
    if width / height > bucket[0] / bucket[1]:
        scale = bucket[1] / height
    else:
        scale = bucket[0] / width
    return int(width * scale + 0.5), int(height * scale + 0.5)


NO_UPSCALE_MAX_CROP = 0.1
"""bucket_no_upscale: the most of either side of the shrunk image that the chosen bucket may crop away."""


def no_upscale_bucket(size: Size, max_area: int, step: int) -> Size:
    """bucket_no_upscale: the bucket of an image larger than max_area.

    Candidates are the boxes on the `step` grid, of area <= max_area, that the image shrunk (never enlarged)
    until one side lands exactly on the grid covers. Of those that crop at most NO_UPSCALE_MAX_CROP of either
    side, the largest wins (ties: the one cropping less); if none does, the one cropping least. sd-scripts
    instead compares the aspect errors of two rounded candidates and can lose a whole step (3072x3000 at
    1024: 960x960, here 1024x1024; sd-scripts PR 2352).
    """
    width, height = size
    best: tuple | None = None
    for side, other, turned in ((width, height, False), (height, width, True)):
        first = max(1, int(math.sqrt(max_area * side / other)) // step)
        for k in range(first, side // step + 1):
            exact = k * step
            floored = (exact * other // side) // step * step
            if exact * floored > max_area:
                break  # areas only grow with k
            if floored == 0:
                continue
            bucket = (floored, exact) if turned else (exact, floored)
            resized = cover_size(size, bucket)
            crop = max(1 - bucket[0] / resized[0], 1 - bucket[1] / resized[1])
            fits = crop <= NO_UPSCALE_MAX_CROP
            score = (fits, bucket[0] * bucket[1] if fits else 0, -crop, bucket)
            best = score if best is None or score[:3] > best[:3] else best
    return best[3] if best is not None else (0, 0)


def floor_to_step(size: Size, step: int) -> Size:
    """Each side floored to a multiple of step (the bucket of a bucket_no_upscale image)."""
    return size[0] - size[0] % step, size[1] - size[1] % step


def centre_offset(resized: Size, bucket: Size) -> tuple[int, int]:
    """(left, top) of a bucket-sized window centred in the resized image: half the excess, rounded down."""
    return max(0, resized[0] - bucket[0]) // 2, max(0, resized[1] - bucket[1]) // 2


def crop_top_left(resized: Size, bucket: Size, offset: tuple[int, int], flipped: bool) -> tuple[int, int]:
    """SDXL crop conditioning (top, left): the pixels cut off the top and left of the resized image by the crop
    actually applied, as the SDXL paper defines c_crop. `offset` is the window's (left, top); a horizontally
    flipped sample is seen from the other side, so its left is what was cut off the right:
    resized_w - bucket_w - left.

    sd-scripts instead computes a letterbox position from the sizes alone (spec 2.8 [quirk]), which
    ignores the crop (and random crops); we condition on what the model actually sees.
    """
    left, top = offset
    if flipped:
        left = max(0, resized[0] - bucket[0]) - left
    return top, left


@dataclass(frozen=True)
class Bucketing:
    """How one dataset assigns images to buckets."""

    buckets: tuple[Size, ...] | None
    """Predefined buckets; None for bucket_no_upscale (one bucket per image size)."""
    max_area: int
    """Pixel area of `resolution`."""
    step: int
    """Bucket side granularity."""

    def fit(self, size: Size) -> tuple[Size, Size]:
        """(bucket, resized size) for an image of `size`; resized covers the bucket."""
        if self.buckets is None:
            if size[0] * size[1] <= self.max_area:  # not shrunk: the excess below the grid is cropped
                return floor_to_step(size, self.step), size
            bucket = no_upscale_bucket(size, self.max_area, self.step)
            return bucket, cover_size(size, bucket) if min(bucket) > 0 else size
        bucket = nearest_bucket(size, list(self.buckets))
        return bucket, cover_size(size, bucket)


def bucketing_for(dataset: DatasetConfig) -> Bucketing:
    """Upscaling buckets, per-image no-upscale buckets, or (bucketing off) the single bucket `resolution`.

    Without bucketing every image is resized to cover `resolution` and centre-cropped. sd-scripts does that
    only when latents are cached; without caching it crops unresized images and rejects smaller ones. One
    behaviour for both paths is our choice.
    """
    width, height = dataset.resolution
    step = dataset.bucket_reso_steps
    if not dataset.enable_bucket:
        return Bucketing(((width, height),), width * height, step)
    if dataset.bucket_no_upscale:
        return Bucketing(None, width * height, step)
    low, high = dataset.bucket_limits()
    return Bucketing(tuple(bucket_resolutions((width, height), low, high, step)), width * height, step)
