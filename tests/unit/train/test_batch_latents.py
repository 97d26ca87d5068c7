"""VAE encoding in the loop honours --vae_batch_size and the SDXL scale factor."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sdxl_lora.train.loop import batch_latents


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
    latents = batch_latents({"images": images, "paths": list("abcde")}, vae, "cpu", torch.float32, vae_batch_size=2)
    assert vae.seen == [2, 2, 1]
    torch.testing.assert_close(latents, images[:, :4, ::8, ::8] * 0.13025)


def test_cached_latents_are_only_scaled():
    cached = torch.randn(3, 4, 2, 2)
    out = batch_latents({"latents": cached}, RecordingVae(), "cpu", torch.float32, vae_batch_size=1)
    torch.testing.assert_close(out, cached * 0.13025)
