"""Optimizer parameter groups and per-encoder learning rates (spec 3.9; README: TE1 and TE2 each get their own).

The groups come from network/groups.py (the loop asks the network for them); LoRA+ and block LR weights are
tested in tests/unit/network/test_network_args.py."""

from __future__ import annotations

import copy

import pytest
import torch

from sdxl_lora.config.schema import NetworkConfig, OptimConfig
from sdxl_lora.network.groups import param_groups
from sdxl_lora.network.lora import apply_lora
from sdxl_lora.train.optim import build_optimizer


@pytest.fixture(scope="module")
def tiny():
    from sdxl_lora.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


def _handles(tiny, **network):
    models = (copy.deepcopy(m) for m in (tiny.unet, tiny.text_encoder, tiny.text_encoder_2))
    return apply_lora(*models, NetworkConfig(network_dim=2, **network))


def _lrs(groups) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in groups}


def test_every_component_falls_back_to_learning_rate(tiny):
    handles = _handles(tiny)
    groups = param_groups(handles, NetworkConfig(), OptimConfig(learning_rate=1e-4))
    assert _lrs(groups) == {"textencoder": 1e-4, "unet": 1e-4}
    te = set(handles.parameters("te1")) | set(handles.parameters("te2"))
    assert set(groups[0]["params"]) == te and set(groups[1]["params"]) == set(handles.parameters("unet"))


def test_unet_and_each_text_encoder_get_their_own_rate(tiny):
    cfg = OptimConfig(learning_rate=1e-4, unet_lr=3e-4, text_encoder_lr=(1e-5, 2e-5))
    assert _lrs(param_groups(_handles(tiny), NetworkConfig(), cfg)) == {
        "textencoder1": 1e-5, "textencoder2": 2e-5, "unet": 3e-4}


def test_one_encoder_rate_given_the_other_falls_back(tiny):
    cfg = OptimConfig(learning_rate=1e-4, text_encoder_lr=(None, 5e-6))
    assert _lrs(param_groups(_handles(tiny), NetworkConfig(), cfg)) == {
        "textencoder1": 1e-4, "textencoder2": 5e-6, "unet": 1e-4}


def test_a_zero_rate_drops_the_group_and_so_does_no_parameter(tiny):
    """sd-scripts drops a group whose LR is 0 ('NO LR skipping'): its LoRA still runs, untrained."""
    handles = _handles(tiny, train_unet=False)  # --network_train_text_encoder_only
    cfg = OptimConfig(learning_rate=1e-4, text_encoder_lr=(0.0, None))
    assert _lrs(param_groups(handles, NetworkConfig(), cfg)) == {"textencoder2": 1e-4}
    cfg = OptimConfig(learning_rate=0.0, unet_lr=2e-4)
    assert _lrs(param_groups(_handles(tiny), NetworkConfig(), cfg)) == {"unet": 2e-4}


def test_the_optimizer_keeps_the_group_rates(tiny):
    cfg = OptimConfig(learning_rate=1e-4, unet_lr=3e-4, text_encoder_lr=(1e-5, 2e-5))
    optimizer = build_optimizer(cfg, param_groups(_handles(tiny), NetworkConfig(), cfg))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-5, 2e-5, 3e-4]
