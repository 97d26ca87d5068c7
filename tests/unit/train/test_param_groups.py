"""Optimizer parameter groups and per-encoder learning rates (spec 3.9; README: TE1 and TE2 each get their own)."""

from __future__ import annotations

import torch

from sdxl_lora.config.schema import OptimConfig
from sdxl_lora.train.optim import build_optimizer, param_groups


def _params() -> dict[str, list[torch.nn.Parameter]]:
    return {name: [torch.nn.Parameter(torch.zeros(n))] for name, n in (("unet", 3), ("te1", 2), ("te2", 1))}


def _lrs(groups) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in groups}


def test_every_component_falls_back_to_learning_rate():
    params = _params()
    groups = param_groups(OptimConfig(learning_rate=1e-4), params)
    assert _lrs(groups) == {"unet": 1e-4, "te1": 1e-4, "te2": 1e-4}
    assert all(g["params"] == params[g["name"]] for g in groups)


def test_unet_and_each_text_encoder_get_their_own_rate():
    cfg = OptimConfig(learning_rate=1e-4, unet_lr=3e-4, text_encoder_lr=(1e-5, 2e-5))
    assert _lrs(param_groups(cfg, _params())) == {"unet": 3e-4, "te1": 1e-5, "te2": 2e-5}


def test_one_encoder_rate_given_the_other_falls_back():
    cfg = OptimConfig(learning_rate=1e-4, text_encoder_lr=(None, 5e-6))
    assert _lrs(param_groups(cfg, _params())) == {"unet": 1e-4, "te1": 1e-4, "te2": 5e-6}


def test_a_zero_rate_drops_the_group_and_so_does_no_parameter():
    """sd-scripts drops a group whose LR is 0 ('NO LR skipping'): its LoRA still runs, untrained."""
    params = _params()
    params["unet"] = []  # --network_train_text_encoder_only
    cfg = OptimConfig(learning_rate=1e-4, text_encoder_lr=(0.0, None))
    assert _lrs(param_groups(cfg, params)) == {"te2": 1e-4}
    cfg = OptimConfig(learning_rate=0.0, unet_lr=2e-4)
    assert _lrs(param_groups(cfg, _params())) == {"unet": 2e-4}


def test_the_optimizer_keeps_the_group_rates():
    cfg = OptimConfig(learning_rate=1e-4, unet_lr=3e-4, text_encoder_lr=(1e-5, 2e-5))
    optimizer = build_optimizer(cfg, param_groups(cfg, _params()))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [3e-4, 1e-5, 2e-5]
