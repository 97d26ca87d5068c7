"""sd-scripts' distributed options through accelerate (spec 1.8, 1.15): the process-group and DDP kwargs handlers,
and DeepSpeed's plugin, for `Accelerator(...)`; then the prepare step, which with DeepSpeed wraps every trained
model in one module (accelerate gives DeepSpeed one model and its optimizer per `prepare` call).

DeepSpeed is optional: it is imported only when --deepspeed is given (or accelerate was configured for it), and a
missing or unusable install is one line naming --deepspeed before any model loads.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.util
import os
from collections.abc import Iterator, Mapping

import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.schema import DistributedConfig, RunConfig

INSTALL = "pip install deepspeed (or pip install -e '.[deepspeed]'; docs/deepspeed.md)"
LAUNCH = "accelerate launch --use_deepspeed --num_processes N sdxl_train_network.py ... (or torchrun)"


def accelerator_kwargs(cfg: RunConfig, env: Mapping[str, str] = os.environ) -> dict:
    """Keyword arguments for Accelerator(...): `kwargs_handlers` for --ddp_*, `deepspeed_plugin` for --deepspeed
    ({} when none is set). Raises ConfigError naming --deepspeed when DeepSpeed cannot run here."""
    kwargs: dict = {}
    handlers = kwargs_handlers(cfg.distributed)
    if handlers:
        kwargs["kwargs_handlers"] = handlers
    if cfg.distributed.deepspeed:
        check_deepspeed(cfg.model.mixed_precision, env)
        kwargs["deepspeed_plugin"] = deepspeed_plugin(
            cfg.distributed, mixed_precision=cfg.model.mixed_precision,
            gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
            max_grad_norm=cfg.optim.max_grad_norm,
            micro_batch_size=max((d.batch_size for d in cfg.data.datasets), default=1),
            world_size=int(env.get("WORLD_SIZE", "1")))
    return kwargs


def kwargs_handlers(cfg: DistributedConfig) -> list:
    """InitProcessGroupKwargs for --ddp_timeout; DistributedDataParallelKwargs for the two DDP flags. accelerate
    uses each only where it creates a process group or wraps a model in DDP."""
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    handlers: list = []
    if cfg.ddp_timeout_minutes:
        handlers.append(InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=cfg.ddp_timeout_minutes)))
    if cfg.ddp_gradient_as_bucket_view or cfg.ddp_static_graph:
        handlers.append(DistributedDataParallelKwargs(gradient_as_bucket_view=cfg.ddp_gradient_as_bucket_view,
                                                      static_graph=cfg.ddp_static_graph))
    return handlers


def check_deepspeed(mixed_precision: str, env: Mapping[str, str] = os.environ) -> None:
    """DeepSpeed is installed, the run was started by a launcher, accelerate was not also given a DeepSpeed
    config file, and the device supports the precision; else one line naming --deepspeed."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"--deepspeed: DeepSpeed is not installed: {INSTALL}")
    config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if config_file != "none":
        raise ConfigError(f"--deepspeed: accelerate was also given a DeepSpeed config file ({config_file}); use "
                          "either that file (launch without --deepspeed) or the --deepspeed options")
    if env.get("LOCAL_RANK") is None or env.get("WORLD_SIZE") is None:
        raise ConfigError(f"--deepspeed: start the run with a launcher that sets LOCAL_RANK and WORLD_SIZE, e.g. "
                          f"{LAUNCH}")
    if mixed_precision in ("fp16", "bf16"):
        from deepspeed.accelerator import get_accelerator

        device = get_accelerator()
        supported = device.is_fp16_supported() if mixed_precision == "fp16" else device.is_bf16_supported()
        if not supported:
            raise ConfigError(f"--deepspeed with --mixed_precision {mixed_precision}: DeepSpeed's "
                              f"{device.device_name()} accelerator does not support {mixed_precision} on this "
                              "machine")


