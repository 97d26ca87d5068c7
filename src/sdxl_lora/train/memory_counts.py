"""The inputs of the memory estimate (train/memory.py), from the configuration alone: the models' parameter
counts and LoRA shapes from meta-device models built from their configs (no weight is read), the settings from
RunConfig and the dataset plan; and the real peak read on a CUDA device in the first training steps."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from sdxl_lora.config.schema import NetworkConfig, RunConfig
from sdxl_lora.train.memory import WATCH_STEPS, ModelCounts, Settings, estimate, near_limit_warning, render_estimate

log = logging.getLogger(__name__)


def source_configs(model_path: str) -> tuple[dict[str, dict], str]:
    """Component configs of --pretrained_model_name_or_path, read without any weight: a diffusers folder's (or
    cached hub snapshot's) config.json files, a single file's recorded configs or its header's shapes. A hub id
    that is not cached gives SDXL base's shipped configs. Returns (configs, where they came from)."""
    from sdxl_lora.config.sources import detect_source
    from sdxl_lora.models import configs as cfgs
    from sdxl_lora.models.errors import ModelLoadError
    from sdxl_lora.models.folder import folder_configs

    kind = detect_source(model_path)
    if kind == "diffusers_dir":
        return folder_configs(Path(model_path).expanduser()), "the folder's configs"
    if kind == "hub_id":
        from sdxl_lora.models.hub import resolve_cached

        try:
            return folder_configs(resolve_cached(model_path)), "the cached snapshot's configs"
        except ModelLoadError:
            return {c: cfgs.shipped_config(c) for c in cfgs.SUBFOLDER}, "SDXL base's configs (not cached)"
    return _single_file_configs(Path(model_path).expanduser()), "the file's header"


def _single_file_configs(path: Path) -> dict[str, dict]:
    from sdxl_lora.models import configs as cfgs
    from sdxl_lora.models.checkpoint_io import open_checkpoint
    from sdxl_lora.models.errors import ModelLoadError
    from sdxl_lora.models.single_file import FILE_PREFIX, group_keys, model_shapes

    with open_checkpoint(path) as ckpt:
        recorded = cfgs.recorded_configs(ckpt.metadata)
        if recorded and all(c in recorded for c in cfgs.SUBFOLDER):
            return recorded
        groups = group_keys(ckpt.keys)
        shapes = {c: model_shapes(ckpt, c, names, FILE_PREFIX[c]) for c, names in groups.items() if names}
    try:
        configs = cfgs.infer_configs(shapes)
    except KeyError as err:
        raise ModelLoadError(f"{path}: cannot size the model from its tensors: {err} is missing") from None
    return {c: configs.get(c) or cfgs.shipped_config(c) for c in cfgs.SUBFOLDER}


def count_models(network: NetworkConfig, configs: dict[str, dict]) -> ModelCounts:
    """Parameter counts per component, how many of them fp8 storage shrinks, and the LoRA tensor shapes of the
    real module plan, all on meta-device models: the project's own placement and plan code, no weight."""
    from sdxl_lora.models.configs import build_empty
    from sdxl_lora.models.fp8 import FP8, store_in_fp8
    from sdxl_lora.models.precision import UNET_KEEP
    from sdxl_lora.network.lora import plan_modules

    models = {c: build_empty(c, configs[c]) for c in ("unet", "te1", "te2", "vae")}
    weights = {c: _floats(m) for c, m in models.items()}
    trained = {"unet": models["unet"]} if network.train_unet else {}
    if network.train_text_encoder:
        trained |= {"te1": models["te1"], "te2": models["te2"]}
    specs = plan_modules(trained, network)
    modules = {c: dict(m.named_modules()) for c, m in trained.items()}
    shapes: dict[str, list[tuple[int, ...]]] = {c: [] for c in trained}
    for spec in specs:
        shapes[spec.component] += _lora_shapes(modules[spec.component][spec.path], spec.rank)
    # The real fp8 storage on the meta models (as place_models applies it): what it leaves 1 byte wide is what
    # --fp8_base saves; counted for U-Net and text encoders alike, the estimate applies the flags.
    for c in ("unet", "te1", "te2"):
        store_in_fp8(models[c].requires_grad_(False), torch.bfloat16, UNET_KEEP if c == "unet" else ())
    fp8 = {c: sum(p.numel() for p in m.parameters() if p.dtype == FP8) for c, m in models.items()}
    return ModelCounts(weights=weights, fp8_weights=fp8, lora_shapes={c: tuple(s) for c, s in shapes.items()})


def _floats(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() for t in tensors if t.is_floating_point())


def _lora_shapes(layer: torch.nn.Module, rank: int) -> list[tuple[int, ...]]:
    """LoRA down and up of one Linear / Conv2d: (r, in) and (out, r); a conv's down has its kernel, its up is 1x1."""
    if isinstance(layer, torch.nn.Conv2d):
        return [(rank, layer.in_channels, *layer.kernel_size), (layer.out_channels, rank, 1, 1)]
    return [(rank, layer.in_features), (layer.out_features, rank)]


