"""The diffusers LoRA layout (`--save_model_as diffusers_safetensors`): peft keys under `unet.`, `text_encoder.`
and `text_encoder_2.`, with each model's LoraConfig in the `lora_adapter_metadata` header, so that
`StableDiffusionXLPipeline.load_lora_weights(folder)` rebuilds every module with its own rank and alpha
(environment.md 6: without that header diffusers would take alpha = rank).

A `.bin` (pickle) file cannot carry the header, so `--save_model_as diffusers` (pickle) is refused in config:
diffusers would load every module at alpha = rank.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sdxl_lora.common.files import atomic_folder
from sdxl_lora.network.lora import LoraHandles, ModuleSpec, lora_layers

LORA_PARTS = (".base_layer", ".lora_A", ".lora_B")  # the LoRA layer's own submodules
PREFIX = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _export(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    out = tensor.detach().to("cpu", copy=True)
    return (out if dtype is None else out.to(dtype)).contiguous()


def diffusers_state_dict(handles: LoraHandles, save_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """`<prefix>.<module path>.lora_A.weight` / `.lora_B.weight` for every module, on the CPU."""
    adapter, state = handles.adapter_name, {}
    for component, model in handles.models.items():
        for path, layer in lora_layers(model, adapter):
            state[f"{PREFIX[component]}.{path}.lora_A.weight"] = _export(layer.lora_A[adapter].weight, save_dtype)
            state[f"{PREFIX[component]}.{path}.lora_B.weight"] = _export(layer.lora_B[adapter].weight, save_dtype)
    return state


def _pattern(paths: list[str]) -> str:
    """A peft rank/alpha pattern that matches exactly these module paths (peft anchors it at the end)."""
    return "^(?:" + "|".join(re.escape(p) for p in paths) + ")"


def _minimal_targets(paths: list[str], model: nn.Module) -> list[str] | set[str]:
    """The target list as peft stores it after add_adapter: from 20 targets on, the fewest module-name suffixes
    that match exactly these modules (peft's own helper), so the header is the one peft wrote before."""
    try:
        from peft.tuners.tuners_utils import _find_minimal_target_modules
        from peft.utils.constants import MIN_TARGET_MODULES_FOR_OPTIMIZATION
    except ImportError:  # another peft: the full list loads the same modules
        return paths
    if len(paths) < MIN_TARGET_MODULES_FOR_OPTIMIZATION:
        return paths
    ends = tuple("." + p for p in paths)
    targets = set(paths)
    others = [n for n, _ in model.named_modules() if n not in targets and not n.endswith(ends)
              and not n.endswith(LORA_PARTS) and ".lora_A." not in n and ".lora_B." not in n]
    minimal = _find_minimal_target_modules(paths, others)
    return minimal if len(minimal) < len(paths) else paths


def lora_config(specs: list[ModuleSpec], model: nn.Module):
    """The peft LoraConfig diffusers rebuilds these modules from, as diffusers' / transformers' add_adapter
    records it: the most common rank/alpha as defaults, the others as rank_pattern / alpha_pattern."""
    from peft import LoraConfig

    rank = Counter(s.rank for s in specs).most_common(1)[0][0]
    alpha = Counter(s.alpha for s in specs).most_common(1)[0][0]
    by_rank: dict[int, list[str]] = {}
    by_alpha: dict[float, list[str]] = {}
    for s in specs:
        if s.rank != rank:
            by_rank.setdefault(s.rank, []).append(s.path)
        if s.alpha != alpha:
            by_alpha.setdefault(s.alpha, []).append(s.path)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=True,
                        target_modules=_minimal_targets([s.path for s in specs], model),
                        rank_pattern={_pattern(p): r for r, p in by_rank.items()},
                        alpha_pattern={_pattern(p): a for a, p in by_alpha.items()})
    # transformers' add_adapter records the model's name_or_path; diffusers' records None
    config.base_model_name_or_path = model.__dict__.get("name_or_path", None)
    return config


def adapter_metadata(handles: LoraHandles) -> str:
    """The `lora_adapter_metadata` header value: each model's LoraConfig under its prefix, as diffusers writes it."""
    packed = {}
    for component, model in handles.models.items():
        specs = [s for s in handles.specs.values() if s.component == component]
        for key, value in lora_config(specs, model).to_dict().items():
            packed[f"{PREFIX[component]}.{key}"] = sorted(value) if isinstance(value, set) else value
    return json.dumps(packed, indent=2, sort_keys=True, default=str)


def save_diffusers_folder(folder: str | Path, handles: LoraHandles, *, save_dtype: torch.dtype | None,
                          metadata: dict[str, str] | None = None) -> Path:
    """Write `folder/pytorch_lora_weights.safetensors` with the adapter header and `metadata`; the folder appears
    whole. A previous save of the same name (a folder holding only that file) is replaced."""
    folder = Path(folder)
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {WEIGHT_NAME}:
        shutil.rmtree(folder)
    state = diffusers_state_dict(handles, save_dtype)
    header = {**(metadata or {}), "format": "pt", "lora_adapter_metadata": adapter_metadata(handles)}
    with atomic_folder(folder) as tmp:
        save_file(state, tmp / WEIGHT_NAME, metadata=header)
    return folder
