"""Components of a diffusers folder (a local path or a resolved hub snapshot), loaded in a chosen dtype and device.

Each component is loaded straight into its final dtype (diffusers and transformers build it empty and fill it
from the weights file), onto the accelerator when `device` is one (--lowram). When a component has only fp16
weights (`*.fp16.safetensors`), or the target dtype is fp16 and they exist, the fp16 variant is used, as
sd-scripts tries it first for fp16 (spec 5.9).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdxl_lora.models.configs import SUBFOLDER
from sdxl_lora.models.errors import ModelLoadError

FP16 = "fp16"


def model_class(component: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "te1": CLIPTextModel,
            "te2": CLIPTextModelWithProjection}[component]


def _weight_files(folder: Path) -> list[Path]:
    return [p for pattern in ("*.safetensors", "*.bin") for p in folder.glob(pattern)]


def _variant(folder: Path, dtype: torch.dtype | None) -> str | None:
    files = _weight_files(folder)
    has_fp16 = any(f".{FP16}." in p.name for p in files)
    has_plain = any(f".{FP16}." not in p.name for p in files)
    return FP16 if has_fp16 and (not has_plain or dtype == torch.float16) else None


def stored_dtype(folder: Path, variant: str | None) -> torch.dtype:
    """The dtype the folder's .safetensors weights (of that variant) are stored in (float32 when it cannot tell)."""
    from safetensors import safe_open

    from sdxl_lora.models.checkpoint_io import SAFETENSORS_DTYPES

    for path in sorted(p for p in folder.glob("*.safetensors") if (f".{FP16}." in p.name) == (variant == FP16)):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                dtype = SAFETENSORS_DTYPES[f.get_slice(key).get_dtype()]
                if dtype.is_floating_point:
                    return dtype
    return torch.float32


def load_component(root: Path, component: str, dtype: torch.dtype | None, device: torch.device | None = None,
                   subfolder: str | None = None) -> torch.nn.Module:
    """One frozen model from `root/<subfolder>`; dtype None keeps the stored dtype; device None means CPU."""
    subfolder = SUBFOLDER[component] if subfolder is None else subfolder
    folder = root / subfolder if subfolder else root
    variant = _variant(folder, dtype)
    kwargs = {"torch_dtype": dtype or stored_dtype(folder, variant), "local_files_only": True, "variant": variant}
    if device is not None and torch.device(device).type != "cpu":
        kwargs["device_map"] = {"": torch.device(device)}
    try:
        model = model_class(component).from_pretrained(root, subfolder=subfolder or None, **kwargs)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{root}: cannot load {subfolder or 'it'}/: {reason}") from err
    model.requires_grad_(False)
    return model.eval()


def folder_configs(root: Path) -> dict[str, dict]:
    """The component configs of a diffusers folder, as JSON dicts."""
    configs = {}
    for component, subfolder in SUBFOLDER.items():
        path = root / subfolder / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"{root}: has no {subfolder}/config.json (not a diffusers SDXL folder)")
        configs[component] = json.loads(path.read_text("utf-8"))
    return configs
