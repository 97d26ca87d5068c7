"""The latent cache (--cache_latents, --cache_latents_to_disk, --skip_cache_check, --vae_batch_size).

Every image that trains is encoded once per (bucket, flip) before training; the dataset then serves the raw
latents from a `Mapping[LatentKey, Tensor]`: a dict in memory, or `DiskLatents`, which reads one entry file per
access (in the DataLoader workers) so that a large dataset does not have to fit in memory. On disk, an entry is
named by everything that shapes it (see cache_files), so a changed image, bucket, crop, flip, interpolation or
VAE gets a new entry. An existing entry is checked (readable, written for this key, right shape, finite) unless
--skip_cache_check, which trusts every file that exists; a damaged one is encoded again with a warning. Entries
are written one by one as their batch finishes: a run that was interrupted resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.data.buckets import Size
from sdxl_lora.data.cache_files import (
    CacheEntryError,
    check_tensor,
    digest,
    entry_path,
    file_fingerprint,
    read_entry,
    write_entry,
)
from sdxl_lora.data.images import prepare_image

logger = logging.getLogger(__name__)

class LatentKey(NamedTuple):
    """What one cached latent was encoded from: the same key always means the same pixels."""

    path: str
    bucket: Size
    """(width, height) the image was resized and cropped to (tells apart datasets of other resolutions)."""
    crop: tuple[int, int]
    """(left, top) of the bucket window in the resized image."""
    flip: bool


Encode = Callable[[torch.Tensor, Sequence["LatentJob"]], torch.Tensor]
"""(pixels (n, 3, H, W), their jobs) -> raw latents (n, C, h, w)."""


@dataclass(frozen=True)
class LatentJob:
    """One latent to cache: an image resized, cropped to its bucket, maybe flipped."""

    key: LatentKey
    resized: Size
    """(width, height) after resizing, before the crop."""
    interpolation: str | None
    """The subset's resize_interpolation."""

    def recipe(self) -> str:
        """Everything that shapes the pixels, the image file's size and mtime included (not its folder)."""
        path, bucket, (left, top), flip = self.key
        return (f"{Path(path).name}|{file_fingerprint(path)}|bucket={bucket}|resized={self.resized}|"
                f"crop={left},{top}|flip={int(flip)}|{self.interpolation}")

    def pixels(self) -> torch.Tensor:
        return prepare_image(self.key.path, bucket=self.key.bucket, resized=self.resized,
                             interpolation=self.interpolation, offset=self.key.crop, flip=self.key.flip)[0]


def latent_shape(bucket: Size, channels: int) -> tuple[int, int, int]:
    """(C, h, w) of a bucket's latents: the SDXL VAE downsamples by 8."""
    return (channels, bucket[1] // 8, bucket[0] // 8)


class DiskLatents(Mapping):
    """LatentKey -> latents read from the entry file on each access (picklable: it holds only paths)."""

    def __init__(self, files: dict[LatentKey, tuple[Path, str]]):
        self.files = files

    def __getitem__(self, key: LatentKey) -> torch.Tensor:
        path, entry_key = self.files[key]
        try:
            return check_tensor(read_entry(path, entry_key), "latents", None)
        except CacheEntryError as err:
            raise ConfigError(f"latent cache entry {path} of {key[0]} {err}; delete it, or run without "
                              "--skip_cache_check to rebuild damaged entries") from err

    def __iter__(self) -> Iterator[LatentKey]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class LatentCacheSettings:
    """What the latent cache needs from the configuration and the VAE."""

    to_disk: bool
    skip_check: bool
    batch_size: int
    vae_identity: str
    channels: int


def build_latent_cache(jobs: Sequence[LatentJob], encode: Encode, settings: LatentCacheSettings,
                       after_batch: Callable[[], None] | None = None) -> Mapping[LatentKey, torch.Tensor]:
    """Encode what is not cached yet (in same-bucket batches, with a progress bar) and return the mapping the
    dataset reads latents from."""
    jobs = list({job.key: job for job in jobs}.values())
    if not settings.to_disk:
        memory: dict[LatentKey, torch.Tensor] = {}
        for batch, latents in _encode_batches(jobs, encode, settings.batch_size, after_batch):
            memory.update((job.key, latent.cpu()) for job, latent in zip(batch, latents, strict=True))
        return memory
    files = {job.key: _entry(job, settings.vae_identity) for job in jobs}
    missing = [job for job in jobs if not _usable(job, files[job.key], settings)]
    logger.info("latent cache: %d of %d entries on disk, %d to encode", len(jobs) - len(missing), len(jobs),
                len(missing))
    try:
        for batch, latents in _encode_batches(missing, encode, settings.batch_size, after_batch):
            for job, latent in zip(batch, latents, strict=True):
                path, key = files[job.key]
                write_entry(path, {"latents": latent}, key)
    except PermissionError as err:
        raise ConfigError(f"cannot write the latent cache: {err}; make the image folders writable or use "
                          "--cache_latents without --cache_latents_to_disk") from err
    return DiskLatents(files)


def _entry(job: LatentJob, vae_identity: str) -> tuple[Path, str]:
    key = f"latents|{job.recipe()}|vae={vae_identity}"
    return entry_path(job.key.path, "latents", digest(key)), key


def _usable(job: LatentJob, entry: tuple[Path, str], settings: LatentCacheSettings) -> bool:
    path, key = entry
    if not path.exists():
        return False
    if settings.skip_check:
        return True
    try:
        check_tensor(read_entry(path, key), "latents", latent_shape(job.key.bucket, settings.channels))
    except CacheEntryError as err:
        logger.warning("latent cache entry %s of %s %s: encoding it again", path, job.key.path, err)
        return False
    return True


def _encode_batches(jobs: Sequence[LatentJob], encode: Encode, batch_size: int,
                    after_batch: Callable[[], None] | None) -> Iterator[tuple[list[LatentJob], torch.Tensor]]:
    """Same-bucket batches of up to `batch_size`, the next batch's images decoded in threads meanwhile."""
    from tqdm.auto import tqdm

    by_bucket: dict[Size, list[LatentJob]] = {}
    for job in jobs:
        by_bucket.setdefault(job.key.bucket, []).append(job)
    batches = [group[i:i + batch_size] for bucket in sorted(by_bucket)
               for group in [by_bucket[bucket]] for i in range(0, len(group), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=4) as pool, \
            tqdm(total=len(jobs), desc="caching latents", unit="img", dynamic_ncols=True) as progress:
        pending = [pool.submit(job.pixels) for job in batches[0]]
        for index, batch in enumerate(batches):
            pixels = torch.stack([future.result() for future in pending])
            if index + 1 < len(batches):
                pending = [pool.submit(job.pixels) for job in batches[index + 1]]
            yield batch, encode(pixels, batch)
            if after_batch is not None:
                after_batch()
            progress.update(len(batch))
