"""Forward diffusion for training (spec 5.1, 5.2): timesteps, noise and the noisy latents."""

from __future__ import annotations

import torch


def sample_timesteps(batch: int, min_t: int, max_t: int, device, generator=None) -> torch.Tensor:
    """Integer timesteps uniform in [min_t, max_t); all max_t when the range is empty (as sd-scripts)."""
    if min_t >= max_t:
        return torch.full((batch,), max_t, dtype=torch.long, device=device)
    return torch.randint(min_t, max_t, (batch,), device=device, generator=generator)


def noisy_latents(alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (DDPM, Ho et al. 2020, eq. 4)."""
    a = alphas_cumprod.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
    return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)
