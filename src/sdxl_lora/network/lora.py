"""LoRA through peft on sd-scripts' targets (spec 3.1), with its ranks, alphas, scale, init and dropouts (3.5, 3.6).

Targets: every Linear / Conv2d inside a module whose class name is a target. U-Net: Transformer2DModel (722
modules on SDXL base); with conv LoRA (conv_dim or conv_block_dims) also ResnetBlock2D / Downsample2D /
Upsample2D. Text encoders: CLIPAttention / CLIPMLP. Linear and 1x1 convs take the linear rank, larger kernels
the conv rank (skipped without one); per-block values (block_dims, conv_block_dims) replace them on the U-Net,
and a block whose LR weight is 0 gets no modules. A rank of 0 means no module; an alpha of 0 means alpha = rank.

Each model gets one LoraConfig; modules whose rank/alpha differ from the most common one are set through peft's
rank_pattern/alpha_pattern, so scale = alpha / rank per module. peft's default init (lora_A Kaiming-uniform
a=sqrt(5), lora_B zeros) is sd-scripts'.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import nn

from sdxl_lora.common.sdxl_layout import block_index, diffusers_to_sgm
from sdxl_lora.config.network_args import NUM_BLOCKS
from sdxl_lora.config.schema import NetworkConfig
from sdxl_lora.network.keys import Component, kohya_name

ADAPTER_NAME = "default"
UNET_TARGET_CLASSES = ("Transformer2DModel",)
UNET_CONV_TARGET_CLASSES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_TARGET_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


@dataclass(frozen=True)
class ModuleSpec:
    """One LoRA module to create."""

    component: Component
    """'unet', 'te1' or 'te2'."""
    path: str
    """Module path in our (diffusers / transformers) model."""
    rank: int
    """LoRA rank r of this module."""
    alpha: float
    """LoRA alpha of this module; scale = alpha / rank."""
    int_alpha: bool = False
    """Alpha defaulted to the rank: sd-scripts stores it as an int64 tensor (spec 3.4)."""

    @property
    def name(self) -> str:
        """Kohya module name (spec 3.2)."""
        return kohya_name(self.component, self.path)


@dataclass(frozen=True)
class LoraHandles:
    """The models that carry the LoRA adapter, and every module's settings."""

    models: Mapping[Component, nn.Module]
    """Component ("unet", "te1", "te2") -> model with the adapter; untrained components are absent."""
    specs: Mapping[str, ModuleSpec] = field(default_factory=dict)
    """Kohya module name -> its rank and alpha, in model order."""
    adapter_name: str = ADAPTER_NAME
    """peft adapter name inside each model."""

    def parameters(self, component: Component) -> list[nn.Parameter]:
        """The LoRA parameters (down, up per layer) of one component; empty when it has no adapter."""
        return [p for _, layer in self.layers(component) for ab in (layer.lora_A, layer.lora_B)
                for p in ab[self.adapter_name].parameters()]

    def layers(self, component: Component) -> list[tuple[str, LoraLayer]]:
        """(kohya name, peft layer) of one component's modules, in model order."""
        model = self.models.get(component)
        if model is None:
            return []
        return [(kohya_name(component, path), layer) for path, layer in lora_layers(model, self.adapter_name)]

    def parameter_counts(self) -> dict[Component, int]:
        """Number of trainable LoRA weights per component that has an adapter."""
        return {c: sum(p.numel() for p in self.parameters(c)) for c in self.models}

    def train(self, mode: bool = True) -> None:
        """Dropouts act in training mode only (spec 3.5); sd-scripts sets it per epoch on the network."""
        for component in self.models:
            for _, layer in self.layers(component):
                for part in (layer.lora_A[self.adapter_name], layer.lora_B[self.adapter_name]):
                    part.train(mode)


def target_module_names(model: nn.Module, target_classes: Iterable[str]) -> list[str]:
    """Full names of the Linear / Conv2d layers inside modules whose class name is a target (spec 3.1)."""
    names: dict[str, None] = {}
    classes = tuple(target_classes)
    for parent_name, parent in model.named_modules():
        if type(parent).__name__ in classes:
            children = parent.named_modules(prefix=parent_name)
            names.update((n, None) for n, m in children if isinstance(m, (nn.Linear, nn.Conv2d)))
    return list(names)


def lora_layers(model: nn.Module, adapter_name: str = ADAPTER_NAME) -> Iterator[tuple[str, LoraLayer]]:
    """(module path, peft LoRA layer) for every layer that holds the adapter, in model order."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            yield name, module


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or tuple(module.kernel_size) == (1, 1)


def _spec(component: Component, path: str, rank: int | None, alpha: float | None) -> ModuleSpec | None:
    if not rank:
        return None
    if not alpha:
        return ModuleSpec(component, path, int(rank), float(rank), int_alpha=True)
    return ModuleSpec(component, path, int(rank), float(alpha))


def _unet_rank(cfg: NetworkConfig, path: str, linear: bool) -> tuple[int | None, float | None]:
    """Rank and alpha of one U-Net module: global values, or its block's (spec 3.6)."""
    lora = cfg.lora
    if not lora.uses_blocks:
        return (cfg.rank, cfg.network_alpha) if linear else (lora.conv_dim, lora.conv_alpha)
    block = block_index(diffusers_to_sgm(path))
    if lora.block_lr_weight is not None and lora.block_lr_weight[block] == 0:
        return None, None
    if linear:
        dims = lora.block_dims or (cfg.rank,) * NUM_BLOCKS
        alphas = lora.block_alphas or (cfg.network_alpha,) * NUM_BLOCKS
        return dims[block], alphas[block]
    if lora.conv_block_dims is None and lora.conv_dim is None:
        return None, None
    dims = lora.conv_block_dims or (lora.conv_dim,) * NUM_BLOCKS
    alphas = lora.conv_block_alphas or (lora.conv_alpha if lora.conv_alpha is not None else 1.0,) * NUM_BLOCKS
    return dims[block], alphas[block]


