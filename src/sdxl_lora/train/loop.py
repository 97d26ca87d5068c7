"""The training recipe, top to bottom: set up (in dependency order), train, save.

Only this module imports models, network and data together.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sdxl_lora.config.schema import RunConfig
from sdxl_lora.train import loss as losses
from sdxl_lora.train import noise as noise_math
from sdxl_lora.train.check import check_classes
from sdxl_lora.train.errors import TrainingDiverged
from sdxl_lora.train.optim import build_optimizer, param_groups, set_train_mode
from sdxl_lora.train.schedulers import build_scheduler
from sdxl_lora.train.steps import plan_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports back to the CLI."""

    output_path: Path
    losses: list[float]
    steps: int
    epochs: int
    models: object = None
    """The trained models (LoRA applied), for callers that keep working in the same process."""


def run(cfg: RunConfig) -> RunResult:
    """Train one LoRA as configured and write it; returns where it went and the per-step losses."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from sdxl_lora.data.dataset import build_train_dataset, collate_first
    from sdxl_lora.models.load import load_sdxl
    from sdxl_lora.models.precision import place_models
    from sdxl_lora.network.lora import apply_lora

    session_id, started_at = random.randint(0, 2**32), time.time()
    check_classes(cfg)  # optimizer/scheduler packages and arguments, before any weight is read
    accelerator = Accelerator(mixed_precision=cfg.model.mixed_precision,
                              gradient_accumulation_steps=cfg.train.gradient_accumulation_steps)
    set_seed(cfg.train.seed)

    # The dataset is built first: its epoch-shuffle seed is drawn right after global seeding (as sd-scripts).
    dataset = build_train_dataset(cfg.data.datasets, seed=random.randint(0, 2**31),
                                  prior_loss_weight=cfg.data.prior_loss_weight)
    models = load_sdxl(cfg.model, accelerator.device)
    # Frozen weights get their final dtypes (fp8 storage included) before LoRA is injected, so LoRA weights are
    # created directly in the network dtype (float32, or the training dtype with --full_fp16/--full_bf16).
    placement = place_models(models, cfg.model, accelerator.device)

    # Latents are cached before LoRA exists; the VAE is then not needed on the device any more.
    if cfg.data.cache_latents:
        dataset.set_latents(cache_latents(models.vae, dataset, accelerator.device, cfg.data.vae_batch_size,
                                          clear_device_cache=not placement.highvram))
        models.vae.to("cpu")

    handles = apply_lora(models.unet, models.text_encoder_1, models.text_encoder_2, rank=cfg.network.rank,
                         alpha=cfg.network.alpha, train_unet=cfg.network.train_unet,
                         train_text_encoder=cfg.network.train_text_encoder)
    trainable = {c: handles.parameters(c) for c in ("unet", "te1", "te2")}
    for params in trainable.values():
        for p in params:
            p.data = p.data.to(placement.network_dtype)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(models, cfg.network.train_text_encoder)

    # The dataset shuffles the batches of all datasets itself, seeded per epoch (sd-scripts order).
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate_first,
                                         num_workers=min(cfg.data.max_data_loader_n_workers, _cpus()),
                                         persistent_workers=cfg.data.persistent_data_loader_workers
                                         and cfg.data.max_data_loader_n_workers > 0)
    plan = plan_steps(len(loader), cfg.train.gradient_accumulation_steps, cfg.train.max_train_steps,
                      cfg.train.max_train_epochs, accelerator.num_processes)
    optimizer = build_optimizer(cfg.optim, param_groups(cfg.optim, trainable))
    scheduler = build_scheduler(cfg.optim, optimizer, plan.max_train_steps * accelerator.num_processes)
    optimizer, loader, scheduler = accelerator.prepare(optimizer, loader, scheduler)
    # Only models that train are prepared (DDP refuses a model without trainable parameters).
    unet = accelerator.prepare(models.unet) if cfg.network.train_unet else models.unet
    te1, te2 = models.text_encoder_1, models.text_encoder_2
    if cfg.network.train_text_encoder:
        te1, te2 = accelerator.prepare(te1, te2)
    _log_plan(plan, dataset, trainable)

    from sdxl_lora.train.save import RunSaver

    saver = RunSaver(cfg, handles, session_id=session_id, started_at=started_at, dataset=dataset, plan=plan,
                     optimizer=optimizer)
    parts = step_parts(models, unet, te1, te2, accelerator, placement, cfg)
    # A dedicated generator for timesteps and noise (one stream per process), separate from data shuffling.
    noise_generator = torch.Generator(accelerator.device).manual_seed(cfg.train.seed + accelerator.process_index)
    step_losses: list[float] = []
    progress = _progress(plan.max_train_steps, accelerator.is_main_process)
    global_step = 0
    for epoch in range(plan.num_epochs):
        dataset.set_epoch(epoch)
        unet.train()
        for batch in loader:
            with accelerator.accumulate(unet, te1, te2):
                loss = training_step(batch, parts, cfg, noise_generator)
                accelerator.backward(loss)
                # With --fused_backward_pass the optimizer already stepped (and clipped) each tensor in backward.
                if accelerator.sync_gradients and cfg.optim.max_grad_norm and not cfg.optim.fused_backward_pass:
                    accelerator.clip_grad_norm_([p for ps in trainable.values() for p in ps],
                                                cfg.optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            step_losses.append(loss.detach().item())  # a device sync point, once per optimizer step
            if not math.isfinite(step_losses[-1]):
                raise TrainingDiverged(diagnose_non_finite(global_step, batch, cfg, scheduler.get_last_lr()))
            progress.update(1)
            progress.set_postfix(loss=f"{_recent_mean(step_losses):.4f}", epoch=f"{epoch + 1}/{plan.num_epochs}")
            if global_step >= plan.max_train_steps:
                break
        if global_step >= plan.max_train_steps:
            break
    progress.close()

    accelerator.wait_for_everyone()
    set_train_mode(optimizer, False)  # schedule-free optimizers: save the averaged (evaluation) weights
    path = saver.save_final(steps=global_step, epochs=plan.num_epochs) if accelerator.is_main_process else None
    accelerator.end_training()
    return RunResult(output_path=path, losses=step_losses, steps=global_step, epochs=plan.num_epochs, models=models)


@dataclass(frozen=True)
class StepParts:
    """What a training step reads besides the batch; built once per run."""

    models: object
    unet: object
    te1: object
    te2: object
    accelerator: object
    alphas_cumprod: torch.Tensor
    """The noise schedule (rescaled with --zero_terminal_snr)."""
    snr: torch.Tensor
    """SNR of the original schedule: sd-scripts computes it before the zero-terminal rescale (spec 5.1)."""
    weight_dtype: torch.dtype
    vae_dtype: torch.dtype


def step_parts(models, unet, te1, te2, accelerator, placement, cfg: RunConfig) -> StepParts:
    """The schedule on the device (SNR taken before any zero-terminal rescale) and the models a step calls."""
    alphas_cumprod = models.noise_scheduler.alphas_cumprod.to(accelerator.device)
    snr_table = noise_math.snr(alphas_cumprod)
    if cfg.noise.zero_terminal_snr:
        alphas_cumprod = noise_math.zero_terminal_snr(alphas_cumprod)
    return StepParts(models, unet, te1, te2, accelerator, alphas_cumprod, snr_table, placement.weight_dtype,
                     placement.vae_dtype)


def training_step(batch: dict, parts: StepParts, cfg: RunConfig, generator: torch.Generator) -> torch.Tensor:
    """One micro-batch's loss (spec 5.2 to 5.4): latents and conditioning, then timesteps and noise, the U-Net
    prediction, the target and the loss, each from a pure function of noise.py / loss.py."""
    acc, wd = parts.accelerator, parts.weight_dtype
    # Latents and the noise drawn like them are in the VAE dtype (float32 with --no_half_vae), and so is the
    # loss target; only the U-Net input is cast to the weight dtype (spec 5.2, 5.6).
    latents = batch_latents(batch, parts.models.vae, acc.device, parts.vae_dtype, cfg.data.vae_batch_size)
    with acc.autocast():
        context, pooled = encode_text(batch["captions"], parts.models, parts.te1, parts.te2, cfg)
    # The six size integers stay float32 (bf16 would turn 1365 into 1368); the U-Net casts only their
    # sinusoidal embedding to its dtype.
    time_ids = size_conditioning(batch).to(acc.device, torch.float32)
    # Draw order as sd-scripts: noise (offset, pyramid), timesteps, input perturbation.
    noise = noise_math.draw_noise(latents, cfg.noise, generator)
    timesteps = noise_math.sample_timesteps(latents.shape[0], cfg.noise.min_timestep, cfg.noise.max_timestep,
                                            latents.device, generator)
    noisy = noise_math.noisy_latents(parts.alphas_cumprod, latents,
                                     noise_math.input_perturbation(noise, cfg.noise, generator), timesteps)
    with acc.autocast():
        pred = parts.unet(noisy.to(wd), timesteps, context.to(wd),
                          added_cond_kwargs={"text_embeds": pooled.to(wd), "time_ids": time_ids}).sample
    target = (noise_math.velocity(parts.alphas_cumprod, latents, noise, timesteps)
              if cfg.loss.v_parameterization else noise)
    mask = batch.get("masks", batch.get("alpha_masks"))
    return losses.training_loss(pred, target, timesteps, cfg=cfg.loss, alphas_cumprod=parts.alphas_cumprod,
                                snr_table=parts.snr, loss_weights=batch["loss_weights"], mask=mask)


def diagnose_non_finite(step: int, batch: dict, cfg: RunConfig, lrs: list[float]) -> str:
    """One line saying where the loss broke and what usually causes it."""
    hints = ["lower --learning_rate"]
    if cfg.model.mixed_precision == "fp16" and not cfg.model.no_half_vae:
        hints.insert(0, "add --no_half_vae (the SDXL VAE overflows in fp16)")
    if cfg.model.mixed_precision == "fp16":
        hints.append("use --mixed_precision bf16 if the GPU supports it")
    images = ", ".join(str(p) for p in batch.get("paths", []))
    return (f"loss is not finite at step {step} (learning rates {', '.join(f'{lr:g}' for lr in lrs)}, "
            f"mixed precision {cfg.model.mixed_precision}, batch: {images}); nothing was saved; try: "
            + "; ".join(hints))


def batch_latents(batch: dict, vae, device, dtype, vae_batch_size: int) -> torch.Tensor:
    """Scaled latents of a batch: from the cache, or encoded now with the frozen VAE in chunks of
    --vae_batch_size images (spec 5.2), checked for non-finite values (vae_encode)."""
    from sdxl_lora.data.vae_encode import encode_images

    if "latents" in batch:
        latents = batch["latents"].to(device).float()
    else:
        latents = encode_images(vae, batch["images"], [str(p) for p in batch["paths"]], device, vae_batch_size)
    return (latents * vae.config.scaling_factor).to(dtype)


def cache_latents(vae, dataset, device, batch_size: int, clear_device_cache: bool = True) -> dict:
    """Encode every distinct image once (raw latent_dist.sample(), unscaled, checked for non-finite values),
    kept on the CPU. Without --highvram the device cache is cleared after each batch, as sd-scripts does."""
    from sdxl_lora.data.vae_encode import encode_images

    cache = {}
    for keys, images in dataset.iter_images_for_cache(batch_size):
        names = [f"{path} (flipped)" if flip else str(path) for path, _, flip in keys]
        out = encode_images(vae, images, names, device, batch_size).cpu()
        cache.update(zip(keys, out, strict=True))
        if clear_device_cache and torch.cuda.is_available():
            torch.cuda.empty_cache()
    return cache


def encode_text(captions: list[str], models, te1, te2, cfg: RunConfig):
    """SDXL context and pooled embedding; gradients flow only when text-encoder LoRA is trained."""
    from sdxl_lora.models.text import encode, tokenize

    ids1, ids2 = tokenize(models.tokenizer_1, models.tokenizer_2, captions, cfg.model.max_token_length)
    device = next(te1.parameters()).device
    with torch.set_grad_enabled(cfg.network.train_text_encoder):
        return encode(te1, te2, ids1.to(device), ids2.to(device))


def size_conditioning(batch: dict) -> torch.Tensor:
    """SDXL micro-conditioning (spec 5.6): [orig_h, orig_w, crop_top, crop_left, target_h, target_w]."""
    from sdxl_lora.models.text import size_time_ids

    return size_time_ids(batch["original_size_hw"], batch["crop_top_left"], batch["target_size_hw"])


def enable_gradient_checkpointing(models, text_encoders: bool) -> None:
    """Recompute activations in backward: U-Net always, text encoders only when they train."""
    models.unet.enable_gradient_checkpointing()
    if text_encoders:
        for te in (models.text_encoder_1, models.text_encoder_2):
            te.gradient_checkpointing_enable()
            te.train()


def _log_plan(plan, dataset, trainable) -> None:
    counts = {k: sum(p.numel() for p in v) for k, v in trainable.items()}
    log.info("batches per epoch %d, %d optimizer steps over %d epochs; trainable LoRA parameters %s",
             plan.batches_per_epoch, plan.max_train_steps, plan.num_epochs, counts)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="steps", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def _recent_mean(values: list[float], window: int = 20) -> float:
    tail = values[-window:]
    return sum(tail) / len(tail)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loss_summary(step_losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and last tenth of the run (at least one step each)."""
    n = max(1, math.ceil(len(step_losses) / 10))
    return sum(step_losses[:n]) / n, sum(step_losses[-n:]) / n
