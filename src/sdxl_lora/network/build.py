"""The network as the loop asks for it: base weights merged, LoRA created (from the options or from a file's
modules), initial weights loaded. The loop knows nothing of block indices, files or alphas."""

from __future__ import annotations

import logging

from torch import nn

from sdxl_lora.config.schema import NetworkConfig
from sdxl_lora.network.lora import LoraHandles, apply_lora, inject
from sdxl_lora.network.weights import load_weights, merge_into, read_kohya, specs_from_weights

log = logging.getLogger(__name__)


def merge_base_weights(unet: nn.Module, te1: nn.Module, te2: nn.Module, cfg: NetworkConfig) -> None:
    """--base_weights: each file merged into the frozen weights with its multiplier (default 1.0), in order."""
    models = {"unet": unet, "te1": te1, "te2": te2}
    for i, path in enumerate(cfg.base_weights):
        multiplier = cfg.base_weights_multiplier[i] if i < len(cfg.base_weights_multiplier) else 1.0
        count = merge_into(models, read_kohya(path), multiplier, path)
        log.info("--base_weights %s: %d modules merged with multiplier %g", path, count, multiplier)


def build_network(unet: nn.Module, te1: nn.Module, te2: nn.Module, cfg: NetworkConfig) -> LoraHandles:
    """The trained LoRA network: as configured, or with --dim_from_weights the modules, ranks and alphas of
    --network_weights; then --network_weights loaded into it. lycoris.kohya: a LyCORIS network instead."""
    if cfg.lycoris is not None:
        return _build_lycoris(unet, te1, te2, cfg)
    state = read_kohya(cfg.network_weights) if cfg.network_weights else None
    if state is not None and cfg.dim_from_weights:
        for model in (unet, te1, te2):
            model.requires_grad_(False)
        trained = {"unet": unet} if cfg.train_unet else {}
        if cfg.train_text_encoder:
            trained |= {"te1": te1, "te2": te2}
        specs = specs_from_weights(state, tuple(trained))
        if not specs:
            raise ValueError(f"--dim_from_weights: {cfg.network_weights} has no module of the trained models")
        handles = inject(trained, specs, cfg)
    else:
        handles = apply_lora(unet, te1, te2, cfg)
    if state is not None:
        handles = load_weights(handles, state, str(cfg.network_weights))
    return handles


def _build_lycoris(unet: nn.Module, te1: nn.Module, te2: nn.Module, cfg: NetworkConfig):
    """The LyCORIS network (network/lycoris_net.py), with --network_weights loaded when given."""
    from sdxl_lora.network.lycoris_net import build_lycoris
    from sdxl_lora.network.weights import read_lora

    handles = build_lycoris(unet, te1, te2, cfg)
    if cfg.network_weights:
        handles.load_kohya(read_lora(cfg.network_weights)[0], str(cfg.network_weights))
    return handles
