"""Optimizer and learning-rate scheduler construction (spec 3.9, 9)."""

from __future__ import annotations

import torch

from sdxl_lora.config.schema import OptimConfig


def param_groups(cfg: OptimConfig, params: dict[str, list[torch.nn.Parameter]]) -> list[dict]:
    """One group per trained component: 'unet' at --unet_lr, 'te1'/'te2' at their own text-encoder LR.

    sd-scripts uses only the first --text_encoder_lr value for both encoders; here each encoder gets its own
    (TE1 = CLIP ViT-L, TE2 = OpenCLIP ViT-bigG). A group whose LR is 0 is left out (its LoRA still runs).
    """
    lrs = {"unet": cfg.unet_lr, "te1": cfg.text_encoder_lr[0], "te2": cfg.text_encoder_lr[1]}
    groups = []
    for name, group_params in params.items():
        lr = lrs[name] if lrs[name] is not None else cfg.learning_rate
        if group_params and lr:
            groups.append({"params": group_params, "lr": lr, "name": name})
    return groups


OPTIMIZER_CLASSES = {"adamw": torch.optim.AdamW}
"""Lower-case name -> class, for exactly the names config.options.OPTIMIZERS marks as working."""


def build_optimizer(cfg: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """--optimizer_type, already validated against config.options.OPTIMIZERS."""
    return OPTIMIZER_CLASSES[cfg.optimizer_type.lower()](groups, lr=cfg.learning_rate)


def build_scheduler(cfg: OptimConfig, optimizer, total_steps: int, warmup: int):
    """--lr_scheduler through diffusers' implementations."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
