"""Noise options of spec 5.1/5.2 against formulas worked out here. Random draws are replayed from a generator with
the same seed, in the documented draw order, so every expected value is the formula applied to known numbers."""

from __future__ import annotations

import math

import pytest
import torch

from sdxl_lora.config.schema import NoiseConfig
from sdxl_lora.train import noise as nz


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_snr_is_alpha_bar_over_one_minus_alpha_bar():
    assert nz.snr(torch.tensor([0.5, 0.8, 0.2])).tolist() == pytest.approx([1.0, 4.0, 0.25])


def test_zero_terminal_snr_keeps_the_first_value_and_zeroes_the_last():
    # sqrt = [0.9, 0.5, 0.1] -> minus 0.1 -> [0.8, 0.4, 0] -> x 0.9 / 0.8 -> [0.9, 0.45, 0] -> squared
    out = nz.zero_terminal_snr(torch.tensor([0.81, 0.25, 0.01]))
    assert out.tolist() == pytest.approx([0.81, 0.2025, 0.0], abs=1e-7)


def test_sdxl_schedule_with_zero_terminal_snr_ends_at_zero_and_falls_monotonically():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000)
    out = nz.zero_terminal_snr(sched.alphas_cumprod)
    assert out[0].item() == pytest.approx(sched.alphas_cumprod[0].item()) and out[-1].item() == 0.0
    assert (out[1:] < out[:-1]).all()


def _latents():
    """Channel 0 all 1 (|mean| 1), channel 1 all -3 (|mean| 3); one sample of 2x2."""
    return torch.stack([torch.ones(2, 2), torch.full((2, 2), -3.0)])[None]


def test_offset_noise_adds_one_draw_per_sample_and_channel_scaled_by_the_offset():
    z = torch.randn((1, 2, 1, 1), generator=gen())
    out = nz.offset_noise(torch.zeros(1, 2, 2, 2), _latents(), NoiseConfig(noise_offset=0.1), gen())
    torch.testing.assert_close(out, (0.1 * z).expand(1, 2, 2, 2))


def test_adaptive_noise_scale_adds_scale_times_abs_channel_mean_and_clamps_at_zero():
    z = torch.randn((1, 2, 1, 1), generator=gen())
    cfg = NoiseConfig(noise_offset=0.1, adaptive_noise_scale=0.5)   # offsets 0.1 + 0.5 x [1, 3] = [0.6, 1.6]
    out = nz.offset_noise(torch.zeros(1, 2, 2, 2), _latents(), cfg, gen())
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.6, 1.6]) * z.flatten())
    negative = NoiseConfig(noise_offset=0.1, adaptive_noise_scale=-0.5)  # 0.1 - 0.5 and 0.1 - 1.5: both 0
    assert nz.offset_noise(torch.zeros(1, 2, 2, 2), _latents(), negative, gen()).abs().sum() == 0


def test_offset_random_strength_draws_one_uniform_first():
    g = gen(3)
    u = torch.rand(1, generator=g).item()
    z = torch.randn((1, 2, 1, 1), generator=g)
    cfg = NoiseConfig(noise_offset=0.2, noise_offset_random_strength=True)
    out = nz.offset_noise(torch.zeros(1, 2, 2, 2), _latents(), cfg, gen(3))
    torch.testing.assert_close(out[0, :, 0, 0], u * 0.2 * z.flatten())


def test_no_offset_leaves_the_noise_alone_and_draws_nothing():
    g = gen(5)
    noise = torch.randn(1, 2, 2, 2)
    assert nz.offset_noise(noise, _latents(), NoiseConfig(noise_offset=0.0), g) is noise
    assert torch.equal(torch.rand(1, generator=g), torch.rand(1, generator=gen(5)))


def test_pyramid_noise_adds_levels_with_discount_and_stops_at_size_one():
    """2x2 latents: level 0 is full size (weight 1); level 1 is 2 / r with r in [2, 4), so floor gives size
    1 (or 0 -> 1): one constant value per (sample, channel) with weight discount^1, and the loop stops."""
    base = torch.randn(2, 3, 2, 2, generator=gen(7))
    g = gen(1)
    torch.rand(1, generator=g)                                  # r of level 0 (r^0 = 1 whatever r is)
    level0 = torch.randn((2, 3, 2, 2), generator=g)
    torch.rand(1, generator=g)                                  # r of level 1
    level1 = torch.randn((2, 3, 1, 1), generator=g)
    expected = base + level0 + 0.5 * level1
    expected = expected / expected.std()
    out = nz.pyramid_noise(base, iterations=6, discount=0.5, generator=gen(1))
    torch.testing.assert_close(out, expected)
    assert out.std().item() == pytest.approx(1.0)


def test_draw_noise_applies_offset_then_pyramid():
    latents = _latents()
    g = gen(2)
    noise = torch.randn(latents.shape, generator=g)
    noise = noise + 0.1 * torch.randn((1, 2, 1, 1), generator=g)
    torch.rand(1, generator=g)
    noise = noise + torch.randn((1, 2, 2, 2), generator=g)      # level 0; level 1 would be 1x1
    torch.rand(1, generator=g)
    noise = noise + 0.3 * torch.randn((1, 2, 1, 1), generator=g)
    cfg = NoiseConfig(noise_offset=0.1, multires_noise_iterations=4, multires_noise_discount=0.3)
    torch.testing.assert_close(nz.draw_noise(latents, cfg, gen(2)), noise / noise.std())


def test_input_perturbation_adds_gamma_times_fresh_noise_and_random_strength_scales_it():
    noise = torch.ones(2, 4, 2, 2)
    z = torch.randn((2, 4, 2, 2), generator=gen())
    torch.testing.assert_close(nz.input_perturbation(noise, NoiseConfig(ip_noise_gamma=0.1), gen()), noise + 0.1 * z)
    g = gen(4)
    u = torch.rand(1, generator=g).item()
    z = torch.randn((2, 4, 2, 2), generator=g)
    cfg = NoiseConfig(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True)
    torch.testing.assert_close(nz.input_perturbation(noise, cfg, gen(4)), noise + u * 0.1 * z)
    assert nz.input_perturbation(noise, NoiseConfig(), gen()) is noise


def test_velocity_target():
    # a = 0.64: v = 0.8 eps - 0.6 x0 = 0.8 x 1 - 0.6 x 2 = -0.4; a = 0.25: 0.5 x 1 - sqrt(0.75) x 2
    v = nz.velocity(torch.tensor([0.64, 0.25]), torch.full((2, 1, 1, 1), 2.0), torch.ones(2, 1, 1, 1),
                    torch.tensor([0, 1]))
    assert v.flatten().tolist() == pytest.approx([-0.4, 0.5 - 2 * math.sqrt(0.75)])


def test_timestep_range_from_the_config():
    t = nz.sample_timesteps(3000, 200, 203, "cpu", gen())
    assert set(t.tolist()) == {200, 201, 202}
