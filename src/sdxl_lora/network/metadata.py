"""`ss_*`, `sshs_*` and `modelspec.*` metadata of a saved LoRA (spec 4), from plain values.

All values are strings, as sd-scripts writes them: str() of Python values ("None", "True", "(1024, 1024)"),
JSON for nested structures.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdxl_lora import __version__
from sdxl_lora.config.options import without_secrets

ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"
IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
BASE_MODEL_VERSION = "sdxl_base_v1-0"
# Options recorded verbatim as ss_<name> (spec 4.1).
_ARG_KEYS = (
    "output_name", "learning_rate", "unet_lr", "gradient_checkpointing", "gradient_accumulation_steps",
    "max_train_steps", "lr_warmup_steps", "lr_scheduler", "network_module", "network_dim", "network_alpha",
    "network_dropout", "mixed_precision", "full_fp16", "v2", "clip_skip", "max_token_length", "cache_latents",
    "seed", "lowram", "noise_offset", "multires_noise_iterations", "multires_noise_discount",
    "adaptive_noise_scale", "zero_terminal_snr", "training_comment", "max_grad_norm", "caption_dropout_rate",
    "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "face_crop_aug_range", "prior_loss_weight",
    "min_snr_gamma", "scale_weight_norms", "ip_noise_gamma", "noise_offset_random_strength",
    "ip_noise_gamma_random_strength", "loss_type", "huber_schedule", "huber_scale", "huber_c", "fp8_base",
    "fp8_base_unet", "validation_seed", "validation_split", "max_validation_steps", "validate_every_n_epochs",
    "validate_every_n_steps", "resize_interpolation",
)
_MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                 "ss_network_args")
_MODELSPEC_ARGS = ("description", "author", "license", "tags", "usage_hint", "thumbnail", "merged_from",
                   "trigger_phrase", "preprocessor", "is_negative_embedding")


@dataclass(frozen=True)
class RunFacts:
    """What the run computed, as opposed to what the user asked for."""

    session_id: int
    training_started_at: float
    num_train_images: int
    num_reg_images: int
    num_batches_per_epoch: int
    num_epochs: int
    optimizer: str
    text_encoder_lr: float | None
    datasets: list = field(default_factory=list)
    tag_frequency: dict = field(default_factory=dict)
    dataset_dirs: dict = field(default_factory=dict)
    reg_dataset_dirs: dict = field(default_factory=dict)
    num_processes: int = 1
    num_validation_images: int = 0


def effective_text_encoder_lr(lrs: tuple[float | None, float | None]) -> float | None:
    """ss_text_encoder_lr: sd-scripts has one text-encoder rate; ours are per encoder: the first one given."""
    return next((lr for lr in lrs if lr is not None), None)


def training_metadata(args: dict, facts: RunFacts) -> dict[str, str]:
    """The ss_* keys fixed for the whole run (spec 4.1); save-time keys are added by `at_save`."""
    args = without_secrets(args)
    meta = {f"ss_{k}": str(args.get(k)) for k in _ARG_KEYS}
    meta.update({
        "ss_session_id": str(facts.session_id),
        "ss_training_started_at": str(facts.training_started_at),
        "ss_text_encoder_lr": str(facts.text_encoder_lr),
        "ss_num_train_images": str(facts.num_train_images),
        "ss_num_validation_images": str(facts.num_validation_images),
        "ss_num_reg_images": str(facts.num_reg_images),
        "ss_num_batches_per_epoch": str(facts.num_batches_per_epoch),
        "ss_num_epochs": str(facts.num_epochs),
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_optimizer": facts.optimizer,
        "ss_debiased_estimation": str(bool(args.get("debiased_estimation_loss"))),
        "ss_sd_scripts_commit_hash": f"(sdxl-lora {__version__})",
        "ss_tag_frequency": json.dumps(facts.tag_frequency),
        "ss_dataset_dirs": json.dumps(facts.dataset_dirs),
        "ss_sd_model_name": _model_name(args.get("pretrained_model_name_or_path")),
    })
    if args.get("dataset_config"):
        meta["ss_datasets"] = json.dumps(facts.datasets)
    else:
        meta.update(_command_line_dataset(args, facts))
    if args.get("network_args"):
        meta["ss_network_args"] = network_args_json(args["network_args"], args.get("network_dropout"))
    if args.get("vae"):
        meta["ss_vae_name"] = _model_name(args["vae"])
    if args.get("no_metadata"):
        meta = {k: v for k, v in meta.items() if k in _MINIMUM_KEYS}
    return meta


def _command_line_dataset(args: dict, facts: RunFacts) -> dict[str, str]:
    """The dataset keys of a run without --dataset_config (spec 4.1): its one dataset, flat."""
    dataset = facts.datasets[0] if facts.datasets else {}
    batch = dataset.get("batch_size_per_device")
    total = batch * facts.num_processes * (args.get("gradient_accumulation_steps") or 1) if batch else None
    resolution = dataset.get("resolution")
    keys = {
        "ss_batch_size_per_device": batch, "ss_total_batch_size": total,
        "ss_resolution": tuple(resolution) if resolution else None,
        "ss_color_aug": bool(args.get("color_aug")), "ss_flip_aug": bool(args.get("flip_aug")),
        "ss_random_crop": bool(args.get("random_crop")), "ss_shuffle_caption": bool(args.get("shuffle_caption")),
        "ss_enable_bucket": bool(dataset.get("enable_bucket")),
        "ss_bucket_no_upscale": bool(args.get("bucket_no_upscale")),
        "ss_min_bucket_reso": dataset.get("min_bucket_reso"), "ss_max_bucket_reso": dataset.get("max_bucket_reso"),
        "ss_keep_tokens": args.get("keep_tokens"),
    }
    out = {k: str(v) for k, v in keys.items()}
    out.update({"ss_reg_dataset_dirs": json.dumps(facts.reg_dataset_dirs),
                "ss_bucket_info": json.dumps(dataset.get("bucket_info"))})
    return out


def at_save(base: dict[str, str], args: dict, *, steps: int, epoch: int, now: float,
            model_hashes: dict[str, str] | None = None) -> dict[str, str]:
    """Per-file keys: ss_steps, ss_epoch, ss_training_finished_at, the base-model hashes (computed in the
    background, network/hashes.py) and the modelspec.* block (spec 4.1, 4.3)."""
    meta = dict(base)
    if not args.get("no_metadata"):
        meta.update(model_hashes or {})
        meta.update({"ss_training_finished_at": str(now), "ss_steps": str(steps), "ss_epoch": str(epoch)})
    meta.update(modelspec(args, now))
    return meta


def modelspec(args: dict, now: float) -> dict[str, str]:
    """ModelSpec 1.0.1 keys for an SDXL LoRA."""
    args = without_secrets(args)
    title = args.get("metadata_title") or args.get("output_name") or f"LoRA@{now}"
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": ARCHITECTURE,
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.implementation_version": f"sdxl-lora/{__version__}",
        "modelspec.title": title,
        "modelspec.resolution": _resolution(args.get("resolution")),
        "modelspec.date": datetime.datetime.fromtimestamp(now).replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if args.get("v_parameterization") else "epsilon",
    }
    if args.get("min_timestep") is not None or args.get("max_timestep") is not None:
        spec["modelspec.timestep_range"] = f"{args.get('min_timestep') or 0},{args.get('max_timestep') or 1000}"
    if args.get("clip_skip") is not None:
        spec["modelspec.encoder_layer"] = str(args["clip_skip"])
    for key in _MODELSPEC_ARGS:
        if args.get(f"metadata_{key}") is not None:
            spec[f"modelspec.{key}"] = str(args[f"metadata_{key}"])
    if args.get("metadata_thumbnail"):
        spec["modelspec.thumbnail"] = thumbnail_data_url(str(args["metadata_thumbnail"]))
    return spec


def thumbnail_data_url(value: str) -> str:
    """--metadata_thumbnail: a data URL as given, or an image file read into one."""
    if value.startswith("data:"):
        return value
    import base64
    import mimetypes

    mime = mimetypes.guess_type(value)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(Path(value).read_bytes()).decode('ascii')}"


def with_sshs_hashes(state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """Add sd-webui-additional-networks' hashes (spec 4.2), from an in-memory serialisation with ss_* only."""
    from safetensors.torch import save

    blob = save(state_dict, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_len = struct.unpack("<Q", blob[:8])[0]
    out = dict(metadata)
    out["sshs_model_hash"] = hashlib.sha256(blob[8 + header_len:]).hexdigest()
    out["sshs_legacy_hash"] = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return out


def _resolution(value) -> str:
    if not value:
        return "1024x1024"
    parts = [int(p) for p in str(value).split(",")]
    return f"{parts[0]}x{parts[-1]}"


def network_args_json(network_args: list[str], network_dropout: float | None) -> str:
    """The key=value pairs as given (values stay strings), plus the `dropout` entry sd-scripts injects from
    --network_dropout when the pairs do not set it (spec 3.7, 4.1)."""
    kwargs = dict(a.split("=", 1) for a in network_args)
    kwargs.setdefault("dropout", network_dropout)
    return json.dumps(kwargs)


def _model_name(value) -> str:
    """The basename of an existing file or folder; a hub id (or any other name) as given (spec 4.1)."""
    if not value:
        return "None"
    return Path(str(value)).name if Path(str(value)).exists() else str(value)
