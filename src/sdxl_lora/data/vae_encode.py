"""Images -> raw VAE latents, checked once for non-finite values where they are encoded.

The SDXL VAE overflows in float16 on some images and returns inf/NaN latents. sd-scripts and the foundation
replaced them by zeros at every step, which trains on nothing. Here an image whose latents are not finite is
encoded again in float32 with a warning naming it; if that fails too, the run stops naming the file.

The posterior sample (mean + std * noise) draws its noise from a generator seeded by the image (`latent_seed`),
not from the global RNG: an image encoded live in the step loop and the same image taken from the latent cache
give the same latents, and encoding does not shift the training noise that follows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from sdxl_lora.config.errors import ConfigError

logger = logging.getLogger(__name__)


def latent_seed(key) -> int:
    """Seed of an image's posterior sample from its latent key (path, bucket, crop, flip): the file name, not
    the folder, so a moved dataset keeps its cache valid."""
    path, bucket, crop, flip = key
    text = f"{Path(path).name}|{bucket[0]}x{bucket[1]}|{crop[0]},{crop[1]}|{int(flip)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def encode_images(vae, images: torch.Tensor, names: Sequence[str], seeds: Sequence[int], device,
                  batch_size: int) -> torch.Tensor:
    """Raw (unscaled) float32 latents (n, C, h, w) on `device` of `images` (n, 3, H, W) in [-1, 1], encoded in
    chunks of `batch_size` in the VAE's dtype. `names` (one per image, usually the file) are used in messages;
    `seeds` (one per image, see latent_seed) draw each posterior sample."""
    chunks, step = [], max(1, batch_size)
    with torch.no_grad():
        for start in range(0, images.shape[0], step):
            chunk, chunk_seeds = images[start:start + step], seeds[start:start + step]
            latents = _encode(vae, chunk.to(device, dtype=vae.dtype, non_blocking=True), chunk_seeds)
            chunks.append(_repair_non_finite(vae, chunk, latents, names[start:start + step], chunk_seeds, device))
    return torch.cat(chunks)


def _encode(vae, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """mean + std * noise in float32, the noise of image i from a CPU generator seeded with seeds[i]."""
    dist = vae.encode(images).latent_dist
    mean, std = dist.mean.float(), dist.std.float()
    noise = torch.stack([torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(seed))
                         for seed in seeds])
    return mean + std * noise.to(mean.device)


def _repair_non_finite(vae, images: torch.Tensor, latents: torch.Tensor, names: Sequence[str],
                       seeds: Sequence[int], device) -> torch.Tensor:
    """Re-encode in float32 each image whose latents are not finite (one device sync per chunk)."""
    bad = (~torch.isfinite(latents)).flatten(1).any(dim=1)
    if not bool(bad.any()):
        return latents
    dtype = vae.dtype
    for i in bad.nonzero().flatten().tolist():
        if dtype == torch.float32:
            raise ConfigError(_still_not_finite(names[i]))
        logger.warning("%s: the VAE gave non-finite latents in %s; encoded again in float32 "
                       "(--no_half_vae keeps the VAE in float32)", names[i], str(dtype).removeprefix("torch."))
        vae.to(dtype=torch.float32)
        try:
            retry = _encode(vae, images[i:i + 1].to(device, dtype=torch.float32), seeds[i:i + 1])
        finally:
            vae.to(dtype=dtype)
        if not bool(torch.isfinite(retry).all()):
            raise ConfigError(_still_not_finite(names[i]))
        latents[i] = retry[0]
    return latents


def _still_not_finite(name: str) -> str:
    return (f"{name}: the VAE gives non-finite latents even in float32; the image is probably damaged "
            "(open it, re-save or remove it)")
