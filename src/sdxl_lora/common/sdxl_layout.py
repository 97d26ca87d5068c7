"""SDXL U-Net facts, as data: the diffusers <-> SGM (sd-scripts, single file) name table (spec 3.3) and the
block indices of SGM names (spec 3.6). Read by models/ (single files) and network/ (kohya LoRA names).

The table is prefix rules built from SDXL's block layout; `rename_by_prefix` applies any such table (the longest
matching prefix of whole dotted parts wins; an empty prefix is a root rule).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Literal

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

# Block indices of SGM names (spec 3.6): the first index of each top-level part; 23 blocks in all.
BLOCK_BASE = {"time_embed": 0, "label_emb": 0, "input_blocks": 1, "middle_block": 10, "output_blocks": 13,
              "out": 22}
NUM_BLOCKS = 23
NUM_DOWN_BLOCKS, NUM_MID_BLOCKS, NUM_UP_BLOCKS = 9, 3, 9


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


def rename_by_prefix(name: str, rules: Mapping[str, str]) -> str:
    """Rename by the longest matching prefix of whole dotted parts; KeyError when none matches."""
    parts = name.split(".")
    for cut in range(len(parts), -1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in rules:
            return ".".join(p for p in (rules[prefix], *parts[cut:]) if p)
    raise KeyError(name)


def _convert(name: str, direction: Literal["to_sgm", "to_diffusers"]) -> str:
    try:
        return rename_by_prefix(name, _lookup(direction))
    except KeyError:
        source = "diffusers" if direction == "to_sgm" else "SGM"
        raise KeyError(f"{name!r} is not a {source} U-Net name of SDXL's layout (spec 3.3)") from None


def diffusers_to_sgm(name: str) -> str:
    """`down_blocks.1.attentions.0.proj_in.weight` -> `input_blocks.4.1.proj_in.weight`."""
    return _convert(name, "to_sgm")


def sgm_to_diffusers(name: str) -> str:
    """`input_blocks.4.1.proj_in.weight` -> `down_blocks.1.attentions.0.proj_in.weight`."""
    return _convert(name, "to_diffusers")


def is_diffusers_unet_name(name: str) -> bool:
    """Whether a dotted U-Net name starts like the diffusers layout (down_blocks, mid_block, conv_in, ...)."""
    return name.split(".")[0] in {d.split(".")[0] for d, _ in unet_prefix_table()}


def block_index(sgm_name: str) -> int:
    """Block index (0-22) of an SGM U-Net name, dotted or "_"-joined (spec 3.6): `input_blocks.4.1...` -> 5."""
    match = re.match(r"(time_embed|label_emb|input_blocks|middle_block|output_blocks|out)(?:[._](\d+))?",
                     sgm_name)
    if match is None:
        raise KeyError(f"{sgm_name!r} is not an SGM U-Net name (spec 3.6)")
    part, n = match.group(1), match.group(2)
    if part in ("input_blocks", "middle_block", "output_blocks"):
        return BLOCK_BASE[part] + int(n)
    return BLOCK_BASE[part]
