"""The training recipe, top to bottom: set up (in dependency order), train, save.

Only this module imports models, network and data together.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sdxl_lora.config.schema import RunConfig
from sdxl_lora.data.batch import Batch
from sdxl_lora.models.text import tokenize
from sdxl_lora.train import loss as losses
from sdxl_lora.train import noise as noise_math
from sdxl_lora.train.check import check_classes
from sdxl_lora.train.errors import TrainingDiverged
from sdxl_lora.train.optim import build_optimizer, set_train_mode, trained_parameters
from sdxl_lora.train.progress import LossMeter, NonFiniteLoss, Progress
from sdxl_lora.train.schedule import due_at_epoch, due_at_step, final_name
from sdxl_lora.train.schedulers import build_scheduler
from sdxl_lora.train.state import restore_rngs, start_state, state_files, write_state
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

    from sdxl_lora.data.dataset import build_train_dataset, collate_first, shuffle_seed
    from sdxl_lora.data.plan import build_plan
    from sdxl_lora.models.load import load_sdxl
    from sdxl_lora.models.precision import place_models
    from sdxl_lora.network.build import build_network, merge_base_weights
    from sdxl_lora.network.groups import param_groups
    from sdxl_lora.network.hashes import ModelHashes
    from sdxl_lora.network.weights import max_norm_regularize

    session_id, started_at = random.randint(0, 2**32), time.time()
    # Hashing a multi-GB base model for the metadata runs in a background thread from here to the first save.
    model_hashes = ModelHashes(cfg.model.pretrained_model_name_or_path, cfg.model.vae)
    check_classes(cfg)  # optimizer/scheduler packages and arguments, before any weight is read
    accelerator = Accelerator(mixed_precision=cfg.model.mixed_precision,
                              gradient_accumulation_steps=cfg.train.gradient_accumulation_steps)
    set_seed(cfg.train.seed)

    # The datasets are scanned before any weight is read (bad data stops the run early); the dataset needs the
    # loaded tokenizers. Its shuffle seed is what sd-scripts draws right after global seeding.
    data_plan = build_plan(cfg.data.datasets, skip_bad_files=cfg.data.skip_bad_files)
    models = load_sdxl(cfg.model, accelerator.device)
    # --base_weights change the frozen weights: merged before fp8/dtype placement and before LoRA exists.
    merge_base_weights(models.unet, models.text_encoder_1, models.text_encoder_2, cfg.network)
    tokens = functools.partial(tokenize, models.tokenizer_1, models.tokenizer_2,
                               max_token_length=cfg.model.max_token_length)
    dataset = build_train_dataset(data_plan, seed=shuffle_seed(cfg.train.seed),
                                  prior_loss_weight=cfg.data.prior_loss_weight, tokenize=tokens)
    # Frozen weights get their final dtypes (fp8 storage included) before LoRA is injected, so LoRA weights are
    # created directly in the network dtype (float32, or the training dtype with --full_fp16/--full_bf16).
    placement = place_models(models, cfg.model, accelerator.device)

    # Latents are cached before LoRA exists; the VAE is then not needed on the device any more.
    latent_source = latent_source_for(cfg, models.vae, dataset, accelerator.device, placement.highvram)
    # Text-encoder outputs are cached from the frozen encoders (their LoRA does not train), which then leave it.
    text_cache = text_cache_for(cfg, models, dataset, accelerator)

    handles = build_network(models.unet, models.text_encoder_1, models.text_encoder_2, cfg.network)
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
                                         and cfg.data.max_data_loader_n_workers > 0,
                                         # Its own generator: starting an epoch then draws nothing from torch's
                                         # global RNG (dropouts use it), so a resumed run draws what the
                                         # uninterrupted one did.
                                         generator=torch.Generator().manual_seed(cfg.train.seed))
    plan = plan_steps(len(loader), cfg.train.gradient_accumulation_steps, cfg.train.max_train_steps,
                      cfg.train.max_train_epochs, accelerator.num_processes)
    dataset.set_schedule(plan.max_train_steps, cfg.train.gradient_accumulation_steps)
    optimizer = build_optimizer(cfg.optim, param_groups(handles, cfg.network, cfg.optim),
                                fp32_masters=cfg.model.full_fp16)
    scheduler = build_scheduler(cfg.optim, optimizer, plan.max_train_steps * accelerator.num_processes)
    optimizer, loader, scheduler = accelerator.prepare(optimizer, loader, scheduler)
    # Only models that train are prepared (DDP refuses a model without trainable parameters).
    unet = accelerator.prepare(models.unet) if cfg.network.train_unet else models.unet
    te1, te2 = models.text_encoder_1, models.text_encoder_2
    if cfg.network.train_text_encoder:
        te1, te2 = accelerator.prepare(te1, te2)
    _log_plan(plan, dataset, trainable)
    text_source = text_cache or text_source_for(cfg, te1, te2, accelerator.device)

    from sdxl_lora.train.save import RunSaver

    saver = RunSaver(cfg, handles, session_id=session_id, started_at=started_at, dataset=dataset, plan=plan,
                     optimizer=optimizer, model_hashes=model_hashes, num_processes=accelerator.num_processes)
    parts = step_parts(models, unet, latent_source, text_source, accelerator, placement, cfg)
    # A dedicated generator for timesteps and noise (one stream per process), separate from data shuffling.
    noise_generator = torch.Generator(accelerator.device).manual_seed(cfg.train.seed + accelerator.process_index)
    snapshot = functools.partial(state_files, handles, optimizer, scheduler, accelerator, noise_generator)
    # Resuming restores weights, optimizer, scheduler, position and every RNG.
    state, rngs = start_state(cfg, plan, handles, optimizer, scheduler, accelerator)
    if rngs is not None:
        restore_rngs(rngs, noise_generator)
    meter = LossMeter()
    progress = Progress(Path(cfg.save.output_dir) / f"{final_name(cfg.save.output_name)}-status.json",
                        total_steps=plan.max_train_steps, num_epochs=plan.num_epochs, start_step=state.step,
                        enabled=accelerator.is_main_process)
    main = accelerator.is_main_process

    def read_losses(batch_lrs: list[float]) -> None:
        """One device sync: the pending step losses, checked before anything is written."""
        try:
            meter.read()
        except NonFiniteLoss as err:
            reason = diagnose_non_finite(err.pending.step, err.pending.paths, cfg, err.pending.lrs)
            progress.finish("failed", error=reason)
            raise TrainingDiverged(reason) from None
        progress.show(meter.recent_mean(), batch_lrs)

    def save(checkpoint, *args) -> None:
        read_losses(scheduler.get_last_lr())
        accelerator.wait_for_everyone()
        if main:
            for path in checkpoint(*args, lambda folder: write_state(folder, snapshot(state))):
                log.info("saved %s", path)
                progress.saved(path)

    while state.epoch < plan.num_epochs and state.step < plan.max_train_steps:
        unet.train()
        handles.train()  # LoRA dropouts act in training mode, in the text encoders too
        # A resumed epoch skips the batches already trained (the sampler skips them: no image is read).
        epoch_loader = accelerator.skip_first_batches(loader, state.batch) if state.batch else loader
        # accelerate's loader passes its own iteration count to dataset.set_epoch when iterated: align it.
        epoch_loader.set_epoch(state.epoch)
        dataset.set_epoch(state.epoch)
        step_loss = 0.0
        for batch in epoch_loader:
            with accelerator.accumulate(unet, te1, te2):
                loss = training_step(batch, parts, cfg, noise_generator)
                accelerator.backward(loss)
                # With --fused_backward_pass the optimizer already stepped (and clipped) each tensor in backward.
                if accelerator.sync_gradients and cfg.optim.max_grad_norm and not cfg.optim.fused_backward_pass:
                    accelerator.clip_grad_norm_(trained_parameters(optimizer), cfg.optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients and cfg.network.scale_weight_norms:
                    max_norm_regularize(handles, cfg.network.scale_weight_norms)
            state.batch += 1
            step_loss = step_loss + loss.detach()  # summed on the device: no sync here
            if not accelerator.sync_gradients:
                continue
            state.step, state.micro_step = state.step + 1, accelerator.step
            lrs = scheduler.get_last_lr()
            meter.add(state.step, step_loss / cfg.train.gradient_accumulation_steps, lrs, tuple(batch.paths))
            step_loss = 0.0
            progress.advance(state.step, state.epoch)
            if due_at_step(saver.schedule.models, state.step):
                save(saver.at_step, state.step, state.epoch)
            elif meter.due():
                read_losses(lrs)
            if state.step >= plan.max_train_steps:
                break
        else:  # the epoch ran to its end
            state.next_epoch()
            if due_at_epoch(saver.schedule.models, state.epoch, plan.num_epochs):
                save(saver.at_epoch, state.epoch, state.step)
            continue
        break

    read_losses(scheduler.get_last_lr())
    accelerator.wait_for_everyone()
    set_train_mode(optimizer, False)  # schedule-free optimizers: save the averaged (evaluation) weights
    written = saver.at_end(steps=state.step, epochs=plan.num_epochs,
                           write_state=lambda folder: write_state(folder, snapshot(state))) if main else []
    progress.finish("done", last_saved=str(written[0]) if written else None)
    accelerator.end_training()
    return RunResult(output_path=written[0] if written else None, losses=meter.values, steps=state.step,
                     epochs=plan.num_epochs, models=models)


@dataclass(frozen=True)
class StepParts:
    """What a training step reads besides the batch; built once per run."""

    unet: object
    latent_source: object
    """Where latents come from (live VAE or a cache; data/sources.py)."""
    text_source: object
    """Where text conditioning comes from (live encoders or a cache)."""
    accelerator: object
    alphas_cumprod: torch.Tensor
    """The noise schedule (rescaled with --zero_terminal_snr)."""
    snr: torch.Tensor
    """SNR of the original schedule: sd-scripts computes it before the zero-terminal rescale (spec 5.1)."""
    weight_dtype: torch.dtype
    vae_dtype: torch.dtype


def step_parts(models, unet, latent_source, text_source, accelerator, placement, cfg: RunConfig) -> StepParts:
    """The schedule on the device (SNR taken before any zero-terminal rescale) and the models a step calls."""
    alphas_cumprod = models.noise_scheduler.alphas_cumprod.to(accelerator.device)
    snr_table = noise_math.snr(alphas_cumprod)
    if cfg.noise.zero_terminal_snr:
        alphas_cumprod = noise_math.zero_terminal_snr(alphas_cumprod)
    return StepParts(unet, latent_source, text_source, accelerator, alphas_cumprod, snr_table, placement.weight_dtype,
                     placement.vae_dtype)


def training_step(batch: Batch, parts: StepParts, cfg: RunConfig, generator: torch.Generator) -> torch.Tensor:
    """One micro-batch's loss (spec 5.2 to 5.4): latents and conditioning, then timesteps and noise, the U-Net
    prediction, the target and the loss, each from a pure function of noise.py / loss.py."""
    acc, wd = parts.accelerator, parts.weight_dtype
    # Latents and the noise drawn like them are in the VAE dtype (float32 with --no_half_vae), and so is the
    # loss target; only the U-Net input is cast to the weight dtype (spec 5.2, 5.6).
    latents = parts.latent_source.latents(batch).to(parts.vae_dtype)
    with acc.autocast():
        context, pooled = parts.text_source.conditioning(batch)
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
    return losses.training_loss(pred, target, timesteps, cfg=cfg.loss, alphas_cumprod=parts.alphas_cumprod,
                                snr_table=parts.snr, loss_weights=batch.loss_weights.to(acc.device), mask=batch.masks)


def diagnose_non_finite(step: int, paths: tuple, cfg: RunConfig, lrs: list[float]) -> str:
    """One line saying where the loss broke and what usually causes it."""
    hints = ["lower --learning_rate"]
    if cfg.model.mixed_precision == "fp16" and not cfg.model.no_half_vae:
        hints.insert(0, "add --no_half_vae (the SDXL VAE overflows in fp16)")
    if cfg.model.mixed_precision == "fp16":
        hints.append("use --mixed_precision bf16 if the GPU supports it")
    images = ", ".join(str(p) for p in paths)
    return (f"loss is not finite at step {step} (learning rates {', '.join(f'{lr:g}' for lr in lrs)}, "
            f"mixed precision {cfg.model.mixed_precision}, batch: {images}); nothing was saved from this step "
            "on (earlier saves are intact); try: "
            + "; ".join(hints))


def latent_source_for(cfg: RunConfig, vae, dataset, device, highvram: bool):
    """Live VAE encoding, or (--cache_latents[_to_disk]) every image encoded once now, read by the dataset."""
    from sdxl_lora.data.cache_files import module_identity
    from sdxl_lora.data.latent_cache import LatentCacheSettings, build_latent_cache
    from sdxl_lora.data.sources import CachedLatents, VaeLatents, latent_names
    from sdxl_lora.data.vae_encode import encode_images, latent_seed

    if not cfg.data.cache_latents:
        return VaeLatents(vae, device, cfg.data.vae_batch_size)
    settings = LatentCacheSettings(to_disk=cfg.data.cache_latents_to_disk, skip_check=cfg.data.skip_cache_check,
                                   batch_size=cfg.data.vae_batch_size, vae_identity=module_identity(vae),
                                   channels=vae.config.latent_channels)

    def encode(pixels, jobs):
        keys = [job.key for job in jobs]
        return encode_images(vae, pixels, latent_names(keys), [latent_seed(k) for k in keys], device,
                             len(jobs)).cpu()

    # Without --highvram the device cache is cleared after each batch, as sd-scripts does.
    clear = torch.cuda.empty_cache if torch.cuda.is_available() and not highvram else None
    dataset.set_latents(build_latent_cache(dataset.latent_jobs(), encode, settings, after_batch=clear))
    vae.to("cpu")
    return CachedLatents(vae.config.scaling_factor, device)


def text_cache_for(cfg: RunConfig, models, dataset, accelerator):
    """None, or (--cache_text_encoder_outputs[_to_disk]) every caption variant encoded once now."""
    from sdxl_lora.data.cache_files import module_identity
    from sdxl_lora.data.sources import CachedText
    from sdxl_lora.data.text_cache import CAPTION_VARIANTS, TextCacheSettings, build_text_cache
    from sdxl_lora.models.text import encode, num_chunks

    if not cfg.data.cache_text_encoder_outputs:
        return None
    te1, te2, device = models.text_encoder_1, models.text_encoder_2, accelerator.device
    tokens = num_chunks(cfg.model.max_token_length) * 75 + 2
    settings = TextCacheSettings(
        to_disk=cfg.data.cache_text_encoder_outputs_to_disk, skip_check=cfg.data.skip_cache_check,
        batch_size=max(d.batch_size for d in cfg.data.datasets),
        identity=f"{module_identity(te1, te2)}|tokens={tokens}",
        context_shape=(tokens, te1.config.hidden_size + te2.config.hidden_size),
        pooled_shape=(te2.config.projection_dim,))

    def encode_captions(captions):
        ids1, ids2 = tokenize(models.tokenizer_1, models.tokenizer_2, captions, cfg.model.max_token_length)
        with torch.no_grad(), accelerator.autocast():
            return encode(te1, te2, ids1.to(device), ids2.to(device))

    dataset.set_caption_variants(CAPTION_VARIANTS)
    store = build_text_cache(dataset.text_jobs(), encode_captions, settings)
    te1.to("cpu")
    te2.to("cpu")
    return CachedText(store, device)


def text_source_for(cfg: RunConfig, te1, te2, device):
    """The live text encoders (prepared models, so that their LoRA trains through them)."""
    from sdxl_lora.data.sources import EncoderText
    from sdxl_lora.models.text import encode

    return EncoderText(functools.partial(encode, te1, te2), device, trains=cfg.network.train_text_encoder)


def size_conditioning(batch: Batch) -> torch.Tensor:
    """SDXL micro-conditioning (spec 5.6): [orig_h, orig_w, crop_top, crop_left, target_h, target_w]."""
    from sdxl_lora.models.text import size_time_ids

    return size_time_ids(batch.original_size_hw, batch.crop_top_left, batch.target_size_hw)


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


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loss_summary(step_losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and last tenth of the run (at least one step each)."""
    n = max(1, math.ceil(len(step_losses) / 10))
    return sum(step_losses[:n]) / n, sum(step_losses[-n:]) / n
