"""Kohya-format LoRA state dicts (spec 3.2, 3.4) from and into the LoRA layers, and writing LoRA files.

Per module: `<kohya name>.lora_down.weight` (peft lora_A), `.lora_up.weight` (lora_B) and `.alpha`, a 0-dim
tensor holding the module's true lora_alpha (float32, int64 when it defaulted to the rank, or save_dtype when
given, as sd-scripts does).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdxl_lora.common.files import atomic_path
from sdxl_lora.network.keys import kohya_name, parse_kohya_name
from sdxl_lora.network.layer import LoraLayer
from sdxl_lora.network.lora import LoraHandles

DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


def _named_layers(handles: LoraHandles) -> dict[str, LoraLayer]:
    """Kohya module name -> LoRA layer, for every adapted module of every component."""
    named = {}
    for component in handles.models:
        for name, layer in handles.layers(component):
            if name in named:
                raise ValueError(f"two modules share the kohya name {name!r}")
            named[name] = layer
    return named


def alpha_tensor(handles: LoraHandles, name: str, layer: LoraLayer) -> torch.Tensor:
    """The module's alpha as sd-scripts stores it (spec 3.4): int64 when it defaulted to the rank, else float32."""
    spec = handles.specs.get(name)
    if spec is not None and spec.int_alpha:
        return torch.tensor(spec.rank, dtype=torch.int64)
    return torch.tensor(float(layer.lora_alpha[handles.adapter_name]), dtype=torch.float32)


def _export(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    out = tensor.detach().to("cpu", copy=True)
    return (out if dtype is None else out.to(dtype)).contiguous()


def kohya_state_dict(
    handles: LoraHandles, *, save_dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The adapters as a kohya LoRA state dict, on CPU; weights in their training dtype unless save_dtype."""
    if hasattr(handles, "kohya_state_dict"):  # a LyCORIS network: its own tensors under kohya names
        return handles.kohya_state_dict(save_dtype)
    name_ = handles.adapter_name
    state: dict[str, torch.Tensor] = {}
    for name, layer in _named_layers(handles).items():
        state[name + DOWN] = _export(layer.lora_A[name_].weight, save_dtype)
        state[name + UP] = _export(layer.lora_B[name_].weight, save_dtype)
        state[name + ALPHA] = _export(alpha_tensor(handles, name, layer), save_dtype)
    return state


def _canonical(key: str) -> tuple[str, str] | None:
    """(our kohya module name, suffix) of a file key, or None when the key is not a kohya LoRA key."""
    suffix = next((s for s in (DOWN, UP, ALPHA) if key.endswith(s)), None)
    if suffix is None:
        return None
    try:
        component, path = parse_kohya_name(key[: -len(suffix)])
        return kohya_name(component, path), suffix
    except KeyError:
        return None


def _check_alpha(name: str, layer: LoraLayer, adapter: str, value: torch.Tensor) -> str | None:
    ours = torch.tensor(float(layer.lora_alpha[adapter]), dtype=torch.float32).to(value.dtype)
    if value.numel() == 1 and torch.equal(value.reshape(()).cpu(), ours):
        return None
    return f"{name}{ALPHA}: file has {value.reshape(-1)[:1].tolist()}, the network has {float(ours)}"


def _plan(handles: LoraHandles, state_dict: dict[str, torch.Tensor]) -> tuple[list, list[str]]:
    """Pair each file tensor with its destination; collect every problem (unknown, missing, shape, alpha)."""
    named, adapter = _named_layers(handles), handles.adapter_name
    copies, problems, seen = [], [], set()
    for key, value in state_dict.items():
        parsed = _canonical(key)
        if parsed is None or parsed[0] not in named:
            problems.append(f"unknown key {key}")
            continue
        name, suffix = parsed
        seen.add(name + suffix)
        layer = named[name]
        if suffix == ALPHA:
            problems.append(_check_alpha(name, layer, adapter, value))
            continue
        param = (layer.lora_A if suffix == DOWN else layer.lora_B)[adapter].weight
        if tuple(value.shape) != tuple(param.shape):
            problems.append(f"{key}: shape {tuple(value.shape)} in the file, "
                            f"{tuple(param.shape)} in the network")
        copies.append((param, value))
    missing = [n + s for n in named for s in (DOWN, UP, ALPHA) if n + s not in seen]
    problems += [f"missing key {k}" for k in missing]
    return copies, [p for p in problems if p]


def load_kohya_into(handles: LoraHandles, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a kohya LoRA state dict into the adapters; raise listing every unknown/missing/mismatched key.

    U-Net names may be in SGM or diffusers layout. Alphas must equal the network's (the scale is fixed when
    the adapter is built), so a file trained with another alpha is refused, not loaded at a wrong scale.
    """
    copies, problems = _plan(handles, state_dict)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"LoRA weights do not fit the network ({len(problems)} problems):\n  {shown}{more}")
    with torch.no_grad():
        for param, value in copies:
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def save_lora_file(
    path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write a LoRA file whole or not at all (temporary name, then renamed into place).

    `.safetensors` carries the metadata; any other suffix (`.ckpt`, `.pt`) is a pickled state dict of the same
    keys without metadata, as sd-scripts writes it (spec 1.10), readable with `torch.load(weights_only=True)`.
    """
    path = Path(path)
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    if path.suffix.lower() != ".safetensors":
        if metadata:
            raise ValueError(f"{path.name}: a pickled LoRA file holds no metadata; pass none")
        with atomic_path(path) as tmp:
            torch.save(tensors, tmp)
        return path
    bad = [k for k, v in (metadata or {}).items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be str; not so for {bad}")
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path
