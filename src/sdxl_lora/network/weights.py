"""LoRA files as input: --network_weights, --dim_from_weights, --base_weights, and --scale_weight_norms (spec 3.8,
3.10).

Accepted files: kohya (.safetensors, or a torch pickle .ckpt/.pt; U-Net names in SGM or diffusers layout) and
diffusers/peft files (`unet.<path>.lora_A.weight`, `text_encoder.` / `text_encoder_2.` prefixes; alphas from the
`lora_adapter_metadata` header, else alpha = rank as diffusers reads them), or a folder holding
pytorch_lora_weights.safetensors. Everything is turned into kohya names first, so one code path follows.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from sdxl_lora.network.keys import Component, kohya_name, parse_kohya_name
from sdxl_lora.network.kohya import ALPHA, DOWN, UP
from sdxl_lora.network.lora import LoraHandles, ModuleSpec

log = logging.getLogger(__name__)

DIFFUSERS_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
DIFFUSERS_PREFIX = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}
PEFT_SUFFIXES = {".lora_A.weight": DOWN, ".lora_B.weight": UP, ".lora_A.default.weight": DOWN,
                 ".lora_B.default.weight": UP}


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a LoRA file (or a diffusers LoRA folder)."""
    path = Path(path)
    if path.is_dir():
        found = next((path / n for n in DIFFUSERS_FILES if (path / n).is_file()), None)
        if found is None:
            raise ValueError(f"{path}: a LoRA folder must hold one of {', '.join(DIFFUSERS_FILES)}")
        path = found
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a LoRA state dict")
    return state, {}


def _module_name(key: str) -> tuple[str, str] | None:
    """(kohya module name, kohya suffix) of a kohya key in either U-Net layout; None for other keys."""
    suffix = next((s for s in (DOWN, UP, ALPHA) if key.endswith(s)), None)
    if suffix is None:
        return None
    try:
        return kohya_name(*parse_kohya_name(key[: -len(suffix)])), suffix
    except KeyError:
        return None


def _peft_alpha(meta: dict, prefix: str, path: str, rank: int) -> float:
    """The alpha diffusers would give this module: alpha_pattern, else lora_alpha, else the rank."""
    from peft.utils.other import get_pattern_key

    patterns = meta.get(f"{prefix}.alpha_pattern") or {}
    key = get_pattern_key(list(patterns), path)
    if key in patterns:
        return float(patterns[key])
    alpha = meta.get(f"{prefix}.lora_alpha")
    return float(alpha) if alpha is not None else float(rank)


def _from_peft(state: dict[str, torch.Tensor], metadata: dict[str, str], unknown: list[str]) -> dict:
    meta = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        suffix = next((s for s in PEFT_SUFFIXES if key.endswith(s)), None)
        prefix, _, path = key.partition(".")
        if suffix is None or prefix not in DIFFUSERS_PREFIX:
            unknown.append(key)
            continue
        path = path[: -len(suffix)]
        try:
            name = kohya_name(DIFFUSERS_PREFIX[prefix], path)
        except KeyError:
            unknown.append(key)
            continue
        out[name + PEFT_SUFFIXES[suffix]] = value
        if PEFT_SUFFIXES[suffix] == DOWN:
            out[name + ALPHA] = torch.tensor(_peft_alpha(meta, prefix, path, value.shape[0]))
    return out


