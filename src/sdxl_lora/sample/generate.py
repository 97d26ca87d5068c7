"""Sample images from the models being trained (spec 8.3), through diffusers' StableDiffusionXLPipeline.

The pipeline is assembled around the in-memory U-Net, both text encoders and both tokenizers (no weight is
copied), so the LoRA as trained so far is applied. Training is left exactly as it was: every module's train/eval
flag, the device of the text encoders and the device and dtype of the VAE (which the loop may have moved to the
CPU after caching), and the global torch CPU and CUDA RNG states are restored; each prompt draws its noise from
its own generator (a CPU generator, so a seed gives the same starting noise on any device).

Memory: the text encoders are on the device while prompts are denoised (they may have been moved off it after
text-encoder caching); the VAE comes to the device only afterwards, to decode all latents at once, in float32
when it is stored in fp16 (the SDXL VAE overflows in fp16, so diffusers upcasts it the same way), in its own
dtype otherwise. The pipeline is dropped and the CUDA cache emptied at the end.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sdxl_lora.common.files import atomic_path
from sdxl_lora.config.schema import RunConfig
from sdxl_lora.sample.prompts import SamplePrompt
from sdxl_lora.sample.samplers import build_sampler

log = logging.getLogger(__name__)
SAMPLE_FOLDER = "sample"


@dataclass(frozen=True)
class SampleSettings:
    """What sampling needs besides the models and prompts; fixed for a run."""

    output_dir: Path
    """The run's --output_dir; images go to its sample/ folder."""
    output_name: str | None = None
    """--output_name, the file name prefix (none when unset)."""
    device: torch.device | str = "cpu"
    """Where the U-Net is and sampling runs."""
    weight_dtype: torch.dtype = torch.float32
    """The training dtype: denoising runs under autocast in it (off for float32)."""
    v_parameterization: bool = False
    """The model predicts v: the schedulers are built for v_prediction."""
    process_index: int = 0
    """This process's index: it samples prompts index, index + n, ... (as sd-scripts spreads them)."""
    num_processes: int = 1
    """Processes sampling together."""


def sample_settings(cfg: RunConfig, device, weight_dtype: torch.dtype, process_index: int = 0,
                    num_processes: int = 1) -> SampleSettings:
    """The settings of a run from its configuration and its placement."""
    return SampleSettings(output_dir=Path(cfg.save.output_dir), output_name=cfg.save.output_name, device=device,
                          weight_dtype=weight_dtype, v_parameterization=cfg.loss.v_parameterization,
                          process_index=process_index, num_processes=num_processes)


def sample_file_name(output_name: str | None, index: int, *, epoch: int | None, step: int, seed: int | None,
                     when: time.struct_time | None = None) -> str:
    """sd-scripts' name: `[<output_name>_]<num>_<index:02d>_<YYYYmmddHHMMSS>[_<seed>].png`, where num is
    `e<epoch:06d>` for epoch-end and at-first samples (epoch 0) and `<step:06d>` for step samples."""
    num = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    prefix = f"{output_name}_" if output_name else ""
    suffix = "" if seed is None else f"_{seed}"
    return f"{prefix}{num}_{index:02d}_{time.strftime('%Y%m%d%H%M%S', when or time.localtime())}{suffix}.png"


def generate_samples(models, prompts: Sequence[SamplePrompt], settings: SampleSettings, *,
                     epoch: int | None = None, step: int = 0) -> list[Path]:
    """Sample this process's share of `prompts` and write one PNG each to <output_dir>/sample/; returns the paths.

    `models` has the SdxlModels attributes (unet, vae, text_encoder_1/2, tokenizer_1/2), with the LoRA in them.
    `epoch` names epoch-end samples (0 for --sample_at_first); otherwise `step` names them.
    """
    own = own_prompts(prompts, settings.process_index, settings.num_processes)
    if not own:
        return []
    device = torch.device(settings.device)
    started = time.perf_counter()
    rng = _rng_states()
    modes = _set_eval(models.unet, models.text_encoder_1, models.text_encoder_2, models.vae)
    try:
        with torch.no_grad():
            with _on_device((models.text_encoder_1, models.text_encoder_2), device):
                latents = _denoise(models, own, settings, device)
            with _vae_for_decoding(models.vae, device):
                paths = [_write(_decode(models.vae, x), p, seed, settings, epoch, step)
                         for p, (x, seed) in zip(own, latents, strict=True)]
    finally:
        _restore_modes(modes)
        _restore_rng(rng)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log.info("sampled %d image(s) in %.1f s: %s", len(paths), time.perf_counter() - started,
             ", ".join(path.name for path in paths))
    return paths


