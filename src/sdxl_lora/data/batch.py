"""The batch a training step receives: one typed object whatever the mode (live images or cached latents).

Every field is filled by the dataset in a DataLoader worker; tensors stay on the CPU until `to(device)`
(accelerate's prepared loader calls it, so a batch arrives on the training device). A loader with pin_memory
(CUDA runs) calls `pin_memory()` first, so that copy can be non-blocking.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


def shard_rows(size: int, rank: int, processes: int) -> tuple[int, ...]:
    """Rows of a global batch of `size` samples that process `rank` of `processes` trains: contiguous slices,
    the first `size % processes` processes one row more (10 over 4: 3, 3, 2, 2); empty when size < processes."""
    base, extra = divmod(size, processes)
    start = rank * base + min(rank, extra)
    return tuple(range(start, start + base + (rank < extra)))


@dataclass(frozen=True)
class Shard:
    """A process's part of a global batch (several processes): the global batch is what one process with
    batch_size x processes would train, and every process holds some of its rows."""

    rows: tuple[int, ...]
    """Row in the global batch of each sample here; a process left without a row holds row 0 again, with loss
    weight 0 (every process must run the model each step, or DDP waits for it)."""
    size: int
    """Samples in the global batch."""
    processes: int
    paths: tuple[str, ...]
    """Every image of the global batch, in row order (named when the loss is not finite)."""

    @property
    def loss_scale(self) -> float:
        """Factor on this process's mean loss so that the mean of the processes' gradients (what DDP applies)
        is the gradient of the mean loss over the global batch: processes x rows here / size. Exact for uneven
        shards: sum_r (P/N) n_r mean_r = P/N sum_i l_i, averaged over P processes gives mean_i l_i."""
        return self.processes * len(self.rows) / self.size


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
    shard: Shard | None = None
    """Where these samples sit in the global batch with several processes; None: the batch is whole."""

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device, non_blocking: bool = False) -> Batch:
        """The batch with every tensor on `device` (lists stay as they are)."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        """The batch with every tensor in page-locked host memory (what torch's DataLoader calls on a custom
        batch type with pin_memory=True): a non-blocking copy to the GPU then overlaps the host's work.
        Every other field (lists, the shard) is kept as it is."""
        pinned = {f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **pinned)
