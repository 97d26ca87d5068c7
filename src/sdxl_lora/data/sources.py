"""Where the step loop gets latents and text conditioning from, behind two small interfaces.

`LatentSource.latents(batch)`: scaled float32 latents (B, C, h, w) on the training device, from the live VAE
(`VaeLatents`) or from a cache in memory or on disk (`CachedLatents`: the dataset filled `batch.latents` from
the store attached with `set_latents`). `TextSource.conditioning(batch)`: (context (B, L, D), pooled (B, P)) from
the live text encoders (`EncoderText`) or from a text-encoder output cache (`CachedText`). The loop builds one of
each and never asks which it has. Models are not imported here: the live sources are handed the VAE and an
`encode(ids1, ids2)` function. Host-to-device copies are non-blocking: the step consumes them on the same CUDA
stream, so they are ordered before their use (from pageable memory they are synchronous anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from sdxl_lora.data.vae_encode import encode_images, latent_seed

Conditioning = tuple[torch.Tensor, torch.Tensor]


class LatentSource(Protocol):
    def latents(self, batch) -> torch.Tensor:
        """Scaled (x VAE scaling factor) float32 latents (B, C, h, w) on the training device."""


class TextSource(Protocol):
    def conditioning(self, batch) -> Conditioning:
        """(context (B, L, D), pooled (B, P)) on the training device."""


def latent_names(keys) -> list[str]:
    """The file of each latent key (path, bucket, crop, flip), marked when flipped, for messages."""
    return [f"{key[0]} (flipped)" if key[-1] else str(key[0]) for key in keys]


class VaeLatents:
    """Encode the batch's images with the frozen VAE every step, in chunks of --vae_batch_size."""

    def __init__(self, vae, device, vae_batch_size: int):
        self.vae, self.device, self.vae_batch_size = vae, device, vae_batch_size

    def latents(self, batch) -> torch.Tensor:
        keys = batch.latent_keys
        seeds = [latent_seed(key) for key in keys]
        raw = encode_images(self.vae, batch.images, latent_names(keys), seeds, self.device,
                            self.vae_batch_size)
        return raw * self.vae.config.scaling_factor


class CachedLatents:
    """Latents the dataset read from the attached cache (memory or disk), raw as the VAE gave them."""

    def __init__(self, scaling_factor: float, device):
        self.scaling_factor, self.device = scaling_factor, device

    def latents(self, batch) -> torch.Tensor:
        return batch.latents.to(self.device, dtype=torch.float32, non_blocking=True) * self.scaling_factor


class EncoderText:
    """Run both text encoders every step on the token ids the loader workers made; gradients flow only when
    their LoRA trains."""

    def __init__(self, encode: Callable[[torch.Tensor, torch.Tensor], Conditioning], device, trains: bool):
        self.encode, self.device, self.trains = encode, device, trains

    def conditioning(self, batch) -> Conditioning:
        with torch.set_grad_enabled(self.trains):
            return self.encode(batch.input_ids_1.to(self.device, non_blocking=True),
                               batch.input_ids_2.to(self.device, non_blocking=True))


class CachedText:
    """Text-encoder outputs looked up by the batch's processed captions (text_cache.TextStore)."""

    def __init__(self, store, device, dtype: torch.dtype = torch.float32):
        self.store, self.device, self.dtype = store, device, dtype

    def conditioning(self, batch) -> Conditioning:
        pairs = [self.store.get(caption, path) for caption, path in zip(batch.captions, batch.paths, strict=True)]
        context = torch.stack([c for c, _ in pairs]).to(self.device, dtype=self.dtype, non_blocking=True)
        pooled = torch.stack([p for _, p in pairs]).to(self.device, dtype=self.dtype, non_blocking=True)
        return context, pooled
