"""The batch a training step receives: one typed object whatever the mode (live images or cached latents).

Every field is filled by the dataset in a DataLoader worker; tensors stay on the CPU until `to(device)`
(accelerate's prepared loader calls it, so a batch arrives on the training device).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class Batch:
    """B images of one bucket (height H, width W), with captions, tokens and SDXL size conditioning."""

    paths: list[str]
    """Image file of each sample."""
    captions: list[str]
    """Processed captions (prefix/suffix, wildcards, shuffling, dropout, warmup applied): what is encoded."""
    latent_keys: list
    """What identifies each sample's latent: (path, bucket (w, h), crop (left, top) in the resized image,
    flipped). The same key always means the same pixels."""
    original_size_hw: torch.Tensor
    """(B, 2) int64: original image (height, width) before any resize."""
    crop_top_left: torch.Tensor
    """(B, 2) int64: SDXL crop conditioning (top, left)."""
    target_size_hw: torch.Tensor
    """(B, 2) int64: bucket (height, width), the size the images were resized and cropped to."""
    loss_weights: torch.Tensor
    """(B,) float32: --prior_loss_weight for regularisation images, else 1."""
    input_ids_1: torch.Tensor | None = None
    """(B, n, 77) int64 token ids for text encoder 1 (n chunks for --max_token_length); None without tokenizers."""
    input_ids_2: torch.Tensor | None = None
    """(B, n, 77) int64 token ids for text encoder 2."""
    images: torch.Tensor | None = None
    """(B, 3, H, W) float32 in [-1, 1]; None when latents come from a cache."""
    latents: torch.Tensor | None = None
    """(B, C, H/8, W/8) raw (unscaled) latents from the cache attached to the dataset; None otherwise."""
    masks: torch.Tensor | None = None
    """(B, H, W) float32 in [0, 1] loss masks (alpha_mask or conditioning_data_dir); None without masks."""
    custom_attributes: list[dict] | None = None
    """Each sample's subset custom_attributes."""

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device, non_blocking: bool = False) -> Batch:
        """The batch with every tensor on `device` (lists stay as they are)."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)
