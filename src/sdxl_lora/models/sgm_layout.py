"""Diffusers/transformers tensor names <-> SDXL's original single-file (SGM) layout, as tables of data.

A single-file SDXL holds four components under fixed prefixes (`FILE_PREFIX`). Each component is a `Layout`:
prefix rules (the longest matching prefix of whole dotted parts wins: common/sdxl_layout.rename_by_prefix) and
three tensor rules that one generic converter applies in both directions:

- fused: one file tensor is several model tensors concatenated on dim 0 (OpenCLIP's `attn.in_proj_*` = q, k, v);
- as_conv: Linear weights the LDM VAE stores as 1x1 convolutions ([C, C] <-> [C, C, 1, 1]);
- transposed: OpenCLIP multiplies by `text_projection` from the right (x @ P), a Linear stores P.T. Diffusers'
  from_single_file transposes too, so our pooled embeddings equal diffusers'; sd-scripts copies the matrix as is
  (spec 5.6 [verify]: its single-file loads differ from its own diffusers-folder loads there; bigG's P is square).

The U-Net rules are common/sdxl_layout.py's (spec 3.3, shared with network/); the VAE, TE1 and TE2 tables are
built here from the component's size (VAE levels, TE2 layers), which `count_levels` / `count_layers` read from
names on either side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from sdxl_lora.common.sdxl_layout import diffusers_to_sgm, rename_by_prefix, sgm_to_diffusers

FILE_PREFIX = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "te1": "conditioner.embedders.0.transformer.",
    "te2": "conditioner.embedders.1.model.",
}
COMPONENTS = tuple(FILE_PREFIX)

VAE_RESNET = (("conv_shortcut", "nin_shortcut"),)  # norm1/conv1/norm2/conv2 are named alike in both layouts
VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
VAE_TOP = (("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv"))
VAE_ENDS = (("conv_in", "conv_in"), ("conv_norm_out", "norm_out"), ("conv_out", "conv_out"))
TE2_TOP = (
    ("text_model.embeddings.token_embedding", "token_embedding"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm", "ln_final"),
    ("text_projection.weight", "text_projection"),
)
TE2_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
             ("self_attn.out_proj", "attn.out_proj"))
TE2_FUSED = (("attn.in_proj_weight", "self_attn.{}_proj.weight"), ("attn.in_proj_bias", "self_attn.{}_proj.bias"))
QKV = ("q", "k", "v")
TE1_ROOT = "text_model"  # transformers 5 dropped it from CLIPTextModel names; the file keeps it (environment.md 2)


@dataclass(frozen=True)
class PrefixMap:
    """Renames by the longest matching prefix of whole dotted parts; an empty prefix is a root rule."""

    pairs: tuple[tuple[str, str], ...]

    def forward(self, name: str) -> str:
        return rename_by_prefix(name, dict(self.pairs))

    def backward(self, name: str) -> str:
        return rename_by_prefix(name, {b: a for a, b in self.pairs})


@dataclass(frozen=True)
class Layout:
    """How one component's model tensors are named and shaped in a single file (module docstring)."""

    component: str
    to_file: Callable[[str], str]
    """Model name -> file name without the component prefix."""
    to_model: Callable[[str], str]
    """File name without the component prefix -> model name."""
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """File name -> the model names concatenated along dim 0 to make it."""
    as_conv: frozenset[str] = frozenset()
    """Model Linear weights stored as 1x1 convolutions in the file."""
    transposed: frozenset[str] = frozenset()
    """Model weights stored transposed in the file."""
    ignored: frozenset[str] = frozenset()
    """File names with no model tensor (skipped when reading)."""

    @property
    def prefix(self) -> str:
        return FILE_PREFIX[self.component]


def unet_layout() -> Layout:
    return Layout("unet", diffusers_to_sgm, sgm_to_diffusers)


