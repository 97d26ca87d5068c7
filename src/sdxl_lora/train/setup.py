"""Setup steps of a run that sit between the parts: where latents and text conditioning come from (live or
cached), gradient checkpointing, the data loader's workers."""

from __future__ import annotations

import functools

import torch

from sdxl_lora.config.schema import RunConfig
from sdxl_lora.models.text import tokenize


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


def cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def data_loader(dataset, cfg: RunConfig) -> torch.utils.data.DataLoader:
    """One item per batch (the dataset batches and orders itself), in --max_data_loader_n_workers workers."""
    from sdxl_lora.data.dataset import collate_first

    workers = min(cfg.data.max_data_loader_n_workers, cpus())
    return torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=False, collate_fn=collate_first, num_workers=workers,
        persistent_workers=cfg.data.persistent_data_loader_workers and workers > 0,
        # Its own generator: starting an epoch then draws nothing from torch's global RNG (dropouts use it), so
        # a resumed run draws what the uninterrupted one did.
        generator=torch.Generator().manual_seed(cfg.train.seed))
