"""Module names: diffusers U-Net <-> SGM (sd-scripts) U-Net, and kohya LoRA names for U-Net and text encoders.

The U-Net mapping is a table of prefix rules (spec 3.3) built from SDXL's block layout; `diffusers_to_sgm`
and `sgm_to_diffusers` apply it with one generic converter (the longest matching prefix of whole dotted parts
wins).
Kohya LoRA names are `lora_unet_` + the SGM path, or `lora_te1_`/`lora_te2_` + the `text_model.`-prefixed
encoder path, with every "." turned into "_" (spec 3.2).
"""

from __future__ import annotations

import functools
from typing import Literal

Component = Literal["unet", "te1", "te2"]

# SDXL's U-Net layout: which levels hold Transformer2DModel blocks, and how many resnets a down level holds.
# Up levels hold one resnet more; every level but the last down / last up level has a sampler.
LAYERS_PER_BLOCK = 2
DOWN_HAS_ATTENTION = (False, True, True)
UP_HAS_ATTENTION = (True, True, False)

# Inside a resnet block the two layouts name the layers differently (spec 3.3).
RESNET_LAYERS = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)

TOP_LEVEL = (
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
)

KOHYA_PREFIX = {"unet": "lora_unet_", "te1": "lora_te1_", "te2": "lora_te2_"}
# Kohya TE names always carry `text_model.`; transformers 5 dropped it from CLIPTextModel (TE1) module names.
TE_KOHYA_ROOT = "text_model."
TE_MODULE_ROOT = {"te1": "", "te2": "text_model."}

# Names that contain "_" themselves, so that "_"-joined kohya names can be split back into dotted paths.
COMPOUND_WORDS = (
    "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
    "skip_connection", "time_embed", "label_emb",
    "down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "conv_norm_out", "time_emb_proj",
    "conv_shortcut", "time_embedding", "add_embedding", "linear_1", "linear_2",
    "transformer_blocks", "proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out",
    "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "final_layer_norm",
    "layer_norm1", "layer_norm2", "token_embedding", "position_embedding",
)


def _resnet_rules(diffusers: str, sgm: str) -> list[tuple[str, str]]:
    return [(diffusers, sgm)] + [(f"{diffusers}.{d}", f"{sgm}.{s}") for d, s in RESNET_LAYERS]


def _down_rules() -> list[tuple[str, str]]:
    rules, stride = [], LAYERS_PER_BLOCK + 1
    for i, has_attention in enumerate(DOWN_HAS_ATTENTION):
        for j in range(LAYERS_PER_BLOCK):
            n = stride * i + j + 1
            rules += _resnet_rules(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0")
            if has_attention:
                rules.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1"))
        if i < len(DOWN_HAS_ATTENTION) - 1:
            n = stride * (i + 1)
            rules.append((f"down_blocks.{i}.downsamplers.0", f"input_blocks.{n}.0"))
            rules.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{n}.0.op"))
    return rules


def _mid_rules() -> list[tuple[str, str]]:
    return (_resnet_rules("mid_block.resnets.0", "middle_block.0")
            + [("mid_block.attentions.0", "middle_block.1")]
            + _resnet_rules("mid_block.resnets.1", "middle_block.2"))


def _up_rules() -> list[tuple[str, str]]:
    rules, stride = [], LAYERS_PER_BLOCK + 1
    for i, has_attention in enumerate(UP_HAS_ATTENTION):
        for j in range(stride):
            n = stride * i + j
            rules += _resnet_rules(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0")
            if has_attention:
                rules.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1"))
        if i < len(UP_HAS_ATTENTION) - 1:
            slot = 2 if has_attention else 1  # the upsampler follows the resnet (and the attention block)
            rules.append((f"up_blocks.{i}.upsamplers.0", f"output_blocks.{stride * i + 2}.{slot}"))
    return rules


@functools.cache
def unet_prefix_table() -> tuple[tuple[str, str], ...]:
    """(diffusers prefix, SGM prefix) rules for a U-Net with SDXL's block layout."""
    return tuple(TOP_LEVEL) + tuple(_down_rules() + _mid_rules() + _up_rules())


@functools.cache
def _lookup(direction: Literal["to_sgm", "to_diffusers"]) -> dict[str, str]:
    table = unet_prefix_table()
    return dict(table) if direction == "to_sgm" else {sgm: d for d, sgm in table}


def _convert(name: str, direction: Literal["to_sgm", "to_diffusers"]) -> str:
    rules, parts = _lookup(direction), name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in rules:
            return ".".join([rules[prefix], *parts[cut:]])
    source = "diffusers" if direction == "to_sgm" else "SGM"
    raise KeyError(f"{name!r} is not a {source} U-Net name of SDXL's layout (spec 3.3)")


def diffusers_to_sgm(name: str) -> str:
    """`down_blocks.1.attentions.0.proj_in.weight` -> `input_blocks.4.1.proj_in.weight`."""
    return _convert(name, "to_sgm")


def sgm_to_diffusers(name: str) -> str:
    """`input_blocks.4.1.proj_in.weight` -> `down_blocks.1.attentions.0.proj_in.weight`."""
    return _convert(name, "to_diffusers")


def kohya_name(component: Component, module_path: str) -> str:
    """Kohya LoRA name of a module, given its path in our diffusers / transformers model."""
    if component == "unet":
        path = diffusers_to_sgm(module_path)
    elif component in ("te1", "te2"):
        path = module_path if module_path.startswith(TE_KOHYA_ROOT) else TE_KOHYA_ROOT + module_path
    else:
        raise ValueError(f"unknown component {component!r}; expected one of {sorted(KOHYA_PREFIX)}")
    return KOHYA_PREFIX[component] + path.replace(".", "_")


@functools.cache
def _compounds() -> tuple[list[str], ...]:
    return tuple(sorted((w.split("_") for w in COMPOUND_WORDS), key=len, reverse=True))


def _split_words(flat: str) -> str:
    """Undo "." -> "_": rejoin the words of COMPOUND_WORDS, turn every other "_" back into "."."""
    pieces, out, k, compounds = flat.split("_"), [], 0, _compounds()
    while k < len(pieces):
        word = next((c for c in compounds if pieces[k:k + len(c)] == c), pieces[k:k + 1])
        out.append("_".join(word))
        k += len(word)
    return ".".join(out)


def parse_kohya_name(name: str) -> tuple[Component, str]:
    """`lora_unet_input_blocks_4_1_proj_in` -> ("unet", "down_blocks.1.attentions.0.proj_in").

    Accepts U-Net names in SGM or diffusers layout (both occur in kohya files); returns our model's module
    path (TE1 without `text_model.`, as transformers 5 names it).
    """
    component = next((c for c, p in KOHYA_PREFIX.items() if name.startswith(p)), None)
    if component is None:
        raise KeyError(f"{name!r} does not start with one of {sorted(KOHYA_PREFIX.values())}")
    path = _split_words(name[len(KOHYA_PREFIX[component]):])
    if component == "unet":
        if path.split(".")[0] in {d.split(".")[0] for d, _ in unet_prefix_table()}:
            return component, path  # already diffusers layout
        return component, sgm_to_diffusers(path)
    if not path.startswith(TE_KOHYA_ROOT):
        raise KeyError(f"{name!r}: text-encoder names continue with 'text_model_'")
    return component, TE_MODULE_ROOT[component] + path[len(TE_KOHYA_ROOT):]
