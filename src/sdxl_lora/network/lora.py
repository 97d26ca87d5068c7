"""LoRA on sd-scripts' targets (spec 3.1), with its ranks, alphas, scale, init and dropouts (3.5, 3.6).

Targets: every Linear / Conv2d inside a module whose class name is a target. U-Net: Transformer2DModel (722
modules on SDXL base); with conv LoRA (conv_dim or conv_block_dims) also ResnetBlock2D / Downsample2D /
Upsample2D. Text encoders: CLIPAttention / CLIPMLP. Linear and 1x1 convs take the linear rank, larger kernels
the conv rank (skipped without one); per-block values (block_dims, conv_block_dims) replace them on the U-Net,
and a block whose LR weight is 0 gets no modules. A rank of 0 means no module; an alpha of 0 means alpha = rank.

Each target is replaced in its parent by the lean LoraLayer of network/layer.py (scale = alpha / rank per
module, sd-scripts' init), which keeps peft's attribute names (lora_A / lora_B / scaling per adapter name).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from torch import nn

from sdxl_lora.common.sdxl_layout import block_index, diffusers_to_sgm
from sdxl_lora.config.network_args import NUM_BLOCKS
from sdxl_lora.config.schema import NetworkConfig
from sdxl_lora.network.keys import Component, kohya_name
from sdxl_lora.network.layer import ADAPTER_NAME, Dropouts, LoraLayer

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
    """Adapter name of the lora_A / lora_B entries inside each layer (peft's default name)."""

    def parameters(self, component: Component) -> list[nn.Parameter]:
        """The LoRA parameters (down, up per layer) of one component; empty when it has no adapter."""
        return [p for _, layer in self.layers(component) for ab in (layer.lora_A, layer.lora_B)
                for p in ab[self.adapter_name].parameters()]

    def layers(self, component: Component) -> list[tuple[str, LoraLayer]]:
        """(kohya name, LoRA layer) of one component's modules, in model order."""
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
                layer.train(mode)


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
    """(module path, LoRA layer) for every layer that holds the adapter, in model order."""
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


def inject(models: Mapping[Component, nn.Module], specs: list[ModuleSpec], cfg: NetworkConfig) -> LoraHandles:
    """Replace each planned Linear / Conv2d by a LoraLayer around it (with cfg's dropouts); returns the handles.

    Layers are created in model order whatever the order of `specs`, so a seed gives the same initial weights.
    """
    dropouts = Dropouts(cfg.network_dropout, cfg.lora.rank_dropout, cfg.lora.module_dropout)
    for component, model in models.items():
        own = {s.path: s for s in specs if s.component == component}
        found = [(path, module) for path, module in model.named_modules() if path in own]
        missing = sorted(set(own) - {path for path, _ in found})
        if missing:
            raise ValueError(f"{component}: no module at {missing[:5]} for LoRA")
        for path, module in found:
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                raise ValueError(f"{component}: {path} is a {type(module).__name__}, LoRA needs a Linear or Conv2d")
            parent, _, child = path.rpartition(".")
            spec = own[path]
            setattr(model.get_submodule(parent), child, LoraLayer(module, spec.rank, spec.alpha, dropouts))
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
