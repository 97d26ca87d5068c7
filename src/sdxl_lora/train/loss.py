"""Training loss (spec 5.3 to 5.5): element loss, mask, per-sample mean, per-sample weights, SNR weightings,
batch mean. Each step is a small function; `training_loss` applies them in sd-scripts' order."""

from __future__ import annotations

import math

import torch

from sdxl_lora.config.schema import LossConfig

SNR_CAP = 1000.0
"""sd-scripts caps SNR at 1000 in the v-prediction and debiased weightings (SNR is near 1175 at t = 0)."""


def huber_c(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, cfg: LossConfig) -> torch.Tensor | None:
    """Per-sample Huber threshold c_t for huber / smooth_l1 (spec 5.3); None for l1 / l2.
    constant: huber_c x huber_scale; exponential: exp(-a t) x huber_scale with a = -ln(huber_c) / 1000;
    snr: (1 - huber_c) / (1 + sigma_t)^2 + huber_c, sigma_t = sqrt((1 - a_t) / a_t)."""
    if cfg.loss_type not in ("huber", "smooth_l1"):
        return None
    t = timesteps.float()
    if cfg.huber_schedule == "constant":
        return torch.full_like(t, cfg.huber_c * cfg.huber_scale)
    if cfg.huber_schedule == "exponential":
        rate = -math.log(cfg.huber_c) / 1000
        return torch.exp(-rate * t) * cfg.huber_scale
    a = alphas_cumprod.to(timesteps.device)[timesteps].double()
    sigma = ((1 - a) / a).sqrt()
    return ((1 - cfg.huber_c) / (1 + sigma) ** 2 + cfg.huber_c).float()


def element_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                 c: torch.Tensor | None = None) -> torch.Tensor:
    """Unreduced loss in float32. huber: 2c (sqrt(d^2 + c^2) - c) (pseudo-Huber, Charbonnier);
    smooth_l1: 2 (sqrt(d^2 + c^2) - c), with per-sample c."""
    diff = pred.float() - target.float()
    if loss_type == "l2":
        return diff**2
    if loss_type == "l1":
        return diff.abs()
    c = c.float().view(-1, *([1] * (diff.ndim - 1)))
    root = torch.sqrt(diff**2 + c**2) - c
    return 2 * c * root if loss_type == "huber" else 2 * root


def latent_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """(B, H, W) image-resolution mask -> (B, 1, h, w) with area interpolation."""
    return torch.nn.functional.interpolate(mask[:, None].float(), size=tuple(size), mode="area")


def per_sample_mean(element: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over all non-batch dimensions. With a mask (B, H, W) in [0, 1] at image resolution, the element
    loss is multiplied by the mask area-resized to the latent size; the mean stays over all elements, as
    sd-scripts does (masked-out pixels count as zeros, spec 5.5)."""
    if mask is not None:
        element = element * latent_mask(mask, element.shape[-2:]).to(element)
    return element.mean(dim=tuple(range(1, element.ndim)))


def per_sample_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over all non-batch dimensions, computed in float32 (optionally masked)."""
    return per_sample_mean(element_loss(pred, target, "l2"), mask)


def snr_weighting(loss: torch.Tensor, snr_t: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Per-sample weightings in sd-scripts' order (spec 5.4 steps 5 to 8), from SNR_t of each sample:
    Min-SNR (Hang et al. 2023): x min(SNR, g) / SNR (eps) or / (SNR + 1) (v);
    scale_v_pred_loss_like_noise_pred: x s with s = SNR' / (SNR' + 1), SNR' = min(SNR, 1000);
    v_pred_like_loss l: + l x loss / s;
    debiased estimation (Yu et al. 2024): x 1 / sqrt(SNR') (eps) or x 1 / (SNR' + 1) (v)."""
    snr_t = snr_t.to(loss.device).float()
    capped = torch.clamp(snr_t, max=SNR_CAP)
    scale = capped / (capped + 1)
    if cfg.min_snr_gamma:
        denominator = snr_t + 1 if cfg.v_parameterization else snr_t
        loss = loss * torch.clamp(snr_t, max=cfg.min_snr_gamma) / denominator
    if cfg.scale_v_pred_loss_like_noise_pred:
        loss = loss * scale
    if cfg.v_pred_like_loss:
        loss = loss + loss / scale * cfg.v_pred_like_loss
    if cfg.debiased_estimation_loss:
        loss = loss * (1 / (capped + 1) if cfg.v_parameterization else 1 / capped.sqrt())
    return loss


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample weights (prior_loss_weight for regularisation images), then the batch mean."""
    return (per_sample * weights.to(per_sample)).mean()


def training_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, *, cfg: LossConfig,
                  alphas_cumprod: torch.Tensor, snr_table: torch.Tensor, loss_weights: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """The scalar to back-propagate, in sd-scripts' order (spec 5.4): element loss, mask, per-sample mean,
    per-sample weights, SNR weightings, batch mean. `snr_table` is the schedule's SNR before any zero-terminal
    rescaling (spec 5.1 [quirk]); the Huber snr schedule reads the (possibly rescaled) alphas_cumprod."""
    element = element_loss(pred, target, cfg.loss_type, huber_c(timesteps, alphas_cumprod, cfg))
    loss = per_sample_mean(element, mask) * loss_weights.to(element.device, torch.float32)
    loss = snr_weighting(loss, snr_table.to(timesteps.device)[timesteps], cfg)
    return loss.mean()
