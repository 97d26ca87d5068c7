"""`--network_args` of `--network_module lycoris.kohya` (LyCORIS 4.1.3), parsed and checked before any model loads.

The keys are those LyCORIS' kohya create_network reads, as GUI configs write them. Unlike LyCORIS, an unknown
key is an error, and booleans must be true/false (LyCORIS reads every other text, "0" included, as true).
Refused, because the file would not load the same in A1111/ComfyUI: `rs_lora=true` (the file's alpha would be
read as alpha/rank, not alpha/sqrt(rank)), `algo=tlora` (no UI loader reads it) and preset files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdxl_lora.config.errors import did_you_mean
from sdxl_lora.config.network_args import split_pairs

LYCORIS_MODULE = "lycoris.kohya"
ALGOS = ("lora", "locon", "loha", "lokr", "dylora", "glora", "full", "diag-oft", "boft", "ia3")
PRESETS = ("full", "full-lin", "attn-mlp", "attn-only", "unet-only", "unet-transformer-only",
           "unet-convblock-only")
BOOL_KEYS = ("use_tucker", "use_scalar", "train_norm", "rescaled", "dora_wd", "wd_on_output", "full_matrix",
             "bypass_mode", "decompose_both", "unbalanced_factorization", "rs_lora")
# Old names LyCORIS still reads (it warns): all turn Tucker decomposition on or off, or set the OFT constraint.
ALIASES = {"use_cp": "use_tucker", "use_conv_cp": "use_tucker", "constrain": "constraint"}
FLOAT_KEYS = ("conv_alpha", "dropout", "rank_dropout", "module_dropout", "constraint", "loraplus_lr_ratio",
              "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
INT_KEYS = ("conv_dim", "factor", "block_size")
LYCORIS_KEYS = ("algo", "preset", *INT_KEYS, *FLOAT_KEYS, *BOOL_KEYS, "disable_conv_cp", *ALIASES)


@dataclass(frozen=True)
class LycorisArgs:
    """The lycoris.kohya settings given in --network_args; None = LyCORIS' default."""

    algo: str = "lora"
    """lora/locon (LoCon), loha, lokr, dylora, glora, full, diag-oft, boft, ia3."""
    preset: str = "full"
    """Built-in LyCORIS preset choosing the target modules (SDXL classes only, see lycoris_net)."""
    conv_dim: int | None = None
    """Rank on 3x3 convs; LyCORIS' default (and for 0) is --network_dim."""
    conv_alpha: float | None = None
    """Alpha on 3x3 convs; default --network_alpha."""
    dropout: float = 0.0
    """Neuron dropout (training only)."""
    rank_dropout: float = 0.0
    """Rank dropout (training only)."""
    module_dropout: float = 0.0
    """Module dropout (training only)."""
    factor: int = -1
    """LoKr factor (-1: as balanced as possible)."""
    block_size: int = 4
    """OFT / BOFT block size."""
    constraint: float = 0.0
    """OFT constraint."""
    use_tucker: bool = False
    """Tucker decomposition of conv kernels."""
    use_scalar: bool = False
    """Train an extra scalar per module."""
    train_norm: bool = False
    """Also train the norm layers."""
    rescaled: bool = False
    """OFT rescaling."""
    dora_wd: bool = False
    """DoRA weight decomposition (saved as dora_scale)."""
    wd_on_output: bool = True
    """DoRA: decompose along the output dimension."""
    full_matrix: bool = False
    """LoKr: full matrices instead of low-rank factors."""
    bypass_mode: bool = False
    """Compute the adapter beside the frozen weight instead of merging it per step."""
    decompose_both: bool = False
    """LoKr: low-rank both Kronecker factors."""
    unbalanced_factorization: bool = False
    """LoKr: swap the factor sizes."""
    loraplus_lr_ratio: float | None = None
    """LoRA+: LR x ratio for lora_up weights (U-Net and text encoders)."""
    loraplus_unet_lr_ratio: float | None = None
    """LoRA+ ratio for the U-Net."""
    loraplus_text_encoder_lr_ratio: float | None = None
    """LoRA+ ratio for the text encoders."""


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low not in ("true", "false"):
        raise ValueError("must be true or false")
    return low == "true"


def _value(key: str, text: str):
    if key in INT_KEYS:
        return int(text)
    if key in FLOAT_KEYS:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    if key in BOOL_KEYS:
        return _bool(text)
    return text.strip()


def parse_lycoris_args(network_args) -> tuple[LycorisArgs, list[str]]:
    """The lycoris.kohya arguments and every problem found, each naming the key."""
    pairs, problems = split_pairs(network_args)
    values: dict = {}
    for key, text in pairs:
        if key not in LYCORIS_KEYS:
            hint = did_you_mean(key, LYCORIS_KEYS) or " (known: " + ", ".join(LYCORIS_KEYS) + ")"
            problems.append(f"--network_args {key}: unknown key for lycoris.kohya{hint}")
            continue
        try:
            if key == "disable_conv_cp":  # LyCORIS' oldest spelling, inverted
                values["use_tucker"] = values.get("use_tucker", False) or not _bool(text)
            elif ALIASES.get(key) == "use_tucker":
                values["use_tucker"] = values.get("use_tucker", False) or _bool(text)
            else:
                values[ALIASES.get(key, key)] = _value(ALIASES.get(key, key), text)
        except ValueError as err:
            problems.append(f"--network_args {key}={text}: {err}")
    problems += _check(values)
    if problems:
        return LycorisArgs(), problems
    values.pop("rs_lora", None)
    values["algo"] = values.get("algo", "lora").lower()
    return LycorisArgs(**values), []


def _check(values: dict) -> list[str]:
    out = []
    algo = str(values.get("algo", "lora")).lower()
    if algo == "tlora":
        out.append("--network_args algo=tlora: no A1111/ComfyUI loader reads T-LoRA files; choose one of "
                   + ", ".join(ALGOS))
    elif algo not in ALGOS:
        out.append(f"--network_args algo={algo}: not a LyCORIS algorithm ({', '.join(ALGOS)})")
    if "preset" in values and values["preset"] not in PRESETS:
        out.append(f"--network_args preset={values['preset']}: only LyCORIS' built-in presets are supported "
                   f"({', '.join(PRESETS)}); preset files are not")
    if values.get("rs_lora"):
        out.append("--network_args rs_lora=true: refused, UIs would load the file at alpha/rank instead of "
                   "alpha/sqrt(rank) (a different strength than trained)")
    for key in ("dropout", "rank_dropout", "module_dropout"):
        if values.get(key) is not None and not 0.0 <= values[key] < 1.0:
            out.append(f"--network_args {key}={values[key]}: must be in [0, 1)")
    for key in ("conv_dim", "block_size"):
        if values.get(key) is not None and values[key] < 0:
            out.append(f"--network_args {key}={values[key]}: must be 0 or more")
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        if values.get(key) is not None and values[key] <= 0:
            out.append(f"--network_args {key}={values[key]}: must be above 0")
    return out


def lycoris_warnings(values: dict) -> list[str]:
    """What sd-scripts silently ignores with lycoris.kohya: we go on and say so."""
    if values.get("network_module") == LYCORIS_MODULE and values.get("network_dropout") is not None:
        return ["--network_dropout: lycoris.kohya ignores it (as with sd-scripts); "
                "use --network_args dropout=... for LyCORIS' neuron dropout"]
    return []