def _vae_rules(levels: int, layers: int) -> list[tuple[str, str]]:
    rules = list(VAE_TOP)
    for part in ("encoder", "decoder"):
        rules += [(f"{part}.{d}", f"{part}.{s}") for d, s in VAE_ENDS]
        for k, block in enumerate(("block_1", "block_2")):
            rules += _with_inner(f"{part}.mid_block.resnets.{k}", f"{part}.mid.{block}", VAE_RESNET)
        rules += _with_inner(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION)
    for i in range(levels):
        last = i == levels - 1
        for j in range(layers):
            rules += _with_inner(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RESNET)
        if not last:
            rules.append((f"encoder.down_blocks.{i}.downsamplers.0", f"encoder.down.{i}.downsample"))
        up = levels - 1 - i  # the LDM decoder numbers its levels from the bottom
        for j in range(layers + 1):
            rules += _with_inner(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{up}.block.{j}", VAE_RESNET)
        if not last:
            rules.append((f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.up.{up}.upsample"))
    return rules


def _with_inner(model: str, file: str, inner: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [(model, file)] + [(f"{model}.{m}", f"{file}.{f}") for m, f in inner]


def vae_layout(levels: int = 4, layers: int = 2) -> Layout:
    rules = PrefixMap(tuple(_vae_rules(levels, layers)))
    as_conv = frozenset(f"{part}.mid_block.attentions.0.{name}.weight"
                        for part in ("encoder", "decoder") for name in ("to_q", "to_k", "to_v", "to_out.0"))
    return Layout("vae", rules.forward, rules.backward, as_conv=as_conv)


def te1_layout() -> Layout:
    rules = PrefixMap((("", TE1_ROOT),))
    return Layout("te1", rules.forward, rules.backward)


def te2_layout(layers: int = 32) -> Layout:
    pairs, fused = list(TE2_TOP), {}
    for n in range(layers):
        model, file = f"text_model.encoder.layers.{n}", f"transformer.resblocks.{n}"
        pairs += _with_inner(model, file, TE2_LAYER)
        for file_leaf, model_leaf in TE2_FUSED:
            fused[f"{file}.{file_leaf}"] = tuple(f"{model}.{model_leaf.format(p)}" for p in QKV)
    rules = PrefixMap(tuple(pairs))
    return Layout("te2", rules.forward, rules.backward, fused=fused,
                  transposed=frozenset({"text_projection.weight"}), ignored=frozenset({"logit_scale"}))


def count_levels(names: Iterable[str]) -> int:
    """VAE encoder levels named in either layout (`encoder.down.N.` / `encoder.down_blocks.N.`)."""
    return _count(names, r"encoder\.down(?:_blocks)?\.(\d+)\.")


def count_vae_layers(names: Iterable[str]) -> int:
    """Resnets per VAE encoder level, in either layout."""
    return _count(names, r"encoder\.down(?:_blocks)?\.0\.(?:block|resnets)\.(\d+)\.")


def count_layers(names: Iterable[str]) -> int:
    """Transformer layers of a CLIP text encoder, in either layout."""
    return _count(names, r"(?:encoder\.layers|transformer\.resblocks)\.(\d+)\.")


def _count(names: Iterable[str], pattern: str) -> int:
    found = [int(m.group(1)) for n in names if (m := re.search(pattern, n))]
    return max(found) + 1 if found else 0


def layout_for(component: str, names: Iterable[str]) -> Layout:
    """The layout of one component, sized from its tensor names (model or file side, without prefix)."""
    if component == "unet":
        return unet_layout()
    if component == "te1":
        return te1_layout()
    names = list(names)
    if component == "vae":
        return vae_layout(count_levels(names), count_vae_layers(names))
    if component == "te2":
        return te2_layout(count_layers(names))
    raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")


def to_file_tensors(layout: Layout, tensors: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Model tensors -> (file name with prefix, tensor), in model order; fused groups where their first part is."""
    part_of = {name: file for file, names in layout.fused.items() for name in names}
    for name, tensor in tensors.items():
        if name in part_of:
            file = part_of[name]
            if name == layout.fused[file][0]:
                yield layout.prefix + file, torch.cat([tensors[n] for n in layout.fused[file]], dim=0)
            continue
        if name in layout.as_conv:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        elif name in layout.transposed:
            tensor = tensor.T.contiguous()
        yield layout.prefix + layout.to_file(name), tensor


def to_model_tensors(layout: Layout, file_name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One file tensor (name without prefix) -> its model tensors; [] for names the layout ignores and for
    `position_ids` buffers (some files carry them; the models derive them)."""
    if file_name in layout.ignored or file_name.endswith(".position_ids"):
        return []
    if file_name in layout.fused:
        names = layout.fused[file_name]
        # copies, so the parts do not share storage (safetensors refuses to save tensors that do)
        return [(n, part.clone()) for n, part in zip(names, tensor.chunk(len(names), dim=0), strict=True)]
    name = layout.to_model(file_name)
    if name in layout.as_conv:
        tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
    elif name in layout.transposed:
        tensor = tensor.T.contiguous()
    return [(name, tensor)]
