"""Load the frozen SDXL parts from `--pretrained_model_name_or_path` and `--vae` (spec 1.2, 5.9).

The source kind is decided up front by `detect_source` (a diffusers folder, a single file, or a hub id taken
from the local cache only), so a bad path fails in one line before any weight is read. Every component is
materialized once, in the dtype `place_models` will give it (precision.py) and, with --lowram, on the device.
Heavy imports (diffusers, transformers models) happen inside the functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.schema import ModelConfig
from sdxl_lora.config.sources import FLAG, SINGLE_FILE_SUFFIXES, detect_source
from sdxl_lora.models.errors import ModelLoadError
from sdxl_lora.models.folder import load_component
from sdxl_lora.models.hub import resolve_cached
from sdxl_lora.models.phases import loading
from sdxl_lora.models.precision import load_dtypes, plan_placement
from sdxl_lora.models.single_file import read_single_file, read_vae_file

__all__ = ["ModelLoadError", "SdxlModels", "detect_source", "load_sdxl", "load_unet", "load_vae",
           "training_noise_scheduler"]

logger = logging.getLogger(__name__)
TOKENIZER_2_PAD = "!"  # OpenCLIP pads with id 0, which is "!" in CLIP's vocabulary
VAE_FLAG = "--vae"
COMPONENTS_BUT_VAE = ("unet", "te1", "te2")


@dataclass
class SdxlModels:
    """Everything sd-scripts loads for SDXL LoRA training; all weights frozen, in eval mode."""

    unet: Any
    """diffusers UNet2DConditionModel; None until `load_unet` when load_sdxl was asked for no U-Net."""
    vae: Any
    """diffusers AutoencoderKL."""
    text_encoder_1: Any
    """transformers CLIPTextModel (CLIP ViT-L)."""
    text_encoder_2: Any
    """transformers CLIPTextModelWithProjection (OpenCLIP ViT-bigG)."""
    tokenizer_1: Any
    """CLIPTokenizer padding with <|endoftext|>."""
    tokenizer_2: Any
    """CLIPTokenizer padding with "!" (id 0)."""
    noise_scheduler: Any
    """DDPMScheduler with sd-scripts' training schedule (spec 5.1)."""


def load_sdxl(cfg: ModelConfig, device: torch.device | str | None = None, unet: bool = True) -> SdxlModels:
    """Load U-Net, VAE, both text encoders, both tokenizers and the training noise scheduler; with unet=False
    all but the U-Net (a training run loads it with `load_unet` once latents and text outputs are cached and the
    frozen encoders are released, so that the host never holds all four models).

    Weights come in their final dtypes (precision.load_dtypes); on CPU, or on `device` with --lowram.
    """
    dtypes, target = _destination(cfg, device)
    if cfg.clip_skip is not None:
        logger.warning("--clip_skip %s: SDXL conditioning ignores it, as sd-scripts does; it is only recorded "
                       "in the LoRA metadata", cfg.clip_skip)
    kind = detect_source(cfg.pretrained_model_name_or_path)
    wanted = (COMPONENTS_BUT_VAE if unet else COMPONENTS_BUT_VAE[1:]) + (() if cfg.vae else ("vae",))
    parts = _components(cfg, kind, wanted, dtypes, target)
    try:
        tokenizers = _offline_tokenizers() if kind == "single_file" else \
            _folder_tokenizers(_diffusers_root(cfg.pretrained_model_name_or_path, kind))
    except ModelLoadError as err:
        raise err.for_flag(FLAG) from None
    if cfg.vae:
        with loading("vae"):
            parts["vae"] = load_vae(cfg.vae, dtypes["vae"], target, mmap=not cfg.disable_mmap_load_safetensors)
    return SdxlModels(unet=parts.get("unet"), vae=parts["vae"], text_encoder_1=parts["te1"],
                      text_encoder_2=parts["te2"], tokenizer_1=tokenizers[0], tokenizer_2=tokenizers[1],
                      noise_scheduler=training_noise_scheduler())


