"""VAE encoding in the loop honours --vae_batch_size and the SDXL scale factor."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sdxl_lora.data.batch import Batch
from sdxl_lora.train.loop import batch_latents


def batch_of(**tensors) -> Batch:
    n = next(iter(tensors.values())).shape[0]
    pairs = torch.zeros(n, 2, dtype=torch.long)
    return Batch(paths=["x.png"] * n, captions=[""] * n, latent_keys=[None] * n, original_size_hw=pairs,
                 crop_top_left=pairs, target_size_hw=pairs, loss_weights=torch.ones(n), **tensors)


class RecordingVae:
    dtype = torch.float32
    config = SimpleNamespace(scaling_factor=0.13025)

    def __init__(self):
        self.seen = []

    def encode(self, images):
        self.seen.append(images.shape[0])
        mean = images[:, :4, ::8, ::8]
        return SimpleNamespace(latent_dist=SimpleNamespace(sample=lambda: mean))


def test_encodes_in_vae_batch_size_chunks_and_scales():
    vae = RecordingVae()
    images = torch.randn(5, 4, 16, 16)
    latents = batch_latents(batch_of(images=images), vae, "cpu", torch.float32, vae_batch_size=2)
    assert vae.seen == [2, 2, 1]
    torch.testing.assert_close(latents, images[:, :4, ::8, ::8] * 0.13025)


def test_cached_latents_are_only_scaled():
    cached = torch.randn(3, 4, 2, 2)
    out = batch_latents(batch_of(latents=cached), RecordingVae(), "cpu", torch.float32, vae_batch_size=1)
    torch.testing.assert_close(out, cached * 0.13025)