def to_kohya(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Any accepted layout -> kohya SGM keys; also the keys that name no SDXL LoRA module."""
    unknown: list[str] = []
    if any(k.endswith(tuple(PEFT_SUFFIXES)) for k in state):
        return _from_peft(state, metadata, unknown), unknown
    out = {}
    for key, value in state.items():
        parsed = _module_name(key)
        if parsed is None:
            unknown.append(key)
        else:
            out[parsed[0] + parsed[1]] = value
    return out, unknown


def read_kohya(path: str | Path) -> dict[str, torch.Tensor]:
    """A LoRA file as kohya SGM keys; a file with no SDXL LoRA key at all is refused."""
    state, unknown = to_kohya(*read_lora(path))
    if not any(k.endswith(DOWN) for k in state):
        raise ValueError(f"{path}: no SDXL LoRA module found ({len(unknown)} keys, e.g. {unknown[:3]})")
    if unknown:
        log.warning("%s: %d keys name no SDXL LoRA module and are ignored, e.g. %s", path, len(unknown),
                    ", ".join(unknown[:5]))
    return state


def _alpha(state: dict, name: str, rank: int) -> tuple[float, bool]:
    """(alpha, defaulted to the rank) of one module of a kohya state dict."""
    value = state.get(name + ALPHA)
    if value is None or float(value) == 0:
        return float(rank), True
    return float(value), not value.dtype.is_floating_point


def specs_from_weights(state: dict[str, torch.Tensor], components: tuple[Component, ...]) -> list[ModuleSpec]:
    """--dim_from_weights: one module per `X.lora_down.weight`, rank = its first dimension, alpha = `X.alpha`."""
    specs = []
    for key, value in state.items():
        if not key.endswith(DOWN):
            continue
        name = key[: -len(DOWN)]
        component, path = parse_kohya_name(name)
        if component in components:
            alpha, int_alpha = _alpha(state, name, value.shape[0])
            specs.append(ModuleSpec(component, path, value.shape[0], alpha, int_alpha))
    return specs


def load_weights(handles: LoraHandles, state: dict[str, torch.Tensor], source: str) -> LoraHandles:
    """Copy a kohya state dict into the network (non-strict, as sd-scripts); the file's alphas replace the
    network's, so the module trains and saves at the file's scale. Shape mismatches are errors."""
    layers = {n: layer for c in handles.models for n, layer in handles.layers(c)}
    adapter, specs = handles.adapter_name, dict(handles.specs)
    problems, loaded = [], set()
    with torch.no_grad():
        for name, layer in layers.items():
            for suffix, part in ((DOWN, layer.lora_A), (UP, layer.lora_B)):
                value = state.get(name + suffix)
                if value is None:
                    continue
                weight = part[adapter].weight
                if tuple(value.shape) != tuple(weight.shape):
                    problems.append(f"{name}{suffix}: {tuple(value.shape)} in the file, {tuple(weight.shape)} "
                                    "in the network (use --dim_from_weights to take ranks from the file)")
                    continue
                weight.copy_(value.to(weight.dtype))
                loaded.add(name)
            if name in loaded:
                alpha, int_alpha = _alpha(state, name, layer.r[adapter])
                layer.lora_alpha[adapter], layer.scaling[adapter] = alpha, alpha / layer.r[adapter]
                specs[name] = replace(specs[name], alpha=alpha, int_alpha=int_alpha)
    if problems:
        raise ValueError(f"--network_weights {source}: " + "; ".join(problems[:10]))
    extra = sorted({k.rsplit(".", 2 if k.endswith(".weight") else 1)[0] for k in state} - set(layers))
    log.info("--network_weights %s: %d of %d modules loaded; %d modules of the file are not in the network%s",
             source, len(loaded), len(layers), len(extra), f" (e.g. {extra[:3]})" if extra else "")
    return replace(handles, specs=specs)


def delta_weight(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """up @ down in the layer's weight shape: Linear, 1x1 conv, or the composite k x k kernel (spec 3.8)."""
    down, up = down.float(), up.float()
    if down.dim() == 2:
        return up @ down
    if down.shape[2:] == (1, 1):
        return (up.flatten(1) @ down.flatten(1))[:, :, None, None]
    # delta[o, i, :, :] = sum_r up[o, r] * down[r, i, :, :]
    return torch.einsum("or,rikl->oikl", up.flatten(1), down)


def merge_into(models: dict[Component, nn.Module], state: dict[str, torch.Tensor], multiplier: float,
               source: str) -> int:
    """--base_weights: W += multiplier * alpha / rank * delta, in float32, written back in W's dtype."""
    merged = 0
    for key, down in state.items():
        if not key.endswith(DOWN):
            continue
        name = key[: -len(DOWN)]
        component, path = parse_kohya_name(name)
        model = models.get(component)
        module = model.get_submodule(path) if model is not None else None
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"--base_weights {source}: {name} is not a Linear/Conv2d of this SDXL")
        alpha, _ = _alpha(state, name, down.shape[0])
        delta = delta_weight(down, state[name + UP]) * (multiplier * alpha / down.shape[0])
        with torch.no_grad():
            weight = module.weight
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
        merged += 1
    return merged


def max_norm_regularize(handles: LoraHandles, max_norm: float) -> tuple[int, float, float]:
    """--scale_weight_norms (spec 3.10): scale up and down by sqrt(ratio) where ||alpha/r * delta|| > max_norm.

    Returns (modules scaled, mean and max of the norms after scaling)."""
    if hasattr(handles, "max_norm_regularize"):  # a LyCORIS network: LyCORIS' own per-module max-norm
        return handles.max_norm_regularize(max_norm)
    adapter, norms, scaled = handles.adapter_name, [], 0
    with torch.no_grad():
        for component in handles.models:
            for _, layer in handles.layers(component):
                down, up = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
                norm = (delta_weight(down, up) * layer.scaling[adapter]).norm().item()
                clamped = max(norm, max_norm / 2)
                ratio = min(clamped, max_norm) / clamped
                if ratio != 1:
                    scaled += 1
                    down.mul_(math.sqrt(ratio))
                    up.mul_(math.sqrt(ratio))
                norms.append(norm * ratio)
    return scaled, sum(norms) / max(1, len(norms)), max(norms, default=0.0)
