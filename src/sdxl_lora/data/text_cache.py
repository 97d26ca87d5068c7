"""The text-encoder output cache (--cache_text_encoder_outputs, ..._to_disk, --skip_cache_check).

Entries are keyed by the exact processed caption (prefix/suffix, wildcards, shuffling, dropout applied), the
text encoders' fingerprint and --max_token_length, so an edited caption gets a new entry and never a stale one
(sd-scripts keys its cache by image and reuses it after a caption edit).

Random caption processing (shuffle_caption, caption and tag dropout, wildcards) cannot be encoded once per
image; sd-scripts refuses the combination. Here every image gets CAPTION_VARIANTS processed captions, each drawn
once with its own seeded generator, all of them cached, and each epoch trains the image with one of them chosen
at random (dataset.set_caption_variants). An empty caption is cached too when caption_dropout_every_n_epochs is
used. Token warmup changes captions with the step and still cannot be cached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.data.cache_files import CacheEntryError, check_tensor, digest, entry_path, read_entry, write_entry

logger = logging.getLogger(__name__)

CAPTION_VARIANTS = 4
"""Processed captions cached per image when caption processing is random. Each costs one text-encoder output
per image: about 0.3 MB in fp16 for SDXL at 77 tokens (context 77 x 2048 + pooled 1280)."""

Conditioning = tuple[torch.Tensor, torch.Tensor]
EncodeCaptions = Callable[[list[str]], Conditioning]
"""captions -> (context (n, L, D), pooled (n, P)) from the frozen text encoders."""


@dataclass(frozen=True)
class TextJob:
    """A processed caption to cache, and one image that uses it (a disk entry lives in that image's folder)."""

    caption: str
    path: str


@dataclass(frozen=True)
class TextCacheSettings:
    """What the text cache needs from the configuration and the text encoders."""

    to_disk: bool
    skip_check: bool
    batch_size: int
    identity: str
    """Fingerprint of both text encoders and --max_token_length."""
    context_shape: tuple[int, int]
    """(L, D) of one caption's context."""
    pooled_shape: tuple[int]
    """(P,) of one caption's pooled embedding."""


class TextStore:
    """Cached (context, pooled) by processed caption: in memory, or one entry file per caption and folder."""

    def __init__(self, settings: TextCacheSettings):
        self.settings = settings
        self.memory: dict[str, Conditioning] = {}

    def key(self, caption: str) -> str:
        return f"text|{self.settings.identity}|{caption}"

    def path(self, caption: str, image_path: str) -> Path:
        return entry_path(image_path, "text", digest(self.key(caption)))

    def get(self, caption: str, image_path: str) -> Conditioning:
        if not self.settings.to_disk:
            if caption not in self.memory:
                raise KeyError(f"caption not in the text-encoder cache: {caption!r} ({image_path})")
            return self.memory[caption]
        path = self.path(caption, image_path)
        try:
            tensors = read_entry(path, self.key(caption))
            return check_tensor(tensors, "context", None), check_tensor(tensors, "pooled", None)
        except CacheEntryError as err:
            raise ConfigError(f"text-encoder cache entry {path} of {image_path} {err}; delete it, or run "
                              "without --skip_cache_check to rebuild damaged entries") from err

    def has(self, job: TextJob) -> bool:
        """Whether the job's entry exists and (unless --skip_cache_check) is whole."""
        if not self.settings.to_disk:
            return job.caption in self.memory
        path = self.path(job.caption, job.path)
        if not path.exists():
            return False
        if self.settings.skip_check:
            return True
        try:
            tensors = read_entry(path, self.key(job.caption))
            check_tensor(tensors, "context", self.settings.context_shape)
            check_tensor(tensors, "pooled", self.settings.pooled_shape)
        except CacheEntryError as err:
            logger.warning("text-encoder cache entry %s of %s %s: encoding it again", path, job.path, err)
            return False
        return True

    def put(self, job: TextJob, context: torch.Tensor, pooled: torch.Tensor) -> None:
        if self.settings.to_disk:
            write_entry(self.path(job.caption, job.path), {"context": context, "pooled": pooled},
                        self.key(job.caption))
        else:
            self.memory[job.caption] = (context.cpu(), pooled.cpu())


def build_text_cache(jobs: Sequence[TextJob], encode: EncodeCaptions, settings: TextCacheSettings) -> TextStore:
    """Encode every caption not cached yet, in batches, with a progress bar; returns the store to read from."""
    from tqdm.auto import tqdm

    store = TextStore(settings)
    unique = {(job.caption, str(Path(job.path).parent) if settings.to_disk else ""): job for job in jobs}
    missing = [job for job in unique.values() if not store.has(job)]
    logger.info("text-encoder cache: %d of %d captions cached, %d to encode", len(unique) - len(missing),
                len(unique), len(missing))
    step = max(1, settings.batch_size)
    with tqdm(total=len(missing), desc="caching text-encoder outputs", unit="caption", dynamic_ncols=True,
              disable=not missing) as progress:
        for start in range(0, len(missing), step):
            batch = missing[start:start + step]
            context, pooled = encode([job.caption for job in batch])
            for i, job in enumerate(batch):
                if not (bool(torch.isfinite(context[i]).all()) and bool(torch.isfinite(pooled[i]).all())):
                    raise ConfigError(f"{job.path}: the text encoders give non-finite outputs for the caption "
                                      f"{job.caption!r}; try --mixed_precision bf16 or no")
                try:
                    store.put(job, context[i], pooled[i])
                except PermissionError as err:
                    raise ConfigError(f"cannot write the text-encoder cache: {err}; make the image folders "
                                      "writable or use --cache_text_encoder_outputs without ..._to_disk") from err
            progress.update(len(batch))
    return store
