"""Where each frozen model lives and in which dtype, per precision flag (spec 1.2, 5.9).

weight dtype W = float32 / float16 / bfloat16 for --mixed_precision no / fp16 / bf16.

| component      | default | --no_half_vae | --fp8_base_unet              | --fp8_base                          |
|----------------|---------|---------------|------------------------------|-------------------------------------|
| U-Net          | W       | W             | float8_e4m3fn, computes in W | float8_e4m3fn, computes in W        |
| text encoders  | W       | W             | W                            | float8_e4m3fn, computes in W; token |
|                |         |               |                              | and position embeddings stay W      |
| VAE            | W       | float32       | W                            | W                                   |
| LoRA (network) | float32; W with --full_fp16 / --full_bf16 (in every column)                                   |

fp8 storage (fp8.py): every Linear/Conv2d keeps its weights in float8_e4m3fn and computes in W; norms and
embeddings stay in W, and so does the U-Net's conv_in (11.5k weights), because diffusers reports a model's dtype
as that of its first parameter and pipelines cast latents to it. (diffusers' layerwise casting cannot be used:
its backward pass fails, see fp8.py.)
Everything goes to `device` (the loader already put it there with --lowram). In a training run the U-Net goes
last (`defer_unet`, then `place_unet` after latents and text outputs are cached): while they are encoded only the
VAE and the text encoders are on the device (sd-scripts does this too), so caching is no longer the peak of a
run (at 1024 px with checkpointing it was about 8.5 GiB against 6.5 GiB while training). Unless --base_weights
are merged into it first, the U-Net is even loaded only then (`load_unet`), after the frozen encoders and VAE
were released, so the host never holds all four (full-size SDXL in float32: peak 13.5 -> 10.x GiB). The deferred
U-Net gets its final dtype (fp8 storage included) where it was loaded, and reaches the device already that small.
`load_sdxl` materializes weights straight in these dtypes (fp8 parts in W), so placing costs no extra copy of a
model.

The LoRA layer (network/layer.py) creates its weights in its base layer's `compute_dtype` when it has one, else
in the base's weight dtype (as peft does). place_models sets `compute_dtype` = the network dtype on every frozen
Linear/Conv, so LoRA weights injected afterwards are created and initialised directly in float32 (or W with
--full_fp16/--full_bf16), never rounded through fp8 or half precision, as sd-scripts' separate network module is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sdxl_lora.common.dtypes import dtype_named
from sdxl_lora.config.schema import ModelConfig
from sdxl_lora.models.fp8 import FP8, store_in_fp8

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # the layer types LoRA (or peft) may wrap
UNET_KEEP = ("conv_in",)  # stays in W with fp8, so unet.dtype reports W (module docstring)


@dataclass(frozen=True)
class Placement:
    """The dtypes and device each frozen part was given; the training loop reads it."""

    device: torch.device
    """Where every model is (the U-Net once `place_unet` moved it, when place_models deferred it)."""
    weight_dtype: torch.dtype
    """W: the dtype frozen models compute in; latents and conditioning are cast to it."""
    unet_dtype: torch.dtype
    """U-Net weight storage: W, or float8_e4m3fn with --fp8_base/--fp8_base_unet."""
    text_encoder_dtype: torch.dtype
    """Text encoder weight storage: W, or float8_e4m3fn with --fp8_base."""
    vae_dtype: torch.dtype
    """VAE dtype: W, or float32 with --no_half_vae."""
    network_dtype: torch.dtype
    """LoRA weights: float32, or W with --full_fp16/--full_bf16."""
    highvram: bool = False
    """--highvram: the loop skips device cache clearing."""

    @property
    def unet_fp8(self) -> bool:
        return self.unet_dtype == FP8

    @property
    def text_encoders_fp8(self) -> bool:
        return self.text_encoder_dtype == FP8


def plan_placement(cfg: ModelConfig, device: torch.device | str = "cpu") -> Placement:
    """The placement the flags ask for (the table in the module docstring); no model is touched."""
    weight = dtype_named(cfg.mixed_precision)
    return Placement(
        device=torch.device(device),
        weight_dtype=weight,
        unet_dtype=FP8 if cfg.fp8_base or cfg.fp8_base_unet else weight,
        text_encoder_dtype=FP8 if cfg.fp8_base and not cfg.fp8_base_unet else weight,
        vae_dtype=torch.float32 if cfg.no_half_vae else weight,
        network_dtype=weight if cfg.full_fp16 or cfg.full_bf16 else torch.float32,
        highvram=cfg.highvram,
    )


def load_dtypes(placement: Placement) -> dict[str, torch.dtype]:
    """The dtype the loader materializes each component in: its final one, W where it will be stored in fp8."""
    def materialized(dtype: torch.dtype) -> torch.dtype:
        return placement.weight_dtype if dtype == FP8 else dtype

    te = materialized(placement.text_encoder_dtype)
    return {"unet": materialized(placement.unet_dtype), "vae": placement.vae_dtype, "te1": te, "te2": te}


def place_models(models, cfg: ModelConfig, device: torch.device | str, defer_unet: bool = False) -> Placement:
    """Freeze the U-Net, VAE and both text encoders and give each its dtype and device; call before LoRA.
    `defer_unet`: the U-Net (loaded or not yet, models.unet None) is left alone for `place_unet`, after caching."""
    placement = plan_placement(cfg, device)
    encoders = (models.text_encoder_1, models.text_encoder_2)
    for model in (models.vae, *encoders):
        model.requires_grad_(False)
        model.eval()
    move(models.vae, placement.device, placement.vae_dtype)
    for encoder in encoders:
        _place(encoder, placement.text_encoder_dtype, placement)
    if not defer_unet:
        place_unet(models.unet, placement)
    return placement


def place_unet(unet: nn.Module, placement: Placement) -> None:
    """Freeze the U-Net, give it its dtypes where it is (the host, or the device with --lowram; fp8 storage
    too), then move it to the device already that small."""
    unet.requires_grad_(False)
    unet.eval()
    _place(unet, placement.unet_dtype, placement, keep=UNET_KEEP, device=_device_of(unet))
    unet.to(placement.device)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _place(model: nn.Module, storage: torch.dtype, placement: Placement, keep: tuple[str, ...] = (),
           device: torch.device | None = None) -> None:
    move(model, placement.device if device is None else device, placement.weight_dtype)
    if storage == FP8:
        store_in_fp8(model, placement.weight_dtype, keep)
    mark_adapter_dtype(model, placement.network_dtype)


def move(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move to device; cast only when some weight is in another dtype (a loaded model usually is not)."""
    model.to(device)
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model.to(dtype=dtype)


def mark_adapter_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """Have LoRA weights for this model's layers created in `dtype` (see the module docstring)."""
    for module in model.modules():
        if isinstance(module, ADAPTABLE):
            module.compute_dtype = dtype
