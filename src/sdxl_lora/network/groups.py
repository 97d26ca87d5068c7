"""Optimizer parameter groups of the LoRA network (spec 3.9), named as sd-scripts logs them.

Text-encoder groups come first, then the U-Net. Within each, LoRA+ puts the up weights in a "plus" group at
LR x ratio. With block LR weights the U-Net is split per block (`unet_block<idx>`, LR x block weight), in order of
first appearance. A group whose LR is 0 or None is left out: its modules still run but do not train.

One difference: sd-scripts' networks.lora trains both text encoders at the first --text_encoder_lr; here each
encoder has its own rate. While both rates are equal there is one "textencoder" group as in sd-scripts; when they
differ, "textencoder1" (CLIP ViT-L) and "textencoder2" (OpenCLIP ViT-bigG).
"""

from __future__ import annotations

from sdxl_lora.common.sdxl_layout import block_index
from sdxl_lora.config.schema import NetworkConfig, OptimConfig
from sdxl_lora.network.keys import KOHYA_PREFIX
from sdxl_lora.network.lora import LoraHandles


def _split(handles: LoraHandles, layers: list, lr: float | None, ratio: float | None, name: str) -> list[dict]:
    """The normal group (down weights, and up weights without LoRA+) and the "plus" group of up weights."""
    adapter = handles.adapter_name
    down = [p for _, layer in layers for p in layer.lora_A[adapter].parameters()]
    up = [p for _, layer in layers for p in layer.lora_B[adapter].parameters()]
    groups = [(name, down + up, lr)] if ratio is None else [(name, down, lr), (f"{name} plus", up, _times(lr, ratio))]
    return [{"params": params, "lr": rate, "name": label} for label, params, rate in groups if params and rate]


def _times(lr: float | None, ratio: float) -> float | None:
    return None if lr is None else lr * ratio


def param_groups(handles: LoraHandles, network: NetworkConfig, optim: OptimConfig) -> list[dict]:
    """[{"params", "lr", "name"}, ...] for the optimizer; names as sd-scripts' lr/<name> log keys."""
    if hasattr(handles, "param_groups"):  # a LyCORIS network makes its own groups
        return handles.param_groups(network, optim)
    lora = network.lora
    default = optim.learning_rate
    te_ratio = lora.loraplus_text_encoder_lr_ratio or lora.loraplus_lr_ratio
    unet_ratio = lora.loraplus_unet_lr_ratio or lora.loraplus_lr_ratio
    lr1, lr2 = (lr if lr is not None else default for lr in optim.text_encoder_lr)
    groups: list[dict] = []
    te1, te2 = handles.layers("te1"), handles.layers("te2")
    if lr1 == lr2:
        groups += _split(handles, te1 + te2, lr1, te_ratio, "textencoder")
    else:
        groups += _split(handles, te1, lr1, te_ratio, "textencoder1")
        groups += _split(handles, te2, lr2, te_ratio, "textencoder2")
    unet_lr = optim.unet_lr if optim.unet_lr is not None else default
    unet = handles.layers("unet")
    if lora.block_lr_weight is None:
        return groups + _split(handles, unet, unet_lr, unet_ratio, "unet")
    by_block: dict[int, list] = {}
    for name, layer in unet:
        by_block.setdefault(block_index(name[len(KOHYA_PREFIX["unet"]):]), []).append((name, layer))
    for block, layers in by_block.items():
        groups += _split(handles, layers, _times(unet_lr, lora.block_lr_weight[block]), unet_ratio,
                         f"unet_block{block}")
    return groups