def deepspeed_plugin(cfg: DistributedConfig, *, mixed_precision: str, gradient_accumulation_steps: int,
                     max_grad_norm: float, micro_batch_size: int, world_size: int):
    """accelerate's DeepSpeedPlugin as sd-scripts builds it: ZeRO stage and offload from the flags, gradient
    clipping given to DeepSpeed (0 = none), fp16's initial loss scale 2^0, fp16 master weights when asked.
    Every field is set here, so no ACCELERATE_DEEPSPEED_* variable of an accelerate config changes it. ZeRO-3's
    deepspeed.zero.Init stays off: the frozen weights are loaded and placed before they are partitioned."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(
        zero_stage=cfg.zero_stage, gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_clipping=float(max_grad_norm),
        offload_optimizer_device=cfg.offload_optimizer_device or "none",
        offload_optimizer_nvme_path=cfg.offload_optimizer_nvme_path or "none",
        offload_param_device=cfg.offload_param_device or "none",
        offload_param_nvme_path=cfg.offload_param_nvme_path or "none",
        zero3_init_flag=False, zero3_save_16bit_model=cfg.zero3_save_16bit_model, hf_ds_config="none")
    config = plugin.deepspeed_config
    # DeepSpeed checks train_batch_size == micro batch x accumulation x processes.
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["train_batch_size"] = micro_batch_size * gradient_accumulation_steps * world_size
    plugin.set_mixed_precision(mixed_precision)
    if mixed_precision == "fp16":
        config["fp16"]["initial_scale_power"] = 0  # a loss scale of 1 to start (sd-scripts: avoids overflow)
        if cfg.fp16_master_weights_and_gradients:
            config["fp16"]["fp16_master_weights_and_grads"] = True
    return plugin


class TrainedModels(torch.nn.Module):
    """The trained models in one module, so that accelerate prepares them with the optimizer in one DeepSpeed
    engine. The loop keeps calling each model itself; ZeRO's hooks sit on their parameters and submodules."""

    def __init__(self, models: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        self.models = torch.nn.ModuleDict(models)

    def forward(self, *args, **kwargs):
        raise RuntimeError("TrainedModels only groups the models for DeepSpeed; call each model itself")


def prepare_models(accelerator, cfg: RunConfig, unet, te1, te2, optimizer, loader, scheduler, network=None):
    """accelerator.prepare for the run; returns (unet, te1, te2, optimizer, loader, scheduler) to train with.

    Without DeepSpeed: optimizer and loader (the scheduler is returned as it is), then each model that trains
    (DDP refuses a model without trainable parameters). With DeepSpeed (--deepspeed, or an accelerate config that
    asks for it): the trained models, and `network` (a LyCORIS network, whose modules live outside the models),
    in one TrainedModels, prepared with the optimizer in one call; the loop keeps calling the models themselves.
    Under mixed precision each model's forward then runs in autocast (DeepSpeed casts the weights, accelerate's
    autocast is off)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        # The scheduler stays unprepared: the loop steps it once per optimizer step (accelerate would step it once
        # per process); DeepSpeed's engine steps the one it is given once per optimizer step too.
        optimizer, loader = accelerator.prepare(optimizer, loader)
        if cfg.network.train_unet:
            unet = accelerator.prepare(unet)
        if cfg.network.train_text_encoder:
            te1, te2 = accelerator.prepare(te1, te2)
        return unet, te1, te2, optimizer, loader, scheduler
    trained = {name: model for name, model, trains in (("unet", unet, cfg.network.train_unet),
                                                       ("text_encoder1", te1, cfg.network.train_text_encoder),
                                                       ("text_encoder2", te2, cfg.network.train_text_encoder))
               if trains}
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.model.mixed_precision)
    if dtype is not None:
        for model in trained.values():
            autocast_forward(model, accelerator.device.type, dtype)
    if network is not None:
        trained["network"] = network
    if accelerator.state.deepspeed_plugin.zero_stage == 3 and cfg.network.train_text_encoder:
        zero3_whole_embeddings(te1, te2)
    _, optimizer, loader, scheduler = accelerator.prepare(TrainedModels(trained), optimizer, loader, scheduler)
    return unet, te1, te2, optimizer, loader, scheduler


def zero3_whole_embeddings(*text_encoders) -> None:
    """ZeRO-3 gathers a module's parameters when that module runs; CLIP's embeddings read their position table's
    shape before running it (a partitioned table has 0 rows), so each embeddings module is gathered whole."""
    from deepspeed.utils import set_z3_leaf_modules

    for encoder in text_encoders:
        set_z3_leaf_modules(encoder, ["CLIPTextEmbeddings"])


def autocast_forward(model: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
    """Run `model`'s forward in torch.autocast from now on (an instance attribute, as accelerate does for DDP)."""
    forward = model.forward

    @functools.wraps(forward)
    def autocast(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=dtype):
            return forward(*args, **kwargs)

    model.forward = autocast


@contextlib.contextmanager
def full_parameters(params) -> Iterator[None]:
    """Inside the block, parameters partitioned by ZeRO-3 hold their whole values (gathered from every process, so
    every process must enter it); a no-op for any other parameter. Reading LoRA weights to save them needs it."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def describe(cfg: DistributedConfig) -> str | None:
    """One line for `sdxl-lora check`: the DeepSpeed and DDP settings given (None when none is), and whether
    DeepSpeed is installed here."""
    parts = []
    if cfg.deepspeed:
        parts.append(f"DeepSpeed ZeRO stage {cfg.zero_stage}")
        for kind, device, path in (("optimizer states", cfg.offload_optimizer_device, cfg.offload_optimizer_nvme_path),
                                   ("parameters", cfg.offload_param_device, cfg.offload_param_nvme_path)):
            if device:
                parts.append(f"{kind} offloaded to {device}" + (f" ({path})" if device == "nvme" else ""))
        if cfg.fp16_master_weights_and_gradients:
            parts.append("fp16 master weights and gradients")
        if importlib.util.find_spec("deepspeed") is None:
            parts.append(f"DeepSpeed is not installed here: {INSTALL}")
    if cfg.ddp_timeout_minutes:
        parts.append(f"process-group timeout {cfg.ddp_timeout_minutes} min")
    parts += [f"DDP {name}" for name, on in (("gradient_as_bucket_view", cfg.ddp_gradient_as_bucket_view),
                                             ("static_graph", cfg.ddp_static_graph)) if on]
    return "; ".join(parts) or None
