"""Learning-rate schedules (spec 9.2): sd-scripts' names, built with the transformers / diffusers functions
sd-scripts itself calls, so each curve is theirs step for step."""

from __future__ import annotations

import importlib
import inspect

import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.optimizer_args import is_schedule_free
from sdxl_lora.config.schema import OptimConfig
from sdxl_lora.train.steps import warmup_steps


def resolve_scheduler_type(name: str) -> type:
    """--lr_scheduler_type: 'package.module.Class', or a class of torch.optim.lr_scheduler."""
    module_name, _, class_name = (name if "." in name else f"torch.optim.lr_scheduler.{name}").rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        missing = (getattr(error, "name", None) or module_name).split(".")[0]
        raise ConfigError(f"--lr_scheduler_type {name}: needs the Python package '{missing}' "
                          f"(install it with: pip install {missing.replace('_', '-')})") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"--lr_scheduler_type {name}: {module_name} has no class {class_name}")
    return cls


def check_scheduler(cfg: OptimConfig) -> None:
    """Before any model loads: a --lr_scheduler_type class imports and takes every --lr_scheduler_args key."""
    if not cfg.lr_scheduler_type or is_schedule_free(cfg.optimizer_type):
        return
    cls = resolve_scheduler_type(cfg.lr_scheduler_type)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [key for key, _ in cfg.lr_scheduler_args if key not in params or key in ("self", "optimizer")]
    if unknown:
        raise ConfigError([f"--lr_scheduler_args {key}: {cls.__name__} has no argument {key}" for key in unknown])


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """The LR schedule over `total_steps` optimizer steps; --lr_warmup_steps and --lr_decay_steps fractions are
    of that total. (sd-scripts lets accelerate step it once per process, over max_train_steps x processes, so
    an integer warmup there shrinks with more processes; here it is stepped once per optimizer step.)"""
    from transformers import optimization as tf

    extra = dict(cfg.lr_scheduler_args)
    if is_schedule_free(cfg.optimizer_type):
        # The optimizer keeps the LR constant itself; a constant schedule keeps logging and state uniform.
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if cfg.lr_scheduler_type:
        return resolve_scheduler_type(cfg.lr_scheduler_type)(optimizer, **extra)
    name = cfg.lr_scheduler
    warmup = warmup_steps(cfg.lr_warmup_steps, total_steps)
    decay = warmup_steps(cfg.lr_decay_steps, total_steps)
    cycles = cfg.lr_scheduler_num_cycles
    if name == "adafactor":
        return tf.AdafactorSchedule(optimizer, cfg.learning_rate)
    if name == "piecewise_constant":
        from diffusers.optimization import get_piecewise_constant_schedule

        return get_piecewise_constant_schedule(optimizer, **extra)
    if name == "constant":
        return tf.get_constant_schedule(optimizer, **extra)
    if name == "constant_with_warmup":
        return tf.get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup, **extra)
    if name == "inverse_sqrt":
        return tf.get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup, timescale=cfg.lr_scheduler_timescale,
                                            **extra)
    span = {"num_warmup_steps": warmup, "num_training_steps": total_steps}
    if name == "linear":
        return tf.get_linear_schedule_with_warmup(optimizer, **span, **extra)
    if name == "cosine":
        return tf.get_cosine_schedule_with_warmup(optimizer, **span, **extra)
    if name == "cosine_with_restarts":
        return tf.get_cosine_with_hard_restarts_schedule_with_warmup(optimizer, **span, num_cycles=cycles, **extra)
    if name == "polynomial":
        return tf.get_polynomial_decay_schedule_with_warmup(optimizer, **span, power=cfg.lr_scheduler_power, **extra)
    if name == "cosine_with_min_lr":
        return tf.get_cosine_with_min_lr_schedule_with_warmup(optimizer, **span, num_cycles=cycles / 2,
                                                              min_lr_rate=cfg.lr_scheduler_min_lr_ratio, **extra)
    if name == "warmup_stable_decay":
        return tf.get_wsd_schedule(optimizer, num_warmup_steps=warmup, num_decay_steps=decay,
                                   num_stable_steps=total_steps - warmup - decay, num_cycles=cycles / 2,
                                   min_lr_ratio=cfg.lr_scheduler_min_lr_ratio or 0.0, **extra)
    raise ConfigError(f"--lr_scheduler {name}: unknown scheduler")
