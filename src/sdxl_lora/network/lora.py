"""LoRA through peft on sd-scripts' default targets (spec 3.1), with its scale and initialisation (spec 3.5).

U-Net: every Linear inside a Transformer2DModel (proj_in/out, attn1/attn2 to_q/k/v/out.0, ff.net.0.proj,
ff.net.2; 722 modules on SDXL base). Text encoders: every Linear inside CLIPAttention / CLIPMLP
(q/k/v/out_proj, fc1, fc2). Each model gets its own LoraConfig with r=rank and lora_alpha=alpha, so
scale = alpha / rank; peft's default init is lora_A Kaiming-uniform(a=sqrt(5)) and lora_B zeros, as in
sd-scripts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import nn

from sdxl_lora.network.keys import Component

ADAPTER_NAME = "default"
UNET_TARGET_CLASSES = ("Transformer2DModel",)
TE_TARGET_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


@dataclass(frozen=True)
class LoraHandles:
    """The models that carry the LoRA adapter, and the adapter's settings."""

    models: Mapping[Component, nn.Module]
    """Component ("unet", "te1", "te2") -> model with the adapter; untrained components are absent."""
    rank: int
    """LoRA rank r (sd-scripts' --network_dim)."""
    alpha: float
    """LoRA alpha (--network_alpha); scale = alpha / rank."""
    adapter_name: str = ADAPTER_NAME
    """peft adapter name inside each model."""

    def parameters(self, component: Component) -> list[nn.Parameter]:
        """The LoRA parameters (down, up per layer) of one component; empty when it has no adapter."""
        model = self.models.get(component)
        if model is None:
            return []
        layers = lora_layers(model, self.adapter_name)
        return [p for _, layer in layers for ab in (layer.lora_A, layer.lora_B)
                for p in ab[self.adapter_name].parameters()]

    def parameter_counts(self) -> dict[Component, int]:
        """Number of trainable LoRA weights per component that has an adapter."""
        return {c: sum(p.numel() for p in self.parameters(c)) for c in self.models}


def target_module_names(model: nn.Module, target_classes: tuple[str, ...]) -> list[str]:
    """Full names of the Linear layers inside modules whose class name is in target_classes (spec 3.1)."""
    names: dict[str, None] = {}
    for parent_name, parent in model.named_modules():
        if type(parent).__name__ in target_classes:
            linears = parent.named_modules(prefix=parent_name)
            names.update((n, None) for n, m in linears if isinstance(m, nn.Linear))
    return list(names)


def lora_layers(model: nn.Module, adapter_name: str = ADAPTER_NAME) -> Iterator[tuple[str, LoraLayer]]:
    """(module path, peft LoRA layer) for every layer that holds the adapter, in model order."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            yield name, module


def _add_neuron_dropout(model: nn.Module, p: float, adapter_name: str) -> None:
    """sd-scripts' network_dropout drops features of down(x) (spec 3.5); peft's lora_dropout would drop x."""
    def drop(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(output, p=p, training=module.training)

    for _, layer in lora_layers(model, adapter_name):
        layer.lora_A[adapter_name].register_forward_hook(drop)


def _inject(model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float | None) -> None:
    if not targets:
        raise ValueError(f"{type(model).__name__} has no LoRA target modules (spec 3.1)")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=True,
                        target_modules=targets)
    model.add_adapter(config, adapter_name=ADAPTER_NAME)
    if dropout:
        _add_neuron_dropout(model, dropout, ADAPTER_NAME)


def apply_lora(
    unet: nn.Module,
    te1: nn.Module,
    te2: nn.Module,
    *,
    rank: int,
    alpha: float,
    train_unet: bool,
    train_text_encoder: bool,
    dropout: float | None = None,
) -> LoraHandles:
    """Freeze all three models, then add a LoRA adapter to those being trained; only LoRA weights train."""
    if rank < 1:
        raise ValueError(f"LoRA rank (--network_dim) must be >= 1, got {rank}")
    if not (train_unet or train_text_encoder):
        raise ValueError("nothing to train: both the U-Net and the text encoders are excluded")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"--network_dropout must be in [0, 1), got {dropout}")
    models: dict[Component, nn.Module] = {}
    if train_unet:
        models["unet"] = unet
    if train_text_encoder:
        models["te1"], models["te2"] = te1, te2
    for model in (unet, te1, te2):
        model.requires_grad_(False)
    for component, model in models.items():
        classes = UNET_TARGET_CLASSES if component == "unet" else TE_TARGET_CLASSES
        _inject(model, target_module_names(model, classes), rank, alpha, dropout)
    return LoraHandles(models=models, rank=rank, alpha=float(alpha))
