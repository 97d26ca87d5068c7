"""`--network_args key=value ...` of networks.lora (spec 3.6, 3.7), parsed and checked before any model loads.

Pure parsing: `parse_lora_args` turns the strings into a frozen `LoraArgs` and reports every problem, each naming
the key. Unlike sd-scripts, an unknown key is an error (sd-scripts ignores it silently, so a typo such as
`conv_dims=8` trains without conv LoRA). network/ applies the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdxl_lora.config.errors import did_you_mean

NUM_BLOCKS = 23  # SDXL U-Net blocks for block_dims (spec 3.6)
NUM_DOWN, NUM_MID, NUM_UP = 9, 3, 9  # down_lr_weight / mid_lr_weight / up_lr_weight lengths
PRESETS = ("sine", "cosine", "linear", "reverse_linear", "zeros")
FLOAT_KEYS = ("conv_alpha", "block_lr_zero_threshold", "rank_dropout", "module_dropout", "loraplus_lr_ratio",
              "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
LIST_KEYS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
             "mid_lr_weight", "up_lr_weight")
LORA_KEYS = ("conv_dim", *FLOAT_KEYS, *LIST_KEYS)
HINTS = {"dropout": "networks.lora takes neuron dropout from --network_dropout",
         "conv_rank": "networks.lora calls it conv_dim"}


@dataclass(frozen=True)
class LoraArgs:
    """The networks.lora settings given in --network_args (spec 3.7); None = not given."""

    conv_dim: int | None = None
    """Rank of LoRA on 3x3 convs (ResNet, samplers); also turns on ResNet emb_layers / skip_connection targets."""
    conv_alpha: float | None = None
    """Alpha of the 3x3 conv LoRA (1.0 when conv_dim is given without it)."""
    block_dims: tuple[int, ...] | None = None
    """23 ranks of Linear / 1x1 modules per U-Net block (spec 3.6)."""
    block_alphas: tuple[float, ...] | None = None
    """23 alphas matching block_dims."""
    conv_block_dims: tuple[int, ...] | None = None
    """23 ranks of 3x3 conv modules per U-Net block."""
    conv_block_alphas: tuple[float, ...] | None = None
    """23 alphas matching conv_block_dims."""
    block_lr_weight: tuple[float, ...] | None = None
    """23 per-block LR multipliers [1] + down(9) + mid(3) + up(9) + [1], zeroed at or below the threshold."""
    rank_dropout: float | None = None
    """Probability of dropping each rank of down(x) per sample (training only)."""
    module_dropout: float | None = None
    """Probability of skipping a whole LoRA module per call (training only)."""
    loraplus_lr_ratio: float | None = None
    """LoRA+: LR multiplier of up weights, U-Net and text encoders."""
    loraplus_unet_lr_ratio: float | None = None
    """LoRA+ ratio for the U-Net (overrides loraplus_lr_ratio)."""
    loraplus_text_encoder_lr_ratio: float | None = None
    """LoRA+ ratio for the text encoders (overrides loraplus_lr_ratio)."""

    @property
    def uses_blocks(self) -> bool:
        """sd-scripts takes the per-block path when block dims or LR weights are given (spec 3.6)."""
        return self.block_dims is not None or self.block_lr_weight is not None

    @property
    def uses_conv(self) -> bool:
        return self.conv_dim is not None or self.conv_block_dims is not None


def split_pairs(network_args) -> tuple[list[tuple[str, str]], list[str]]:
    """`key=value` strings -> (key, value) pairs split on the first '=', as sd-scripts does."""
    pairs, problems = [], []
    for item in network_args or ():
        if "=" not in str(item):
            problems.append(f"--network_args {item!r}: expected key=value")
            continue
        key, value = str(item).split("=", 1)
        pairs.append((key.strip(), value.strip()))
    return pairs, problems


def parse_lora_args(network_args) -> tuple[LoraArgs, list[str]]:
    """The networks.lora arguments and every problem found, each naming the key."""
    pairs, problems = split_pairs(network_args)
    raw: dict[str, str] = {}
    for key, value in pairs:
        if key not in LORA_KEYS:
            problems.append(_unknown(key))
        else:
            raw[key] = value
    values: dict = {}
    for key, value in raw.items():
        try:
            values[key] = _parse_value(key, value)
        except ValueError as err:
            problems.append(f"--network_args {key}={value}: {err}")
    problems += _check_ranges(values)
    lr_weight = None
    if any(values.get(k) is not None for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")):
        lr_weight = block_lr_weights(values.get("down_lr_weight"), values.get("mid_lr_weight"),
                                     values.get("up_lr_weight"), values.get("block_lr_zero_threshold") or 0.0)
    conv_alpha = values.get("conv_alpha")
    if conv_alpha is None and values.get("conv_dim") is not None:
        conv_alpha = 1.0
    fields = {k: values.get(k) for k in LORA_KEYS if k in LoraArgs.__dataclass_fields__}
    fields.update(conv_alpha=conv_alpha, block_lr_weight=lr_weight)
    return LoraArgs(**fields), problems


def _unknown(key: str) -> str:
    hint = f" ({HINTS[key]})" if key in HINTS else did_you_mean(key, LORA_KEYS)
    if not hint:
        hint = " (known: " + ", ".join(LORA_KEYS) + ")"
    return f"--network_args {key}: unknown key for networks.lora{hint}"


def _parse_value(key: str, value: str):
    if key == "conv_dim":
        return int(value)
    if key in FLOAT_KEYS:
        return _float(value)
    if key in ("down_lr_weight", "up_lr_weight") and "," not in value:
        return _preset(value, NUM_DOWN)
    # empty entries are 0, as sd-scripts parses them
    numbers = [_float(s) if s.strip() else 0.0 for s in value.split(",")]
    if key in ("block_dims", "conv_block_dims"):
        if any(n != int(n) for n in numbers):
            raise ValueError("ranks must be whole numbers")
        numbers = [int(n) for n in numbers]
    if key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas") and len(numbers) != NUM_BLOCKS:
        raise ValueError(f"needs {NUM_BLOCKS} comma-separated values (one per SDXL U-Net block), got {len(numbers)}")
    return tuple(numbers)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _preset(text: str, length: int) -> tuple[float, ...]:
    """sine / cosine / linear / reverse_linear / zeros, optionally '+offset' (spec 3.6)."""
    name, _, offset_text = text.partition("+")
    if name not in PRESETS:
        raise ValueError(f"not a preset ({', '.join(PRESETS)}, optionally +offset) "
                         f"and not a comma-separated list of {length} values")
    offset = _float(offset_text) if offset_text else 0.0
    steps = [i / (length - 1) for i in range(length)]
    curve = {"sine": [math.sin(math.pi / 2 * s) for s in steps], "linear": steps, "zeros": [0.0] * length}
    curve["cosine"], curve["reverse_linear"] = curve["sine"][::-1], steps[::-1]
    return tuple(c + offset for c in curve[name])


def _fit(weights: tuple[float, ...] | None, length: int) -> list[float]:
    """Too long: truncated; too short: padded with 1.0 (sd-scripts warns); missing: all 1.0."""
    if weights is None:
        return [1.0] * length
    return list(weights[:length]) + [1.0] * max(0, length - len(weights))


def block_lr_weights(down, mid, up, threshold: float) -> tuple[float, ...]:
    """The 23 per-block LR weights [1] + down(9) + mid(3) + up(9) + [1]; weights <= threshold become 0."""
    parts = _fit(down, NUM_DOWN) + _fit(mid, NUM_MID) + _fit(up, NUM_UP)
    return (1.0, *(w if w > threshold else 0.0 for w in parts), 1.0)


def network_args_warnings(network_args) -> list[str]:
    """What sd-scripts also only warns about: LR weight lists it truncates or pads, block dims without alphas."""
    out = []
    pairs = split_pairs(network_args)[0]
    keys = {k for k, _ in pairs}
    for dims, alphas, fallback in (("block_dims", "block_alphas", "--network_alpha"),
                                   ("conv_block_dims", "conv_block_alphas", "conv_alpha (default 1.0)")):
        if dims in keys and alphas not in keys:
            out.append(f"--network_args {dims} without {alphas}: every block uses {fallback}")
    for key, value in pairs:
        length = {"down_lr_weight": NUM_DOWN, "mid_lr_weight": NUM_MID, "up_lr_weight": NUM_UP}.get(key)
        if length is None or ("," not in value and key != "mid_lr_weight"):
            continue
        n = len(value.split(","))
        if n != length:
            fix = "truncated" if n > length else "padded with 1.0"
            out.append(f"--network_args {key}: {n} values for {length} blocks, {fix}")
    return out


def _check_ranges(values: dict) -> list[str]:
    out = []
    if values.get("conv_dim") is not None and values["conv_dim"] < 0:
        out.append(f"--network_args conv_dim={values['conv_dim']}: must be 0 or more")
    for key in ("rank_dropout", "module_dropout"):
        if values.get(key) is not None and not 0.0 <= values[key] < 1.0:
            out.append(f"--network_args {key}={values[key]}: must be in [0, 1)")
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        if values.get(key) is not None and values[key] <= 0:
            out.append(f"--network_args {key}={values[key]}: must be above 0")
    for key in ("block_dims", "conv_block_dims"):
        if values.get(key) is not None and min(values[key]) < 0:
            out.append(f"--network_args {key}: ranks must be 0 or more")
    return out


def network_warnings(values: dict) -> list[str]:
    """Network options that sd-scripts accepts and partly ignores: we go on and say so."""
    out = []
    files, multipliers = values.get("base_weights") or [], values.get("base_weights_multiplier") or []
    if len(multipliers) > len(files):
        out.append(f"--base_weights_multiplier: {len(multipliers)} values for {len(files)} --base_weights files; "
                   "the extra ones are ignored")
    if values.get("dim_from_weights") and values.get("network_args"):
        out.append("--dim_from_weights with --network_args: sd-scripts honours only the block LR weights here; "
                   "this trainer applies dropouts and LoRA+ ratios too (ranks and alphas come from the file)")
    return out
