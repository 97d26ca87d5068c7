"""Setup steps of a run that sit between the parts: where latents and text conditioning come from (live or
cached), gradient checkpointing, the data loader's workers."""

from __future__ import annotations

import functools
import logging

import torch

from sdxl_lora.common.host import cpus, return_freed_memory
from sdxl_lora.config.schema import RunConfig
from sdxl_lora.models.text import tokenize
from sdxl_lora.sample.schedule import sampling_enabled

log = logging.getLogger(__name__)


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
    if sampling_enabled(cfg.sample):  # samples are decoded with it
        vae.to("cpu")
    else:
        release(vae)
    return CachedLatents(vae.config.scaling_factor, device)


def text_cache_for(cfg: RunConfig, models, dataset, accelerator):
    """None (the live text encoders run in each step), or every caption encoded once now: with
    --cache_text_encoder_outputs[_to_disk], or by itself in memory when that gives the same conditioning
    (auto_text_cache). The loader then stops tokenizing, and the frozen encoders leave the device."""
    from sdxl_lora.data.cache_files import module_identity
    from sdxl_lora.data.sources import CachedText
    from sdxl_lora.data.text_cache import CAPTION_VARIANTS, TextCacheSettings, build_text_cache
    from sdxl_lora.models.text import encode, num_chunks

    te1, te2, device = models.text_encoder_1, models.text_encoder_2, accelerator.device
    tokens = num_chunks(cfg.model.max_token_length) * 75 + 2
    settings = TextCacheSettings(
        to_disk=cfg.data.cache_text_encoder_outputs_to_disk, skip_check=cfg.data.skip_cache_check,
        batch_size=max(d.batch_size for d in cfg.data.datasets),
        identity=f"{module_identity(te1, te2)}|tokens={tokens}",
        context_shape=(tokens, te1.config.hidden_size + te2.config.hidden_size),
        pooled_shape=(te2.config.projection_dim,))
    if not (cfg.data.cache_text_encoder_outputs or auto_text_cache(cfg, dataset, settings, (te1, te2))):
        return None

    def encode_captions(captions):
        ids1, ids2 = tokenize(models.tokenizer_1, models.tokenizer_2, captions, cfg.model.max_token_length)
        with torch.no_grad(), accelerator.autocast():
            return encode(te1, te2, ids1.to(device), ids2.to(device))

    if cfg.data.cache_text_encoder_outputs:  # random caption processing: a few cached variants per image
        dataset.set_caption_variants(CAPTION_VARIANTS)
    store = build_text_cache(dataset.text_jobs(), encode_captions, settings)
    dataset.set_tokenize(None)
    te1.to("cpu")
    te2.to("cpu")
    return CachedText(store, device)


def auto_text_cache(cfg: RunConfig, dataset, settings, encoders) -> bool:
    """Whether to cache text-encoder outputs in memory without --cache_text_encoder_outputs: the encoders do not
    train and every caption is fixed for the run (captions.is_fixed), so the outputs are what the encoders would
    give in each step; and the cache takes less memory than the encoders (4 bytes per value, the float32 case)."""
    if cfg.data.cache_text_encoder_outputs_to_disk or cfg.network.train_text_encoder \
            or not dataset.captions_fixed():
        return False
    captions = len({job.caption for job in dataset.text_jobs()})
    cache_bytes = text_cache_bytes(captions, settings.context_shape, settings.pooled_shape[0])
    encoder_bytes = sum(p.numel() * p.element_size() for te in encoders for p in te.parameters())
    if cache_bytes > encoder_bytes:
        log.info("text encoders run in each step: caching the outputs of %d captions would take %.1f GiB, more "
                 "than the encoders (use --cache_text_encoder_outputs_to_disk to cache them on disk)", captions,
                 cache_bytes / 2**30)
        return False
    log.info("the text encoders are frozen and every caption is fixed: their outputs for %d captions are cached "
             "in memory before training (%.0f MiB), as --cache_text_encoder_outputs would", captions,
             cache_bytes / 2**20)
    return True


def text_cache_bytes(captions: int, context_shape: tuple[int, int], pooled_dim: int) -> int:
    """Host memory of the in-memory text-encoder cache: float32 context (tokens x width) and pooled output per
    distinct caption."""
    return captions * (context_shape[0] * context_shape[1] + pooled_dim) * 4


def auto_text_cache_expected(cfg: RunConfig, captions: int, context_shape: tuple[int, int], pooled_dim: int,
                             encoder_bytes: int) -> bool:
    """auto_text_cache's decision from the configuration alone (`sdxl-lora check`'s memory estimate), with
    `captions` an upper bound of the distinct captions: the captions of every subset are fixed (captions.is_fixed)
    and the cache is no larger than the encoders."""
    from sdxl_lora.data.captions import is_fixed

    if cfg.data.cache_text_encoder_outputs_to_disk or cfg.network.train_text_encoder:
        return False
    if not all(is_fixed(subset) for dataset in cfg.data.datasets for subset in dataset.subsets):
        return False
    return text_cache_bytes(captions, context_shape, pooled_dim) <= encoder_bytes


