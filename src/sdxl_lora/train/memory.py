"""Peak GPU memory of a run: estimated from the settings before any weight is read (`sdxl-lora check`), and
measured in the first steps of training, with concrete advice when it is at the card's limit (docs/memory.md).

The estimate adds up, for the training phase: the frozen weights that stay on the device in their stored dtypes,
the LoRA weights, their gradients and optimizer state, the activations of one micro-batch of the largest bucket,
and the CUDA context; the caching phase (the VAE and the text encoders on the device while latents and text
outputs are encoded; the U-Net is loaded after, or already then with --lowram and --base_weights) is estimated
too, and the larger of the two is the peak. Everything but the counting of the models (count_models) is plain
arithmetic on numbers, so it can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

GIB = 2**30
NEAR_LIMIT = 0.05
"""Warn when the peak is within this fraction of the card's memory (spilling starts there)."""
WATCH_STEPS = 3
"""The training steps after which the real peak is read."""

UNET_ACTIVATION_PER_LATENT_PIXEL = {False: 413_400, True: 38_600}
"""Bytes of U-Net activation memory per latent pixel per sample in 16-bit autocast, without / with gradient
checkpointing: the slope between 512 and 1024 px of the full-size U-Net with rank-8 LoRA on every kohya target,
counted on the meta device with flash attention's saved tensors (benchmarks/memory_calibration.py)."""
UNET_ACTIVATION_OFFSET = {False: -16_000_000, True: -42_000_000}
"""The fit's intercept in bytes, once per micro-batch (batch 1 and 2 at 512 and 1024 px lie on one line in
latent pixels x batch)."""
TEXT_ENCODER_ACTIVATION_PER_SAMPLE = 125_500_000
"""Bytes of both text encoders' activations per sample when their LoRA trains (77 tokens, 16-bit; same script)."""
VAE_ENCODE_PER_PIXEL = 640
"""VAE encoder's working set (no gradients) per image pixel, in elements of its dtype: five 128-channel
full-resolution tensors alive at once in its first block (same script: 1280 bytes per pixel in bf16 at 512 and
1024 px)."""
CUDA_CONTEXT = 768 * 2**20
"""CUDA context, cuBLAS/cuDNN workspaces and kernels loaded by PyTorch: typically 0.5-1 GiB (not measured here)."""
ALLOCATOR_SLACK = 0.10
"""The caching allocator's rounding and fragmentation, as a fraction of the activations."""
BNB_MIN_8BIT_SIZE = 4096
"""bitsandbytes keeps 32-bit state for tensors with fewer elements than this (its min_8bit_size default)."""
BNB_BLOCK = 256
"""bitsandbytes' block-wise quantization: one float32 absmax per block of this many elements per state."""

OPTIMIZER_STATES: dict[str, tuple[int, str]] = {
    "adamw": (2, "param"), "pagedadamw": (2, "param"), "pagedadamw32bit": (2, "float32"),
    "adamw8bit": (2, "8bit"), "pagedadamw8bit": (2, "8bit"),
    "lion": (1, "param"), "lion8bit": (1, "8bit"), "pagedlion8bit": (1, "8bit"),
    "sgdnesterov": (1, "param"), "sgdnesterov8bit": (1, "8bit"),
    "dadaptation": (3, "param"), "dadaptadampreprint": (3, "param"), "dadaptadam": (3, "param"),
    "dadaptadagrad": (3, "param"), "dadaptadan": (5, "param"), "dadaptadanip": (5, "param"),
    "dadaptlion": (2, "param"), "dadaptsgd": (3, "param"), "prodigy": (4, "param"),
    "adafactor": (0, "factored"),
    "adamwschedulefree": (2, "param"), "radamschedulefree": (2, "param"), "sgdschedulefree": (1, "param"),
}
"""Lower-case --optimizer_type -> (param-sized state tensors, their storage): AdamW's two moments; Lion and SGD's
one momentum; D-Adaptation and Prodigy's moments plus their s and initial-weight copies; schedule-free's z and
second moment. Adafactor keeps a factored second moment (a row and a column vector per matrix) and a momentum
only with beta1. Other optimizer classes are counted as two states, like AdamW."""

