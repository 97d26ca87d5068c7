"""The loop's two data interfaces: latents from the live VAE or a cache, conditioning from the live text
encoders or a cache, in the same units."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sdxl_lora.data.batch import Batch
from sdxl_lora.data.latent_cache import LatentKey
from sdxl_lora.data.sources import CachedLatents, CachedText, EncoderText, VaeLatents
from sdxl_lora.data.vae_encode import encode_images, latent_seed

SCALE = 0.13025


class GaussianVae:
    """mean = every 8th pixel (+ a 4th channel), std = 0.5; records chunk sizes."""

    dtype = torch.float32
    config = SimpleNamespace(scaling_factor=SCALE)

    def __init__(self):
        self.seen = []

    def encode(self, images):
        self.seen.append(images.shape[0])
        mean = torch.cat([images[:, :, ::8, ::8], images[:, :1, ::8, ::8]], dim=1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, std=torch.full_like(mean, 0.5)))


def batch_of(n, **fields) -> Batch:
    keys = [LatentKey(f"/data/img{i}.png", (16, 16), (0, 0), i % 2 == 1) for i in range(n)]
    pairs = torch.zeros(n, 2, dtype=torch.long)
    values = dict(paths=[k.path for k in keys], captions=[""] * n, latent_keys=keys, original_size_hw=pairs,
                  crop_top_left=pairs, target_size_hw=pairs, loss_weights=torch.ones(n))
    values.update(fields)
    return Batch(**values)


def _batch(n=5):
    return batch_of(n, images=torch.randn(n, 3, 16, 16))


def test_live_latents_in_vae_batch_size_chunks_scaled_with_per_image_noise():
    vae, batch = GaussianVae(), _batch()
    latents = VaeLatents(vae, "cpu", vae_batch_size=2).latents(batch)
    assert vae.seen == [2, 2, 1]
    mean = torch.cat([batch.images[:, :, ::8, ::8], batch.images[:, :1, ::8, ::8]], dim=1)
    noise = torch.stack([torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(latent_seed(k)))
                         for k in batch.latent_keys])
    torch.testing.assert_close(latents, (mean + 0.5 * noise) * SCALE)


def test_cached_latents_equal_live_latents_whatever_the_batch_composition():
    vae, batch = GaussianVae(), _batch()
    live = VaeLatents(vae, "cpu", vae_batch_size=5).latents(batch)
    # the cache encodes the same images in other groups: image 3 alone, the rest together
    seeds = [latent_seed(k) for k in batch.latent_keys]
    alone = encode_images(vae, batch.images[3:4], ["x"], seeds[3:4], "cpu", 1)
    rest = encode_images(vae, batch.images[[0, 1, 2, 4]], list("abcd"), [seeds[i] for i in (0, 1, 2, 4)],
                         "cpu", 4)
    raw = torch.cat([rest[:3], alone, rest[3:]])
    cached = CachedLatents(SCALE, "cpu").latents(batch_of(5, latents=raw))
    torch.testing.assert_close(cached, live, rtol=0, atol=0)


def test_latent_seed_depends_on_file_name_bucket_crop_and_flip_only():
    assert latent_seed(("/a/x.png", (64, 64), (0, 0), False)) == latent_seed(("/b/x.png", (64, 64), (0, 0), False))
    seeds = {latent_seed(("/a/x.png", (64, 64), (0, 0), False)), latent_seed(("/a/y.png", (64, 64), (0, 0), False)),
             latent_seed(("/a/x.png", (64, 32), (0, 0), False)), latent_seed(("/a/x.png", (64, 64), (0, 0), True)),
             latent_seed(("/a/x.png", (64, 64), (0, 8), False))}
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)


def test_live_text_encodes_the_worker_token_ids_with_grads_only_when_training():
    seen = []

    def encode(ids1, ids2):
        seen.append((ids1.tolist(), ids2.tolist(), torch.is_grad_enabled()))
        return torch.zeros(1, 77, 8), torch.zeros(1, 4)

    batch = batch_of(1, input_ids_1=torch.tensor([[[7]]]), input_ids_2=torch.tensor([[[8]]]))
    EncoderText(encode, "cpu", trains=False).conditioning(batch)
    EncoderText(encode, "cpu", trains=True).conditioning(batch)
    assert seen == [([[[7]]], [[[8]]], False), ([[[7]]], [[[8]]], True)]


def test_cached_text_stacks_outputs_by_caption():
    class Store:
        def get(self, caption, path):
            value = float(len(caption))
            return torch.full((77, 8), value), torch.full((4,), value)

    context, pooled = CachedText(Store(), "cpu").conditioning(batch_of(2, captions=["ab", "abcd"]))
    assert context.shape == (2, 77, 8) and pooled.shape == (2, 4)
    assert context[:, 0, 0].tolist() == [2.0, 4.0] and pooled[:, 0].tolist() == [2.0, 4.0]