def plan_modules(models: Mapping[Component, nn.Module], cfg: NetworkConfig) -> list[ModuleSpec]:
    """The modules sd-scripts' networks.lora would create for this configuration, in model order."""
    specs = []
    for component, model in models.items():
        if component == "unet":
            classes = UNET_TARGET_CLASSES + (UNET_CONV_TARGET_CLASSES if cfg.lora.uses_conv else ())
        else:
            classes = TE_TARGET_CLASSES
        modules = dict(model.named_modules())
        for path in target_module_names(model, classes):
            linear = _is_linear_like(modules[path])
            if component == "unet":
                rank, alpha = _unet_rank(cfg, path, linear)
            else:
                rank, alpha = (cfg.rank, cfg.network_alpha) if linear else (None, None)
            spec = _spec(component, path, rank, alpha)
            if spec is not None:
                specs.append(spec)
    return specs


def _pattern(paths: list[str]) -> str:
    """A peft rank/alpha pattern that matches exactly these module paths (peft anchors it at the end)."""
    return "^(?:" + "|".join(re.escape(p) for p in paths) + ")"


def _lora_config(specs: list[ModuleSpec]) -> LoraConfig:
    """One LoraConfig: the most common rank/alpha as defaults, the others as patterns."""
    rank = Counter(s.rank for s in specs).most_common(1)[0][0]
    alpha = Counter(s.alpha for s in specs).most_common(1)[0][0]
    by_rank: dict[int, list[str]] = {}
    by_alpha: dict[float, list[str]] = {}
    for s in specs:
        if s.rank != rank:
            by_rank.setdefault(s.rank, []).append(s.path)
        if s.alpha != alpha:
            by_alpha.setdefault(s.alpha, []).append(s.path)
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=True,
                      target_modules=[s.path for s in specs],
                      rank_pattern={_pattern(p): r for r, p in by_rank.items()},
                      alpha_pattern={_pattern(p): a for a, p in by_alpha.items()})


def _add_dropouts(layer: LoraLayer, adapter: str, neuron: float | None, rank: float | None,
                  module: float | None) -> None:
    """sd-scripts' three dropouts (spec 3.5), active in training mode only.

    neuron: dropout on down(x); rank: a (batch, r) keep-mask on down(x), scaled by 1/(1-p); module: with
    probability p per call the module adds nothing.
    """
    def on_down(part: nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        if not part.training:
            return out
        if neuron:
            out = nn.functional.dropout(out, p=neuron)
        if rank:
            keep = (torch.rand(out.shape[0], out.shape[-1] if out.dim() != 4 else out.shape[1],
                               device=out.device) > rank).to(out.dtype) / (1.0 - rank)
            if out.dim() == 3:
                keep = keep.unsqueeze(1)
            elif out.dim() == 4:
                keep = keep[:, :, None, None]
            out = out * keep
        return out

    def on_up(part: nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        if part.training and torch.rand(1).item() < module:
            return out * 0.0
        return out

    if neuron or rank:
        layer.lora_A[adapter].register_forward_hook(on_down)
    if module:
        layer.lora_B[adapter].register_forward_hook(on_up)


def inject(models: Mapping[Component, nn.Module], specs: list[ModuleSpec], cfg: NetworkConfig) -> LoraHandles:
    """Add the adapter with these modules (and cfg's dropouts) to the models; returns the handles."""
    for component, model in models.items():
        own = [s for s in specs if s.component == component]
        if not own:
            continue
        model.add_adapter(_lora_config(own), adapter_name=ADAPTER_NAME)
        for _, layer in lora_layers(model, ADAPTER_NAME):
            _add_dropouts(layer, ADAPTER_NAME, cfg.network_dropout, cfg.lora.rank_dropout, cfg.lora.module_dropout)
    used = {c: m for c, m in models.items() if any(s.component == c for s in specs)}
    handles = LoraHandles(models=used, specs={s.name: s for s in specs})
    handles.train(True)
    return handles


def apply_lora(unet: nn.Module, te1: nn.Module, te2: nn.Module, cfg: NetworkConfig) -> LoraHandles:
    """Freeze all three models, then add LoRA to those being trained; only LoRA weights train."""
    if cfg.rank < 1:
        raise ValueError(f"LoRA rank (--network_dim) must be >= 1, got {cfg.rank}")
    if not (cfg.train_unet or cfg.train_text_encoder):
        raise ValueError("nothing to train: both the U-Net and the text encoders are excluded")
    if cfg.network_dropout is not None and not 0.0 <= cfg.network_dropout < 1.0:
        raise ValueError(f"--network_dropout must be in [0, 1), got {cfg.network_dropout}")
    models: dict[Component, nn.Module] = {}
    if cfg.train_unet:
        models["unet"] = unet
    if cfg.train_text_encoder:
        models["te1"], models["te2"] = te1, te2
    for model in (unet, te1, te2):
        model.requires_grad_(False)
    specs = plan_modules(models, cfg)
    for component in models:
        if not any(s.component == component for s in specs):
            raise ValueError(f"{component}: no LoRA target modules (spec 3.1); check block_dims / lr weights")
    return inject(models, specs, cfg)
