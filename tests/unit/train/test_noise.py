"""Forward diffusion (spec 5.2): timesteps and noisy latents, against numbers worked out by hand."""

from __future__ import annotations

import math

import torch

from sdxl_lora.train.noise import noisy_latents, sample_timesteps


def test_noisy_latents_mix_signal_and_noise_by_the_cumulative_alpha():
    # a_0 = 0.25: sqrt(a) = 0.5, sqrt(1 - a) = sqrt(0.75); a_1 = 0.64: 0.8 and 0.6.
    alphas_cumprod = torch.tensor([0.25, 0.64])
    latents = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1).expand(2, 4, 2, 2)
    noise = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1).expand(2, 4, 2, 2)
    out = noisy_latents(alphas_cumprod, latents, noise, torch.tensor([0, 1]))
    assert out.shape == (2, 4, 2, 2)
    torch.testing.assert_close(out[0], torch.full((4, 2, 2), 0.5 * 2.0 + math.sqrt(0.75) * 1.0))
    torch.testing.assert_close(out[1], torch.full((4, 2, 2), 0.8 * -1.0 + 0.6 * 3.0))


def test_noisy_latents_keep_the_latent_dtype():
    latents = torch.ones(1, 4, 2, 2, dtype=torch.bfloat16)
    out = noisy_latents(torch.tensor([0.64]), latents, torch.ones(1, 4, 2, 2), torch.tensor([0]))
    assert out.dtype == torch.bfloat16 and out.float().unique().tolist() == [1.3984375]  # 1.4 in bf16


def test_timesteps_are_integers_in_the_half_open_range():
    t = sample_timesteps(4000, 10, 13, "cpu", generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and set(t.tolist()) == {10, 11, 12}


def test_an_empty_timestep_range_gives_max_timestep_everywhere():
    """sd-scripts: min_timestep >= max_timestep puts every sample at max_timestep."""
    assert sample_timesteps(3, 500, 500, "cpu").tolist() == [500, 500, 500]
    assert sample_timesteps(2, 700, 600, "cpu").tolist() == [600, 600]