def settings_for(cfg: RunConfig, datasets: list[dict] | None = None) -> Settings:
    """The estimate's settings; the activations are sized by the dataset whose batch size times largest bucket
    area is largest: from check's report (`datasets`), else from the dataset configs' resolutions."""
    candidates = [(d.batch_size, tuple(d.resolution)) for d in cfg.data.datasets] or [(1, (1024, 1024))]
    if datasets:
        candidates = []
        for d in datasets:
            sizes = [(b["width"], b["height"]) for b in d["buckets"]] or [tuple(d["resolution"])]
            candidates.append((d["batch_size"], max(sizes, key=lambda s: s[0] * s[1])))
    batch, size = max(candidates, key=lambda c: c[0] * c[1][0] * c[1][1])
    m, o = cfg.model, cfg.optim
    return Settings(
        mixed_precision=m.mixed_precision, fp8_base=m.fp8_base, fp8_base_unet=m.fp8_base_unet,
        no_half_vae=m.no_half_vae, full_fp16=m.full_fp16, full_bf16=m.full_bf16,
        optimizer_type=o.optimizer_type, optimizer_args=dict(o.optimizer_args),
        fused_backward_pass=o.fused_backward_pass, gradient_checkpointing=cfg.train.gradient_checkpointing,
        cache_latents=cfg.data.cache_latents, cache_text_encoder_outputs=cfg.data.cache_text_encoder_outputs,
        train_text_encoder=cfg.network.train_text_encoder, batch_size=batch, resolution=size,
        vae_batch_size=cfg.data.vae_batch_size, unet_while_caching=m.lowram and bool(cfg.network.base_weights))


def memory_report(cfg: RunConfig, datasets: list[dict]) -> dict:
    """`sdxl-lora check`'s memory section: the estimate's parts and peak in bytes, and the lines it prints
    (against the GPU when one is visible, with what to change when it does not fit)."""
    from sdxl_lora.models.configs import SUBFOLDER, shipped_config
    from sdxl_lora.models.errors import ModelLoadError

    try:
        configs, source = source_configs(cfg.model.pretrained_model_name_or_path)
    except ModelLoadError as err:  # check validates the configuration; the model file is the loader's to judge
        configs = {c: shipped_config(c) for c in SUBFOLDER}
        source = f"SDXL base's configs: the model's own could not be read ({err})"
    counts = count_models(cfg.network, configs)
    settings = settings_for(cfg, datasets)
    auto_cached = not settings.cache_text_encoder_outputs and auto_text_cache(cfg, settings, counts, configs,
                                                                              datasets)
    if auto_cached:
        settings = replace(settings, cache_text_encoder_outputs=True)
    total, name = None, ""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        total, name = props.total_memory, props.name
    result = estimate(counts, settings)
    lines = render_estimate(counts, settings, total, name)
    lines.insert(1, f"  (models counted from {source}; docs/memory.md says what is counted and how)")
    if auto_cached:
        lines.insert(2, "  (frozen text encoders and fixed captions: their outputs are cached before training, as "
                        "--cache_text_encoder_outputs would, and the encoders leave the device)")
    if cfg.network.lycoris is not None or (cfg.network.network_weights and cfg.network.dim_from_weights):
        which = "LyCORIS" if cfg.network.lycoris is not None else "--dim_from_weights"
        lines.insert(2, f"  ({which}: the network is counted as LoRA of the configured rank, approximately)")
    return {"peak_bytes": result.peak, "training_bytes": dict(result.parts), "caching_bytes": result.caching,
            "lora_parameters": counts.lora_params, "resolution": list(settings.resolution),
            "batch_size": settings.batch_size, "gpu_bytes": total, "lines": lines}


def auto_text_cache(cfg: RunConfig, settings: Settings, counts: ModelCounts, configs: dict[str, dict],
                    datasets: list[dict]) -> bool:
    """Whether training will cache the text-encoder outputs by itself (setup.auto_text_cache), judged from the
    configuration: every image and held-out image counted as one distinct caption, plus the empty one."""
    from sdxl_lora.models.text import num_chunks
    from sdxl_lora.train.memory import weight_bytes
    from sdxl_lora.train.setup import auto_text_cache_expected

    captions = 1 + sum(s["images"] + s.get("validation_images", 0) for d in datasets for s in d["subsets"])
    tokens = num_chunks(cfg.model.max_token_length) * 75 + 2
    width = configs["te1"]["hidden_size"] + configs["te2"]["hidden_size"]
    weights = weight_bytes(counts, settings)
    return auto_text_cache_expected(cfg, captions, (tokens, width), configs["te2"]["projection_dim"],
                                    weights.get("te1", 0) + weights.get("te2", 0))


class MemoryWatch:
    """The real peak after each of the first WATCH_STEPS steps on a CUDA device; warns once near the limit."""

    def __init__(self, cfg: RunConfig, text_cached: bool | None = None) -> None:
        """`text_cached`: whether training cached the text-encoder outputs (also by itself, for frozen encoders
        with fixed captions); None takes --cache_text_encoder_outputs."""
        self.settings = settings_for(cfg)
        if text_cached is not None:
            self.settings = replace(self.settings, cache_text_encoder_outputs=text_cached)
        self.done = False

    def after_step(self, step: int, device: torch.device) -> str | None:
        """The warning (also logged) when this step's peak is within 5% of the card; else None."""
        if self.done or step > WATCH_STEPS or torch.device(device).type != "cuda":
            return None
        peak, total = device_peak(device)
        warning = near_limit_warning(step, peak, total, self.settings)
        if warning is not None:
            self.done = True
            log.warning("%s", warning)
        return warning


def device_peak(device: torch.device) -> tuple[int, int]:
    """(peak bytes in use on the card, its total): the allocator's peak reservation plus what it does not
    count (CUDA context, other processes), taken as used minus reserved now."""
    free, total = torch.cuda.mem_get_info(device)
    outside = (total - free) - torch.cuda.memory_reserved(device)
    return torch.cuda.max_memory_reserved(device) + max(0, outside), total
