"""The training recipe, top to bottom: set up (in dependency order), train, save.

Only this module imports models, network and data together.
"""

from __future__ import annotations

import contextlib
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
from sdxl_lora.train import distributed
from sdxl_lora.train import loss as losses
from sdxl_lora.train import noise as noise_math
from sdxl_lora.train.check import check_classes, check_sample_prompts
from sdxl_lora.train.events import Events, sample_with
from sdxl_lora.train.optim import build_optimizer, set_train_mode, trained_parameters
from sdxl_lora.train.processes import (
    gather_rngs,
    ignore_unused_parameters,
    mean_over_processes,
    quiet_other_processes,
    refuse_unsupported,
    report_agreement,
    sum_over_processes,
    validation_shard,
)
from sdxl_lora.train.progress import LossMeter, Progress
from sdxl_lora.train.save import RunSaver
from sdxl_lora.train.schedule import final_name
from sdxl_lora.train.schedulers import build_scheduler
from sdxl_lora.train.setup import (
    allow_tf32,
    compile_unet,
    data_loader,
    enable_gradient_checkpointing,
    latent_source_for,
    release_text_encoders,
    text_cache_for,
    text_source_for,
)
from sdxl_lora.train.state import capture_rngs, restore_rngs, resume_from_hub, start_state, state_files
from sdxl_lora.train.steps import plan_steps
from sdxl_lora.train.tracking import Trackers, accelerator_kwargs, lr_snapshot
from sdxl_lora.train.validation import fixed_timestep_step, validation_loss, validation_timesteps

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
    written: tuple[Path, ...] = ()
    """Every file and state folder this run wrote, in order."""
    seconds: float = 0.0
    """Wall time of the run."""
    validation_losses: tuple[tuple[int, float], ...] = ()
    """(step, loss) of each validation run, the untrained LoRA's at step 0 first."""