DTYPE_BYTES = {"no": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class ModelCounts:
    """What the models hold, counted on meta-device models built from their configs."""

    weights: Mapping[str, int]
    """Component ('unet', 'te1', 'te2', 'vae') -> number of floating-point weights (parameters and buffers)."""
    fp8_weights: Mapping[str, int]
    """Component -> how many of those fp8 storage keeps in 1 byte (Linear/Conv2d layers but the kept ones)."""
    lora_shapes: Mapping[str, tuple[tuple[int, ...], ...]]
    """Trained component -> the shape of each LoRA tensor (down, up per module)."""

    @property
    def lora_params(self) -> int:
        return sum(math.prod(s) for shapes in self.lora_shapes.values() for s in shapes)


@dataclass(frozen=True)
class Settings:
    """The options the estimate depends on, as plain values."""

    mixed_precision: str = "no"
    fp8_base: bool = False
    fp8_base_unet: bool = False
    no_half_vae: bool = False
    full_fp16: bool = False
    full_bf16: bool = False
    optimizer_type: str = "AdamW"
    optimizer_args: Mapping[str, object] = field(default_factory=dict)
    fused_backward_pass: bool = False
    gradient_checkpointing: bool = False
    cache_latents: bool = False
    cache_text_encoder_outputs: bool = False
    train_text_encoder: bool = False
    batch_size: int = 1
    """Micro-batch size of the dataset with the largest batch x bucket area."""
    resolution: tuple[int, int] = (1024, 1024)
    """(width, height) of that dataset's largest bucket."""
    vae_batch_size: int = 1
    unet_while_caching: bool = False
    """--lowram with --base_weights: the U-Net is loaded before caching (the base weights are merged into it and
    the encoders first) and straight onto the device, so it is there while caching too."""

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.mixed_precision]

    @property
    def network_bytes(self) -> int:
        return 2 if self.full_fp16 or self.full_bf16 else 4


@dataclass(frozen=True)
class Estimate:
    """Bytes per part of the training phase, and the peak."""

    parts: tuple[tuple[str, int], ...]
    """(what, bytes) of the training phase, in the order printed."""
    caching: int
    """Peak while latents / text outputs are encoded (VAE and text encoders on the device, the U-Net only with
    --lowram and --base_weights); 0 without caching."""

    @property
    def training(self) -> int:
        return sum(b for _, b in self.parts)

    @property
    def peak(self) -> int:
        return max(self.training, self.caching)


def weight_bytes(counts: ModelCounts, s: Settings) -> dict[str, int]:
    """Bytes of each frozen component on the device, as models/precision.py stores it."""
    w = s.weight_bytes
    fp8 = {"unet": s.fp8_base or s.fp8_base_unet, "te1": s.fp8_base and not s.fp8_base_unet}
    fp8["te2"] = fp8["te1"]
    out = {}
    for component, n in counts.weights.items():
        if component == "vae":
            out[component] = n * (4 if s.no_half_vae else w)
        elif fp8.get(component):
            small = counts.fp8_weights.get(component, 0)
            out[component] = small + (n - small) * w
        else:
            out[component] = n * w
    return out


def state_bytes(optimizer_type: str, shapes: tuple[tuple[int, ...], ...], param_bytes: int,
                optimizer_args: Mapping[str, object] | None = None) -> int:
    """Optimizer state of tensors with these shapes whose weights are `param_bytes` wide (see OPTIMIZER_STATES)."""
    states, kind = OPTIMIZER_STATES.get(optimizer_type.lower(), (2, "param"))
    total = 0
    for shape in shapes:
        n = math.prod(shape)
        if kind == "param":
            total += states * n * param_bytes
        elif kind == "float32":
            total += states * n * 4
        elif kind == "8bit":
            total += states * (n * 4 if n < BNB_MIN_8BIT_SIZE else n + 4 * math.ceil(n / BNB_BLOCK))
        else:  # Adafactor: float32 row and column sums of the last two dims; beta1 adds a full momentum
            factored = len(shape) >= 2
            rows, cols = math.prod(shape[:-1]), math.prod(shape[:-2]) * shape[-1]
            total += 4 * (rows + cols if factored else n)
            if (optimizer_args or {}).get("beta1") is not None:
                total += 4 * n
    return total


