"""Kohya LoRA module names for U-Net and text encoders (spec 3.2).

The U-Net's diffusers <-> SGM table lives in common/sdxl_layout.py (shared with models/ for single files).
Kohya LoRA names are `lora_unet_` + the SGM path, or `lora_te1_`/`lora_te2_` + the `text_model.`-prefixed
encoder path, with every "." turned into "_" (spec 3.2).
"""

from __future__ import annotations

import functools
from typing import Literal

from sdxl_lora.common.sdxl_layout import diffusers_to_sgm, is_diffusers_unet_name, sgm_to_diffusers

__all__ = ["diffusers_to_sgm", "sgm_to_diffusers", "kohya_name", "parse_kohya_name"]

Component = Literal["unet", "te1", "te2"]

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
        if is_diffusers_unet_name(path):
            return component, path  # already diffusers layout
        return component, sgm_to_diffusers(path)
    if not path.startswith(TE_KOHYA_ROOT):
        raise KeyError(f"{name!r}: text-encoder names continue with 'text_model_'")
    return component, TE_MODULE_ROOT[component] + path[len(TE_KOHYA_ROOT):]