def run(cfg: RunConfig) -> RunResult:
    """Train one LoRA as configured and write it; returns where it went and the per-step losses."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    from sdxl_lora.data.dataset import CacheGroup, build_train_dataset, build_validation_dataset, shuffle_seed
    from sdxl_lora.data.plan import build_plan
    from sdxl_lora.models.load import load_sdxl, load_unet
    from sdxl_lora.models.precision import place_models, place_unet
    from sdxl_lora.network.build import build_network, merge_base_weights
    from sdxl_lora.network.groups import param_groups
    from sdxl_lora.network.hashes import ModelHashes
    from sdxl_lora.network.weights import max_norm_regularize
    from sdxl_lora.publish.hub import Uploader
    from sdxl_lora.runtime import refuse_lone_copies
    from sdxl_lora.sample.generate import generate_samples, sample_settings

    session_id, started_at = random.randint(0, 2**32), time.time()
    check_classes(cfg)  # optimizer/scheduler packages and arguments, before any weight is read
    prompts = check_sample_prompts(cfg)  # a sample prompt file that does not parse stops the run here
    if cfg.hub.resume_from_huggingface and cfg.train.resume is not None:  # the state comes first: it may not exist
        cfg = resume_from_hub(cfg)
    # Batches reach the device by non-blocking copies (the loader pins them on CUDA; setup.data_loader).
    accelerator = Accelerator(mixed_precision=cfg.model.mixed_precision,
                              dataloader_config=DataLoaderConfiguration(non_blocking=True),
                              gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                              **accelerator_kwargs(cfg.log), **distributed.accelerator_kwargs(cfg))
    refuse_lone_copies(accelerator.num_processes)  # several launched processes that do not see each other
    refuse_unsupported(cfg, accelerator)
    processes = accelerator.num_processes
    if processes > 1:  # one process says nothing: the single-process run stays quiet
        log.info("%d processes (%s), this is process %d", processes, accelerator.distributed_type,
                 accelerator.process_index)
    quiet_other_processes(accelerator)
    allow_tf32(accelerator.device)  # Ampere and later: float32 matmuls and convolutions in TF32
    set_seed(cfg.train.seed)

    # The datasets are scanned before any weight is read (bad data stops the run early); the dataset needs the
    # loaded tokenizers. Its shuffle seed is what sd-scripts draws right after global seeding.
    data_plan = build_plan(cfg.data.datasets, skip_bad_files=cfg.data.skip_bad_files)
    # The U-Net is loaded after caching (below), when the frozen encoders have been released, unless
    # --base_weights are merged into it and the encoders before anything is cached.
    models = load_sdxl(cfg.model, accelerator.device, unet=bool(cfg.network.base_weights))
    # --base_weights change the frozen weights: merged before fp8/dtype placement and before LoRA exists.
    merge_base_weights(models.unet, models.text_encoder_1, models.text_encoder_2, cfg.network)
    tokens = functools.partial(tokenize, models.tokenizer_1, models.tokenizer_2,
                               max_token_length=cfg.model.max_token_length)
    # With several processes its batches are global ones (batch_size x processes), one shard per process.
    dataset = build_train_dataset(data_plan, seed=shuffle_seed(cfg.train.seed),
                                  prior_loss_weight=cfg.data.prior_loss_weight, tokenize=tokens, processes=processes)
    # Images held out by --validation_split: fixed order, no augmentation; cached together with training's.
    valid = build_validation_dataset(data_plan, seed=shuffle_seed(cfg.validation.seed), tokenize=tokens,
                                     processes=processes)
    # Frozen weights get their final dtypes (fp8 storage included) before LoRA is injected, so LoRA weights are
    # created directly in the network dtype (float32, or the training dtype with --full_fp16/--full_bf16).
    # The U-Net reaches the device only after caching (precision.py): caching then holds only VAE and encoders.
    placement = place_models(models, cfg.model, accelerator.device, defer_unet=True)

    # Latents are cached before LoRA exists; the VAE is then not needed on the device any more. Disk caches are
    # written by each machine's first process while its others wait, then read by all; memory caches: by each.
    to_disk = cfg.data.cache_latents_to_disk or cfg.data.cache_text_encoder_outputs_to_disk
    with accelerator.local_main_process_first() if to_disk else contextlib.nullcontext():
        latent_source = latent_source_for(cfg, models.vae, CacheGroup(dataset, valid), accelerator.device,
                                          placement.highvram)
        # Text-encoder outputs are cached from the frozen encoders (their LoRA does not train), which then leave.
        text_cache = text_cache_for(cfg, models, CacheGroup(dataset, valid), accelerator)
    # Frozen encoders whose outputs are cached leave before the U-Net is loaded, so the host never holds all four
    # models; LyCORIS builds modules on every model, trained or not, so with it they leave after it is built.
    lycoris = cfg.network.lycoris is not None
    if not lycoris:
        release_text_encoders(cfg, models, text_cache)
    if models.unet is None:
        models.unet = load_unet(cfg.model, accelerator.device)
    place_unet(models.unet, placement)
    # Hashing the multi-GB base model for the metadata runs in a background thread from here to the first save:
    # after every load, so that it reads the file from the page cache instead of competing with loading for it.
    model_hashes = ModelHashes(cfg.model.pretrained_model_name_or_path, cfg.model.vae)

    handles = build_network(models.unet, models.text_encoder_1, models.text_encoder_2, cfg.network)
    if lycoris:
        release_text_encoders(cfg, models, text_cache)
    trainable = {c: handles.parameters(c) for c in ("unet", "te1", "te2")}
    for params in trainable.values():
        for p in params:
            p.data = p.data.to(placement.network_dtype)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(models, cfg.network.train_text_encoder)
    compile_unet(models.unet, cfg)  # --torch_compile: in place, with LoRA and checkpointing in it

    # The dataset shuffles the batches of all datasets itself, seeded per epoch (sd-scripts order).
    optimizer = build_optimizer(cfg.optim, param_groups(handles, cfg.network, cfg.optim),
                                fp32_masters=cfg.model.full_fp16)
    # The plan counts one process's batches after prepare (spec 1.10): the loader holds each global batch once per
    # process and accelerate hands each process its own items, so that is dataset.num_batches (checked below).
    plan = plan_steps(dataset.num_batches, cfg.train.gradient_accumulation_steps, cfg.train.max_train_steps,
                      cfg.train.max_train_epochs)
    dataset.set_schedule(plan.max_train_steps, cfg.train.gradient_accumulation_steps)
    # The schedule counts optimizer steps (the loop steps it, or DeepSpeed's engine; accelerate would step it once
    # per process): warmup fractions are of the global step count, and a state resumes on another process count.
    scheduler = build_scheduler(cfg.optim, optimizer, plan.max_train_steps)
    if processes > 1 and cfg.network.train_text_encoder:
        ignore_unused_parameters(models.text_encoder_1)
    # Only models that train are prepared; with DeepSpeed together, in one engine with the optimizer.
    unet, te1, te2, optimizer, loader, scheduler = distributed.prepare_models(
        accelerator, cfg, models.unet, models.text_encoder_1, models.text_encoder_2, optimizer,
        data_loader(dataset, cfg, accelerator.device), scheduler, network=getattr(handles, "network", None))
    if len(loader) != plan.batches_per_epoch:
        raise RuntimeError(f"one process's loader has {len(loader)} batches, the plan {plan.batches_per_epoch}")
    _log_plan(plan, dataset, trainable, processes, cfg.train.gradient_accumulation_steps)
    text_source = text_cache or text_source_for(cfg, te1, te2, accelerator.device,
                                                projection=accelerator.unwrap_model(te2).text_projection)

    saver = RunSaver(cfg, handles, session_id=session_id, started_at=started_at, dataset=dataset, plan=plan,
                     optimizer=optimizer, model_hashes=model_hashes, num_processes=accelerator.num_processes)
    parts = step_parts(models, unet, latent_source, text_source, accelerator, placement, cfg)
    # A dedicated generator for timesteps and noise, separate from data shuffling; seeded alike on every process,
    # which draws for the whole global batch and keeps its rows.
    noise_generator = torch.Generator(accelerator.device).manual_seed(cfg.train.seed)
    # Resuming restores weights, optimizer, scheduler, position and every RNG.
    global_batches = tuple(d.batch_size for d in dataset.datasets)
    state, rngs = start_state(cfg, plan, handles, optimizer, scheduler, accelerator, global_batches)
    if rngs is not None:
        restore_rngs(rngs, noise_generator)
    validate = None
    if valid is not None:
        validate = functools.partial(
            validation_loss, data_loader(validation_shard(valid, accelerator), cfg, accelerator.device),
            fixed_timestep_step(training_step, parts, cfg),
            validation_timesteps(cfg.noise.min_timestep, cfg.noise.max_timestep), cfg.validation.seed,
            cfg.validation.max_steps, device=accelerator.device, optimizer=optimizer,
            modules=(unet, te1, te2, getattr(handles, "network", None)))
        validate = functools.partial(lambda one: mean_over_processes(accelerator, one()), validate)
    sample = None
    if prompts:  # samples come from the live models, LoRA applied; the main process samples every prompt
        settings = sample_settings(cfg, accelerator.device, placement.weight_dtype)
        sample = functools.partial(sample_with, optimizer,
                                   functools.partial(generate_samples, models, prompts, settings))
    trackers = Trackers(cfg.log)
    trackers.start(accelerator, cfg.args)
    events = Events(
        cfg, accelerator, saver, trackers=trackers, num_epochs=plan.num_epochs, validate=validate,
        prompts=tuple(prompts), sample=sample, text_cached=text_cache is not None,
        progress=Progress(Path(cfg.save.output_dir) / f"{final_name(cfg.save.output_name)}-status.json",
                          total_steps=plan.max_train_steps, num_epochs=plan.num_epochs, start_step=state.step,
                          enabled=accelerator.is_main_process),
        uploader=Uploader(cfg.hub) if cfg.hub.repo_id and accelerator.is_main_process else None,
        snapshot=functools.partial(state_files, handles, optimizer, scheduler, accelerator, global_batches),
        gather_rngs=functools.partial(gather_rngs, accelerator, functools.partial(capture_rngs, noise_generator)),
        meter=LossMeter(sum_over_processes=sum_over_processes(accelerator), processes=processes,
                        main=accelerator.is_main_process))

    try:
        events.start(state)
        while state.epoch < plan.num_epochs and state.step < plan.max_train_steps:
            unet.train()
            handles.train()  # LoRA dropouts act in training mode, in the text encoders too
            # A resumed epoch skips the batches already trained (the sampler skips them: no image is read).
            epoch_loader = accelerator.skip_first_batches(loader, state.batch) if state.batch else loader
            # accelerate's loader passes its own iteration count to dataset.set_epoch when iterated: align it.
            epoch_loader.set_epoch(state.epoch)
            dataset.set_epoch(state.epoch)
            step_loss, step_batches = 0.0, 0
            for batch in epoch_loader:
                with accelerator.accumulate(unet, te1, te2):
                    loss = training_step(batch, parts, cfg, noise_generator)
                    accelerator.backward(loss)
                    # --fused_backward_pass: the optimizer already stepped (and clipped) each tensor in backward.
                    if accelerator.sync_gradients and cfg.optim.max_grad_norm and not cfg.optim.fused_backward_pass:
                        accelerator.clip_grad_norm_(trained_parameters(optimizer), cfg.optim.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if accelerator.sync_gradients and cfg.network.scale_weight_norms:
                        max_norm_regularize(handles, cfg.network.scale_weight_norms)
                state.batch += 1
                step_loss, step_batches = step_loss + loss.detach(), step_batches + 1  # on the device: no sync
                if not accelerator.sync_gradients:
                    continue
                state.step, state.micro_step = state.step + 1, accelerator.step
                events.step_done(state, step_loss / step_batches, lr_snapshot(optimizer.param_groups),
                                 tuple(batch.shard.paths if batch.shard else batch.paths))
                step_loss, step_batches = 0.0, 0
                if state.step >= plan.max_train_steps:
                    break
            state.next_epoch()  # the last epoch too: its logs, validation and samples happen (sd-scripts)
            events.epoch_done(state)

        set_train_mode(optimizer, False)  # schedule-free optimizers: save the averaged (evaluation) weights
        report_agreement(accelerator, [p for params in trainable.values() for p in params])
        path = events.finish(state, datasets=dataset.metadata_datasets(), samples=events.samples)
        accelerator.wait_for_everyone()  # the processes leave together (a process group torn down early can hang)
    except KeyboardInterrupt:
        events.progress.finish("interrupted", step=state.step)
        raise
    finally:
        trackers.end()
    accelerator.end_training()
    return RunResult(output_path=path, losses=events.meter.values, steps=state.step, epochs=plan.num_epochs,
                     models=models, written=tuple(events.written), seconds=time.time() - started_at,
                     validation_losses=tuple(events.validation_losses))


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
    time_ids = size_conditioning(batch).to(acc.device, torch.float32, non_blocking=True)
    # With several processes drawn for the whole global batch, this process keeping its rows.
    shard = batch.shard
    noise, timesteps, perturbed = noise_math.draw(latents, cfg.noise, generator, shard and shard.rows,
                                                  shard and shard.size)
    noisy = noise_math.noisy_latents(parts.alphas_cumprod, latents, perturbed, timesteps)
    with acc.autocast():
        pred = parts.unet(noisy.to(wd), timesteps, context.to(wd),
                          added_cond_kwargs={"text_embeds": pooled.to(wd), "time_ids": time_ids}).sample
    target = (noise_math.velocity(parts.alphas_cumprod, latents, noise, timesteps)
              if cfg.loss.v_parameterization else noise)
    loss = losses.training_loss(pred, target, timesteps, cfg=cfg.loss, alphas_cumprod=parts.alphas_cumprod,
                                snr_table=parts.snr, loss_weights=batch.loss_weights.to(acc.device, non_blocking=True),
                                mask=batch.masks)
    return loss * shard.loss_scale if shard else loss  # DDP's gradient mean is then the global batch's


def size_conditioning(batch: Batch) -> torch.Tensor:
    """SDXL micro-conditioning (spec 5.6): [orig_h, orig_w, crop_top, crop_left, target_h, target_w]."""
    from sdxl_lora.models.text import size_time_ids

    return size_time_ids(batch.original_size_hw, batch.crop_top_left, batch.target_size_hw)


def _log_plan(plan, dataset, trainable, processes: int, accumulation: int) -> None:
    counts = {k: sum(p.numel() for p in v) for k, v in trainable.items()}
    sizes = sorted({d.batch_size for d in dataset.datasets})
    log.info("global batch %s = batch size %s x %d processes x %d accumulation; batches per epoch %d, %d "
             "optimizer steps over %d epochs; trainable LoRA parameters %s",
             "/".join(str(s * accumulation) for s in sizes), "/".join(str(s // processes) for s in sizes),
             processes, accumulation, plan.batches_per_epoch, plan.max_train_steps, plan.num_epochs, counts)


def loss_summary(step_losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and last tenth of the run (at least one step each)."""
    n = max(1, math.ceil(len(step_losses) / 10))
    return sum(step_losses[:n]) / n, sum(step_losses[-n:]) / n