def gradient_bytes(shapes: tuple[tuple[int, ...], ...], grad_bytes: int, fused: bool) -> int:
    """LoRA gradients at the end of backward; with --fused_backward_pass each is freed once its tensor stepped,
    so at most the largest one (and its neighbours in flight, ignored) exists at a time."""
    sizes = [math.prod(s) for s in shapes] or [0]
    return grad_bytes * (max(sizes) if fused else sum(sizes))


def activation_bytes(s: Settings) -> int:
    """U-Net (and, when their LoRA trains, text-encoder) activations of one micro-batch, with allocator slack."""
    width, height = s.resolution
    pixels = (width // 8) * (height // 8)
    ckpt = s.gradient_checkpointing
    scale = s.weight_bytes / 2  # calibrated in 16-bit; float32 activations are twice as wide
    unet = max(0, UNET_ACTIVATION_PER_LATENT_PIXEL[ckpt] * pixels * s.batch_size + UNET_ACTIVATION_OFFSET[ckpt])
    text = TEXT_ENCODER_ACTIVATION_PER_SAMPLE * s.batch_size if s.train_text_encoder else 0
    return round((unet + text) * scale * (1 + ALLOCATOR_SLACK))


def vae_encode_bytes(s: Settings, batch: int) -> int:
    """Transient working set of encoding `batch` images at the largest bucket with the VAE."""
    width, height = s.resolution
    return VAE_ENCODE_PER_PIXEL * width * height * batch * (4 if s.no_half_vae else s.weight_bytes)


def estimate(counts: ModelCounts, s: Settings) -> Estimate:
    """The peak GPU memory of a run with these models and settings (module docstring)."""
    weights = weight_bytes(counts, s)
    shapes = tuple(shape for group in counts.lora_shapes.values() for shape in group)
    n = counts.lora_params
    masters = 4 * n if s.full_fp16 else 0  # --full_fp16: float32 master copies; the optimizer steps those
    state_width = 4 if s.full_fp16 else s.network_bytes
    encoders = weights.get("te1", 0) + weights.get("te2", 0)
    live_vae = 0 if s.cache_latents else vae_encode_bytes(s, s.batch_size)
    parts = [
        ("U-Net weights", weights.get("unet", 0)),
        ("text encoder weights", 0 if s.cache_text_encoder_outputs else encoders),
        ("VAE weights", 0 if s.cache_latents else weights.get("vae", 0)),
        ("LoRA weights", n * s.network_bytes + masters),
        ("LoRA gradients", gradient_bytes(shapes, state_width, s.fused_backward_pass)),
        ("optimizer state", state_bytes(s.optimizer_type, shapes, state_width, s.optimizer_args)),
        # The VAE encodes a batch before the U-Net's forward, so the two working sets do not add.
        ("activations", max(activation_bytes(s), live_vae)),
        ("CUDA context", CUDA_CONTEXT),
    ]
    caching = 0
    if s.cache_latents or s.cache_text_encoder_outputs:  # the loop places the U-Net after caching (precision.py)
        encode = vae_encode_bytes(s, s.vae_batch_size) if s.cache_latents else 0
        on_device = [c for c in weights if c != "unet" or s.unet_while_caching]
        caching = sum(weights[c] for c in on_device) + encode + CUDA_CONTEXT
    return Estimate(parts=tuple(parts), caching=caching)


def suggestions(s: Settings) -> list[tuple[str, Settings]]:
    """What may lower the peak, each not already set: (advice naming the flag, the settings it gives)."""
    out: list[tuple[str, Settings]] = []
    if not s.gradient_checkpointing:
        out.append(("--gradient_checkpointing", replace(s, gradient_checkpointing=True)))
    if not s.cache_latents:
        out.append(("--cache_latents", replace(s, cache_latents=True)))
    if not s.cache_text_encoder_outputs and not s.train_text_encoder:
        out.append(("--cache_text_encoder_outputs", replace(s, cache_text_encoder_outputs=True)))
    if s.mixed_precision == "no":
        out.append(("--mixed_precision bf16", replace(s, mixed_precision="bf16")))
    if not s.fp8_base and not s.fp8_base_unet:
        out.append(("--fp8_base", replace(s, fp8_base=True)))
    if OPTIMIZER_STATES.get(s.optimizer_type.lower(), (2, ""))[1] in ("param", "float32"):
        out.append(("--optimizer_type AdamW8bit", replace(s, optimizer_type="AdamW8bit")))
        out.append(("--optimizer_type Adafactor", replace(s, optimizer_type="Adafactor", optimizer_args={})))
    if s.mixed_precision == "bf16" and not s.full_bf16:
        out.append(("--full_bf16", replace(s, full_bf16=True)))
    if s.batch_size > 1:
        out.append((f"--train_batch_size {s.batch_size // 2} (or batch_size in the dataset TOML)",
                    replace(s, batch_size=s.batch_size // 2)))
    width, height = s.resolution
    if width * height > 768 * 768:
        smaller = (width * 3 // 4 // 64 * 64, height * 3 // 4 // 64 * 64)
        out.append((f"a lower resolution, e.g. --resolution {smaller[0]},{smaller[1]} (or max_bucket_reso)",
                    replace(s, resolution=smaller)))
    return out


def gib(n: int) -> str:
    """GiB with one decimal; MiB below 1 GiB, where a tenth of a GiB is too coarse."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def render_estimate(counts: ModelCounts, s: Settings, device_total: int | None, device_name: str = "") -> list[str]:
    """The lines `sdxl-lora check` prints: breakdown, total, and against the visible GPU, what to change."""
    est = estimate(counts, s)
    width, height = s.resolution
    lines = [f"estimated peak GPU memory: {gib(est.peak)} ({width}x{height} batch {s.batch_size}, "
             f"{s.mixed_precision if s.mixed_precision != 'no' else 'fp32'}"
             f"{', gradient checkpointing' if s.gradient_checkpointing else ''}, {s.optimizer_type}; "
             f"{counts.lora_params / 1e6:.1f}M LoRA parameters)"]
    lines.append(f"  training steps: {gib(est.training)}")
    lines += [f"    {what}: {gib(size)}" for what, size in est.parts if size]
    off = [what for what, cached in (("text encoders", s.cache_text_encoder_outputs), ("VAE", s.cache_latents))
           if cached]
    if off:
        lines.append(f"    off the device once their outputs are cached: {' and '.join(off)}")
    if est.caching:
        models = "VAE, text encoders and U-Net (--lowram)" if s.unet_while_caching else "VAE and text encoders"
        lines.append(f"  caching ({models} on the device, VAE batch {s.vae_batch_size}): "
                     f"{gib(est.caching)}")
    if device_total is None:
        return lines
    verdict = fit_verdict(est.peak, device_total)
    lines.append(f"GPU {device_name}: {gib(device_total)}; {verdict}")
    if est.peak > (1 - NEAR_LIMIT) * device_total:
        lines += [f"  try {advice} (estimate {gib(after)})" for advice, after in helpful(counts, s)]
    return lines


def helpful(counts: ModelCounts, s: Settings) -> list[tuple[str, int]]:
    """The suggestions that lower the estimated peak, with the peak each gives, the most effective first."""
    now = estimate(counts, s).peak
    found = [(advice, estimate(counts, changed).peak) for advice, changed in suggestions(s)]
    return sorted([(advice, after) for advice, after in found if after < now], key=lambda pair: pair[1])


def fit_verdict(peak: int, total: int) -> str:
    if peak > total:
        return f"does not fit (over by {gib(peak - total)}): the driver may spill into host memory, 10-100x slower"
    if peak > (1 - NEAR_LIMIT) * total:
        return "within 5% of the card's memory: spilling into host memory is likely"
    return f"fits ({gib(total - peak)} to spare)"


def near_limit_warning(step: int, peak: int, total: int, s: Settings) -> str | None:
    """The warning for a measured peak within NEAR_LIMIT of the card's memory, naming what to change."""
    if peak <= (1 - NEAR_LIMIT) * total:
        return None
    advice = ", ".join(a for a, _ in suggestions(s)) or "a smaller --network_dim or batch"
    return (f"GPU memory peaked at {gib(peak)} of {gib(total)} in the first {step} steps (within 5% of the card): "
            f"if the driver spills into host memory, steps slow down 10-100x; to use less, try: {advice} "
            "(docs/memory.md; `sdxl-lora check` estimates each)")