def load_unet(cfg: ModelConfig, device: torch.device | str | None = None):
    """The U-Net alone, as load_sdxl would have loaded it (dtype, --lowram device)."""
    dtypes, target = _destination(cfg, device)
    return _components(cfg, detect_source(cfg.pretrained_model_name_or_path), ("unet",), dtypes, target)["unet"]


def _destination(cfg: ModelConfig, device: torch.device | str | None) -> tuple[dict[str, torch.dtype], torch.device]:
    """Each component's load dtype (precision.load_dtypes), and where weights are materialized: the CPU, or the
    device with --lowram."""
    placement = plan_placement(cfg, device or "cpu")
    return load_dtypes(placement), placement.device if cfg.lowram else torch.device("cpu")


def _components(cfg: ModelConfig, kind: str, wanted: tuple[str, ...], dtypes, target) -> dict[str, Any]:
    """component -> frozen model from --pretrained_model_name_or_path; errors name the flag."""
    try:
        if kind == "single_file":
            return read_single_file(Path(cfg.pretrained_model_name_or_path).expanduser(), dtypes=dtypes,
                                    device=target, mmap=not cfg.disable_mmap_load_safetensors, components=wanted)
        root, parts = _diffusers_root(cfg.pretrained_model_name_or_path, kind), {}
        for c in wanted:
            with loading(c):
                parts[c] = load_component(root, c, dtypes[c], target)
        return parts
    except ModelLoadError as err:
        raise err.for_flag(FLAG) from None


def _diffusers_root(source: str, kind: str) -> Path:
    if kind == "diffusers_dir":
        return Path(source).expanduser().resolve()
    root = resolve_cached(source)
    if not (root / "model_index.json").is_file():
        raise ModelLoadError(f"{source}: its cached snapshot {root} has no model_index.json (not a diffusers SDXL)")
    return root


def load_vae(spec: str, dtype: torch.dtype, device: torch.device | str = "cpu", mmap: bool = True):
    """--vae: a .safetensors/.ckpt file (VAE-only or full SDXL), a diffusers folder (with or without vae/),
    or a cached hub id. Raises ModelLoadError naming --vae."""
    path = Path(spec).expanduser()
    try:
        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelLoadError(f"{spec}: not a checkpoint (expected {', '.join(SINGLE_FILE_SUFFIXES)})")
            return read_vae_file(path, dtype, device, mmap)
        if path.is_dir():
            return _vae_from_folder(path, spec, dtype, device)
        if _is_hub_id(spec):
            return _vae_from_folder(resolve_cached(spec), spec, dtype, device)
        raise ModelLoadError(f"{spec}: no such file or folder, and not a hub id (owner/name)")
    except ModelLoadError as err:
        raise err.for_flag(VAE_FLAG) from None


def _is_hub_id(spec: str) -> bool:
    try:
        return detect_source(spec) == "hub_id"  # only reached for a path that is neither a file nor a folder
    except ConfigError:
        return False


def _vae_from_folder(folder: Path, spec: str, dtype: torch.dtype, device: torch.device | str):
    for subfolder in ("", "vae"):
        if (folder / subfolder / "config.json").is_file():
            return load_component(folder, "vae", dtype, device, subfolder=subfolder)
    raise ModelLoadError(f"{spec}: folder has neither config.json nor vae/config.json (not a diffusers VAE)")


def training_noise_scheduler():
    """sd-scripts' DDPM schedule: 1000 steps, scaled_linear betas 0.00085..0.012, no clipping (spec 5.1)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False)


def _offline_tokenizers():
    from sdxl_lora.models.tokenizers import clip_tokenizers

    return clip_tokenizers()


def _folder_tokenizers(root: Path):
    from transformers import CLIPTokenizer

    def load(subfolder: str, **kwargs):
        try:
            return CLIPTokenizer.from_pretrained(root, subfolder=subfolder, local_files_only=True, **kwargs)
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"{root}: cannot load {subfolder}/: {reason}") from err

    tok1, tok2 = load("tokenizer"), load("tokenizer_2", pad_token=TOKENIZER_2_PAD)
    if tok2.pad_token_id != 0:
        raise ModelLoadError(f"{root}: tokenizer_2's pad '!' has id {tok2.pad_token_id}, expected 0")
    return tok1, tok2
