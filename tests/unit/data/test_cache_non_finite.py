"""Latents are checked once where they are encoded: a float16 overflow is re-encoded in float32 with a warning
naming the file; latents that stay non-finite stop the run naming the file (issue 7 item 5)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.data.vae_encode import encode_images


class OverflowingVae(torch.nn.Module):
    """Latents = every 8th pixel (+ a 4th channel), with no posterior noise; NaN for images whose first pixel
    is 1.0 when the VAE computes in one of `nan_dtypes` (the SDXL VAE's float16 overflow)."""

    def __init__(self, nan_dtypes=(torch.float16,)):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()), requires_grad=False)
        self.nan_dtypes = nan_dtypes
        self.calls = []

    @property
    def dtype(self):
        return self.weight.dtype

    def encode(self, images):
        self.calls.append((images.shape[0], images.dtype))
        latents = torch.cat([images[:, :, ::8, ::8], images[:, :1, ::8, ::8]], dim=1) * self.weight
        if self.dtype in self.nan_dtypes:
            latents[images[:, 0, 0, 0] == 1.0] = float("nan")
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=latents, std=torch.zeros_like(latents)))


def _images(n, bad=()):
    images = torch.linspace(-0.9, 0.9, n * 3 * 16 * 16).reshape(n, 3, 16, 16)
    for i in bad:
        images[i, 0, 0, 0] = 1.0
    return images


def test_fp16_overflow_is_encoded_again_in_float32_with_a_warning(caplog):
    vae = OverflowingVae().to(torch.float16)
    images = _images(3, bad=[1])
    with caplog.at_level("WARNING"):
        latents = encode_images(vae, images, ["a.png", "b.png", "c.png"], [0, 1, 2], "cpu", batch_size=3)
    assert latents.dtype == torch.float32 and bool(torch.isfinite(latents).all())
    # the retried image is the float32 encoding: exact first pixel 1.0, not the fp16 rounding of the rest
    assert latents[1, 0, 0, 0].item() == 1.0
    assert vae.calls == [(3, torch.float16), (1, torch.float32)]
    assert vae.dtype == torch.float16  # the VAE goes back to its dtype
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "b.png" in warnings[0] and "float32" in warnings[0]


def test_latents_still_not_finite_in_float32_stop_naming_the_file():
    vae = OverflowingVae(nan_dtypes=(torch.float16, torch.float32)).to(torch.float16)
    with pytest.raises(ConfigError) as err:
        encode_images(vae, _images(2, bad=[1]), ["a.png", "broken.png"], [0, 1], "cpu", batch_size=1)
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith("broken.png: ")
    assert vae.dtype == torch.float16


def test_float32_vae_is_not_retried():
    vae = OverflowingVae(nan_dtypes=(torch.float32,))
    with pytest.raises(ConfigError, match="^b.png: "):
        encode_images(vae, _images(2, bad=[1]), ["a.png", "b.png"], [0, 1], "cpu", batch_size=2)
    assert vae.calls == [(2, torch.float32)]


def test_finite_latents_pass_unchanged_in_chunks():
    vae = OverflowingVae()
    images = _images(5)
    latents = encode_images(vae, images, [str(i) for i in range(5)], range(5), "cpu", batch_size=2)
    assert [n for n, _ in vae.calls] == [2, 2, 1]
    torch.testing.assert_close(latents, torch.cat([images[:, :, ::8, ::8], images[:, :1, ::8, ::8]], 1))
