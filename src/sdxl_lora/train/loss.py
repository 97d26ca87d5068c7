"""Training loss (spec 5.3, 5.4): element loss, per-sample mean, per-sample weights, batch mean."""

from __future__ import annotations

import torch


def per_sample_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over all non-batch dimensions, computed in float32.

    With a mask (B, H, W) in [0, 1] at image resolution (alpha_mask), the element loss is multiplied by the mask
    area-resized to the latent size; the mean stays over all elements, as sd-scripts does (spec 5.5).
    """
    element = (pred.float() - target.float()) ** 2
    if mask is not None:
        element = element * latent_mask(mask, element.shape[-2:]).to(element)
    return element.mean(dim=tuple(range(1, pred.ndim)))


def latent_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """(B, H, W) image-resolution mask -> (B, 1, h, w) with area interpolation."""
    return torch.nn.functional.interpolate(mask[:, None].float(), size=tuple(size), mode="area")


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample weights (prior_loss_weight for regularisation images), then the batch mean."""
    return (per_sample * weights.to(per_sample)).mean()
