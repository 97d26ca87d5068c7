"""Optimizer and learning-rate scheduler construction (spec 9); the parameter groups come from network/groups.py."""

from __future__ import annotations

import torch

from sdxl_lora.config.schema import OptimConfig

OPTIMIZER_CLASSES = {"adamw": torch.optim.AdamW}
"""Lower-case name -> class, for exactly the names config.options.OPTIMIZERS marks as working."""


def build_optimizer(cfg: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """--optimizer_type, already validated against config.options.OPTIMIZERS."""
    return OPTIMIZER_CLASSES[cfg.optimizer_type.lower()](groups, lr=cfg.learning_rate)


def build_scheduler(cfg: OptimConfig, optimizer, total_steps: int, warmup: int):
    """--lr_scheduler through diffusers' implementations."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