def own_prompts(prompts: Sequence[SamplePrompt], process_index: int, num_processes: int) -> list[SamplePrompt]:
    """This process's share: prompts process_index, process_index + num_processes, ... (as sd-scripts)."""
    return list(prompts)[process_index::num_processes]


def _denoise(models, prompts: list[SamplePrompt], settings: SampleSettings, device: torch.device
             ) -> list[tuple[torch.Tensor, int]]:
    """(latents, seed used) per prompt, from a pipeline around the live models (no VAE: it decodes later)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=None, text_encoder=models.text_encoder_1, text_encoder_2=models.text_encoder_2,
        tokenizer=models.tokenizer_1, tokenizer_2=models.tokenizer_2, unet=models.unet,
        scheduler=build_sampler(prompts[0].sampler, settings.v_parameterization),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    autocast = settings.weight_dtype != torch.float32
    out = []
    for prompt in prompts:
        pipe.scheduler = build_sampler(prompt.sampler, settings.v_parameterization)
        seed = prompt.seed if prompt.seed is not None else secrets.randbelow(2**32)
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.autocast(device.type, dtype=settings.weight_dtype, enabled=autocast):
            latents = pipe(prompt=prompt.prompt, negative_prompt=prompt.negative_prompt, width=prompt.width,
                           height=prompt.height, num_inference_steps=prompt.steps, guidance_scale=prompt.scale,
                           generator=generator, output_type="latent").images
        out.append((latents, seed))
    return out


def _decode(vae: nn.Module, latents: torch.Tensor):
    """One PIL image from (1, 4, h, w) latents; non-finite pixels (a VAE overflow) are reported and shown black."""
    from PIL import Image

    scaled = (latents.float() / vae.config.scaling_factor).to(_device_of(vae), vae.dtype)
    image = vae.decode(scaled).sample.float()
    if not torch.isfinite(image).all():
        log.warning("sample image has non-finite pixels (shown black); with --mixed_precision fp16 add --no_half_vae")
        image = torch.nan_to_num(image, nan=-1.0, posinf=1.0, neginf=-1.0)
    pixels = ((image[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


def _write(image, prompt: SamplePrompt, seed: int, settings: SampleSettings, epoch: int | None, step: int) -> Path:
    """The PNG, written beside its final name and renamed into place; the settings are in its 'parameters' text
    (as web UIs write it), the drawn seed included."""
    from PIL.PngImagePlugin import PngInfo

    name = sample_file_name(settings.output_name, prompt.index, epoch=epoch, step=step, seed=prompt.seed)
    path = Path(settings.output_dir) / SAMPLE_FOLDER / name
    info = PngInfo()
    info.add_text("parameters", f"{prompt.prompt}\nNegative prompt: {prompt.negative_prompt or ''}\n"
                                f"Steps: {prompt.steps}, Sampler: {prompt.sampler}, CFG scale: {prompt.scale:g}, "
                                f"Seed: {seed}, Size: {prompt.width}x{prompt.height}")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextlib.contextmanager
def _on_device(modules: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """The modules on `device` inside the block, back where each was afterwards."""
    before = [_device_of(module) for module in modules]
    try:
        for module in modules:
            module.to(device)
        yield
    finally:
        for module, where in zip(modules, before, strict=True):
            module.to(where)


@contextlib.contextmanager
def _vae_for_decoding(vae: nn.Module, device: torch.device) -> Iterator[None]:
    """The VAE on `device` inside the block, in float32 when it is stored in fp16; as it was afterwards (fp16 ->
    float32 -> fp16 is exact)."""
    where, dtype = _device_of(vae), vae.dtype
    # nn.Module.to: diffusers' own `to` warns on every dtype cast (about fp32 modules this VAE does not have).
    try:
        nn.Module.to(vae, device=device, dtype=torch.float32 if dtype == torch.float16 else dtype)
        yield
    finally:
        nn.Module.to(vae, device=where, dtype=dtype)


def _set_eval(*models: nn.Module) -> dict[nn.Module, bool]:
    """Every module's train flag (LoRA layers train inside frozen eval-mode models), then all in eval mode."""
    modes = {module: module.training for model in models for module in model.modules()}
    for model in models:
        model.eval()
    return modes


def _restore_modes(modes: dict[nn.Module, bool]) -> None:
    for module, training in modes.items():
        module.training = training


def _rng_states() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _restore_rng(states: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
