"""Model configs for single files: the ones a file records, else SDXL base's, resized from the tensor shapes.

A single file has weights but no configs. We ship SDXL base's (assets/sdxl_base/, a diffusers folder without
weights or tokenizers), so real SDXL files load offline. `write_single_file` records the exact configs it came
from in the file (safetensors metadata / a .ckpt string entry under RECORDED_KEY); a file that has them is built
from them. For any other file, the numbers that tensor shapes reveal (widths, depths, cross-attention and
projection sizes, layer counts) override the shipped ones. Two numbers no shape reveals are SDXL's: attention
heads 64 wide, and 32 normalization groups; a file whose widths do not fit them needs its configs recorded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources

import torch

from sdxl_lora.models.errors import ModelLoadError

RECORDED_KEY = "sdxl_lora.diffusers_configs"
SUBFOLDER = {"unet": "unet", "vae": "vae", "te1": "text_encoder", "te2": "text_encoder_2"}
CONFIG_FILE = {"scheduler": "scheduler/scheduler_config.json", "model_index": "model_index.json",
               **{c: f"{s}/config.json" for c, s in SUBFOLDER.items()}}
HEAD_WIDTH = 64  # SDXL's attention heads (U-Net and both text encoders) are 64 wide
NORM_GROUPS = 32

Shapes = Mapping[str, torch.Size]


@cache
def _shipped_text(name: str) -> str:
    return (resources.files("sdxl_lora.models") / "assets" / "sdxl_base" / CONFIG_FILE[name]).read_text("utf-8")


def shipped_config(name: str) -> dict:
    """SDXL base's config for 'unet', 'vae', 'te1', 'te2', 'scheduler' or 'model_index' (a fresh dict)."""
    return json.loads(_shipped_text(name))


def recorded_configs(metadata: Mapping[str, str]) -> dict[str, dict] | None:
    """The component configs `write_single_file` recorded in a file's metadata, if any."""
    text = metadata.get(RECORDED_KEY)
    return json.loads(text) if text else None


def record_configs(configs: Mapping[str, dict]) -> dict[str, str]:
    """File metadata that carries the component configs."""
    return {RECORDED_KEY: json.dumps(configs, sort_keys=True)}


def _heads(width: int, what: str) -> int:
    if width % HEAD_WIDTH:
        raise ModelLoadError(f"{what} is {width} wide, not a multiple of SDXL's {HEAD_WIDTH}-wide attention heads, "
                             "and the file records no configs; convert it from a diffusers folder with this tool")
    return width // HEAD_WIDTH


def _check_groups(widths: list[int], what: str) -> None:
    if any(w % NORM_GROUPS for w in widths):
        raise ModelLoadError(f"{what} widths {widths} do not split into SDXL's {NORM_GROUPS} normalization groups, "
                             "and the file records no configs")


def _count(shapes: Shapes, pattern: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_unet(shapes: Shapes, te2_projection: int | None) -> dict:
    """SDXL base's U-Net config with widths, depths and embedding sizes read from diffusers-named shapes."""
    config = shipped_config("unet")
    widths = [shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(len(config["block_out_channels"]))]
    _check_groups(widths, "U-Net")
    depths = [_count(shapes, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") or 1
              for i in range(len(widths))]
    class_dim = shapes["add_embedding.linear_1.weight"][1]
    config.update(
        in_channels=shapes["conv_in.weight"][1], out_channels=shapes["conv_out.weight"][0],
        block_out_channels=widths, transformer_layers_per_block=depths,
        attention_head_dim=[_heads(w, f"U-Net level {i}") for i, w in enumerate(widths)],
        cross_attention_dim=shapes["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"][1],
        projection_class_embeddings_input_dim=class_dim,
    )
    if te2_projection is not None:
        config["addition_time_embed_dim"] = (class_dim - te2_projection) // 6  # six size numbers (spec 5.6)
    return config


def infer_vae(shapes: Shapes) -> dict:
    """SDXL base's VAE config with channel widths, depth and latent channels read from diffusers-named shapes."""
    config = shipped_config("vae")
    levels = _count(shapes, r"encoder\.down_blocks\.(\d+)\.")
    widths = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels)]
    _check_groups(widths, "VAE")
    config.update(
        block_out_channels=widths, layers_per_block=_count(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        down_block_types=[config["down_block_types"][0]] * levels,
        up_block_types=[config["up_block_types"][0]] * levels,
        in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0],
        latent_channels=shapes["post_quant_conv.weight"][0],
    )
    return config


def infer_text_encoder(shapes: Shapes, component: str) -> dict:
    """SDXL base's TE1/TE2 config with width, depth, MLP and projection sizes read from model-named shapes."""
    config = shipped_config(component)
    root = "text_model." if component == "te2" else ""
    vocab, hidden = shapes[f"{root}embeddings.token_embedding.weight"]
    config.update(
        vocab_size=vocab, hidden_size=hidden, num_attention_heads=_heads(hidden, f"text encoder {component}"),
        max_position_embeddings=shapes[f"{root}embeddings.position_embedding.weight"][0],
        intermediate_size=shapes[f"{root}encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=_count(shapes, rf"{re.escape(root)}encoder\.layers\.(\d+)\."),
    )
    if component == "te2":
        config["projection_dim"] = shapes["text_projection.weight"][0]
    return config


def infer_configs(shapes: Mapping[str, Shapes]) -> dict[str, dict]:
    """Configs for the components present in `shapes` (component -> model-named shapes)."""
    configs = {}
    if "te1" in shapes:
        configs["te1"] = infer_text_encoder(shapes["te1"], "te1")
    if "te2" in shapes:
        configs["te2"] = infer_text_encoder(shapes["te2"], "te2")
    if "vae" in shapes:
        configs["vae"] = infer_vae(shapes["vae"])
    if "unet" in shapes:
        te2_projection = configs["te2"]["projection_dim"] if "te2" in configs else None
        configs["unet"] = infer_unet(shapes["unet"], te2_projection)
    return configs


def build_empty(component: str, config: Mapping) -> torch.nn.Module:
    """The component's model with parameters on the meta device (buffers real), ready for assign-loading."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        if component == "unet":
            return UNet2DConditionModel.from_config(dict(config))
        if component == "vae":
            return AutoencoderKL.from_config(dict(config))
        text_config = CLIPTextConfig.from_dict(dict(config))
        return CLIPTextModel(text_config) if component == "te1" else CLIPTextModelWithProjection(text_config)