def release_text_encoders(cfg: RunConfig, models, text_cache) -> None:
    """Free the frozen text encoders once their outputs are cached, unless samples need them. LoRA only freezes
    an encoder it does not train (meta weights are fine); LyCORIS builds modules on it, so that comes first."""
    if text_cache is not None and not cfg.network.train_text_encoder and not sampling_enabled(cfg.sample):
        release(models.text_encoder_1, models.text_encoder_2)


def release(*modules) -> None:
    """Free frozen weights nothing will read again: they become meta tensors (shape and dtype, no storage), so
    the module objects stay valid while their memory, host or device, goes back. Moving them to "cpu" would
    keep them in host memory (and is no move at all in a CPU run). The freed heap pages are then returned to the
    system (common/host.py), or the process would stay as large as before."""
    for module in modules:
        module.to("meta")
    return_freed_memory()


def text_source_for(cfg: RunConfig, te1, te2, device, projection=None):
    """The live text encoders (prepared models, so that their LoRA trains through them); `projection` is TE2's
    text_projection reached through accelerator.unwrap_model (a DDP wrapper does not forward attributes)."""
    from sdxl_lora.data.sources import EncoderText
    from sdxl_lora.models.text import encode

    return EncoderText(functools.partial(encode, te1, te2, projection=projection), device,
                       trains=cfg.network.train_text_encoder)


def enable_gradient_checkpointing(models, text_encoders: bool) -> None:
    """Recompute activations in backward: U-Net always, text encoders only when they train."""
    models.unet.enable_gradient_checkpointing()
    if text_encoders:
        for te in (models.text_encoder_1, models.text_encoder_2):
            te.gradient_checkpointing_enable()
            te.train()


def compile_unet(unet, cfg: RunConfig) -> None:
    """--torch_compile: compile the U-Net's forward in place (nn.Module.compile: its state dict keeps its names,
    with no `_orig_mod.` prefix, and the LoRA layers inside it are compiled with it) with --dynamo_backend.
    dynamic=True traces sizes as symbols from the first call, so each bucket and a short last batch reuse the
    one compiled graph instead of compiling again. The backend was checked before loading (check.check_classes)."""
    import torch.fx.experimental._config

    if not cfg.train.torch_compile:
        return
    log.info("compiling the U-Net with torch.compile (backend %s, dynamic sizes); the first step takes longer",
             cfg.train.dynamo_backend)
    # Without this a square first bucket traces height == width and the first oblong bucket compiles again
    # (process-wide; it only changes how sizes are traced).
    torch.fx.experimental._config.use_duck_shape = False
    unet.compile(backend=cfg.train.dynamo_backend, dynamic=True)


def allow_tf32(device) -> bool:
    """On a CUDA device of compute capability 8.0 or more (Ampere and later), let float32 matmuls and cuDNN
    convolutions use TF32 tensor cores (10-bit mantissa inputs, float32 accumulation), as torch's "high" matmul
    precision does: the float32 parts of a step (LoRA weights, the --no_half_vae VAE, a --mixed_precision no run)
    then run several times faster. Returns whether it did; nothing changes on the CPU or older GPUs."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log.info("compute capability %d.%d: float32 matmuls and convolutions use TF32", major, minor)
    return True


def data_loader(dataset, cfg: RunConfig, device=None) -> torch.utils.data.DataLoader:
    """One item per batch (the dataset batches and orders itself), in up to --max_data_loader_n_workers workers,
    kept for the whole run (forking them again each epoch costs start-up and the first batch's wait every
    epoch). A dataset whose batches are only in-memory lookups loads in the main process: workers would
    only add the cost of passing each batch between processes (measured: 1.12x -> 1.06x the U-Net's step time).
    For a CUDA `device` batches come in pinned host memory (Batch.pin_memory), so their copy to the GPU can be
    non-blocking."""
    from sdxl_lora.data.dataset import collate_first

    workers = min(cfg.data.max_data_loader_n_workers, cpus())
    if workers and not dataset.reads_files():
        log.info("--max_data_loader_n_workers: batches come from the in-memory caches, loaded without workers")
        workers = 0
    return torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=False, collate_fn=collate_first, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device is not None and torch.device(device).type == "cuda",
        # Its own generator: starting an epoch then draws nothing from torch's global RNG (dropouts use it), so
        # a resumed run draws what the uninterrupted one did.
        generator=torch.Generator().manual_seed(cfg.train.seed))
