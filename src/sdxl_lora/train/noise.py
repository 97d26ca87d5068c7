"""Forward diffusion for training (spec 5.1, 5.2): schedule, timesteps, noise and the noisy latents.

Every random draw goes through the `generator` passed in (the run's dedicated noise generator), so a run is
reproducible and a resumed run can restore it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdxl_lora.config.schema import NoiseConfig


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio a_t / (1 - a_t) of each timestep (Min-SNR, Hang et al. 2023, eq. 5)."""
    a = alphas_cumprod.double()
    return (a / (1 - a)).float()


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Rescale sqrt(a_t) so the last timestep carries no signal and the first is unchanged (Lin et al. 2023,
    'Common Diffusion Noise Schedules and Sample Steps are Flawed', algorithm 1)."""
    root = alphas_cumprod.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return (root**2).to(alphas_cumprod.dtype)


def sample_timesteps(batch: int, min_t: int, max_t: int, device, generator=None) -> torch.Tensor:
    """Integer timesteps uniform in [min_t, max_t); all max_t when the range is empty (as sd-scripts)."""
    if min_t >= max_t:
        return torch.full((batch,), max_t, dtype=torch.long, device=device)
    return torch.randint(min_t, max_t, (batch,), device=device, generator=generator)


def _strength(value: float, random_strength: bool, generator, device) -> torch.Tensor | float:
    """The configured strength, or U(0, 1) x it (one draw per batch) with the random-strength flag."""
    if random_strength:
        return torch.rand(1, generator=generator, device=device).item() * value
    return value


def offset_noise(noise: torch.Tensor, latents: torch.Tensor, cfg: NoiseConfig, generator=None) -> torch.Tensor:
    """--noise_offset (crosslabs.org 'Diffusion with offset noise'): add o x N(0, 1) per (sample, channel).
    With --adaptive_noise_scale s the offset is max(0, o + s |mean_HW(latents)|) per (sample, channel)."""
    if not cfg.noise_offset:
        return noise
    offset = _strength(cfg.noise_offset, cfg.noise_offset_random_strength, generator, noise.device)
    if cfg.adaptive_noise_scale is not None:
        mean = latents.float().mean(dim=(2, 3), keepdim=True).abs()
        offset = torch.clamp(offset + cfg.adaptive_noise_scale * mean, min=0.0)
    shift = torch.randn((*noise.shape[:2], 1, 1), generator=generator, device=noise.device)
    return noise + (offset * shift).to(noise.dtype)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, generator=None) -> torch.Tensor:
    """--multires_noise_iterations (Whitaker, 'Multi-resolution noise for diffusion model training'): for
    i = 0.. add bilinear-upsampled N(0, 1) drawn at size max(1, floor(side / r^i)), r ~ U(2, 4), weighted
    discount^i; stop after a level of size 1; divide by the std of the whole batch tensor."""
    b, c, h, w = noise.shape
    out = noise.float().clone()
    for i in range(iterations):
        r = 2 + 2 * torch.rand(1, generator=generator, device=noise.device).item()
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        level = torch.randn((b, c, hn, wn), generator=generator, device=noise.device)
        out += F.interpolate(level, size=(h, w), mode="bilinear", align_corners=False) * discount**i
        if hn == 1 or wn == 1:
            break
    return (out / out.std()).to(noise.dtype)


def draw_noise(latents: torch.Tensor, cfg: NoiseConfig, generator=None) -> torch.Tensor:
    """The noise the model learns to predict: N(0, I), then offset noise, then pyramid noise (spec 5.2)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    noise = offset_noise(noise, latents, cfg, generator)
    if cfg.multires_noise_iterations:
        noise = pyramid_noise(noise, cfg.multires_noise_iterations, cfg.multires_noise_discount, generator)
    return noise


def input_perturbation(noise: torch.Tensor, cfg: NoiseConfig, generator=None) -> torch.Tensor:
    """--ip_noise_gamma (Ning et al. 2023, 'Input Perturbation Reduces Exposure Bias'): the noise that goes into
    x_t is noise + gamma N(0, I); the target keeps the unperturbed noise."""
    if not cfg.ip_noise_gamma:
        return noise
    gamma = _strength(cfg.ip_noise_gamma, cfg.ip_noise_gamma_random_strength, generator, noise.device)
    extra = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + gamma * extra


def draw(latents: torch.Tensor, cfg: NoiseConfig, generator=None, rows: tuple[int, ...] | None = None,
         size: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise, timesteps, noise perturbed for x_t) of one batch in sd-scripts' draw order: noise (offset,
    pyramid), timesteps, input perturbation. With `rows` (several processes) everything is drawn for the whole
    global batch of `size` samples (these latents at `rows`, zeros elsewhere: the adaptive offset reads each
    sample's own) and returned at `rows`: every process draws the same numbers, and together they train what
    one process with the global batch would."""
    full = latents
    if rows is not None:
        index = torch.tensor(rows, device=latents.device)
        full = latents.new_zeros((size, *latents.shape[1:])).index_copy(0, index, latents)
    noise = draw_noise(full, cfg, generator)
    timesteps = sample_timesteps(full.shape[0], cfg.min_timestep, cfg.max_timestep, full.device, generator)
    perturbed = input_perturbation(noise, cfg, generator)
    if rows is None:
        return noise, timesteps, perturbed
    return noise[index], timesteps[index], perturbed[index]


def noisy_latents(alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (DDPM, Ho et al. 2020, eq. 4)."""
    a = alphas_cumprod.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
    return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)


def velocity(alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
             timesteps: torch.Tensor) -> torch.Tensor:
    """v-prediction target v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (Salimans & Ho 2022, section 4)."""
    a = alphas_cumprod.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
    return (a.sqrt() * noise.float() - (1 - a).sqrt() * latents.float()).to(latents.dtype)
