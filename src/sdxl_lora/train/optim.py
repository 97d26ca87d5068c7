"""Optimizer construction (spec 9.1); the parameter groups come from network/groups.py. Each optimizer package is
imported only when chosen."""

from __future__ import annotations

import importlib
import inspect
import logging
import types

import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.optimizer_args import adafactor_relative_step, is_schedule_free
from sdxl_lora.config.schema import OptimConfig

log = logging.getLogger(__name__)


OPTIMIZER_CLASSES = {
    "adamw": "torch.optim.AdamW",
    "adamw8bit": "bitsandbytes.optim.AdamW8bit",
    "pagedadamw": "bitsandbytes.optim.PagedAdamW",
    "pagedadamw8bit": "bitsandbytes.optim.PagedAdamW8bit",
    "pagedadamw32bit": "bitsandbytes.optim.PagedAdamW32bit",
    "lion": "lion_pytorch.Lion",
    "lion8bit": "bitsandbytes.optim.Lion8bit",
    "pagedlion8bit": "bitsandbytes.optim.PagedLion8bit",
    "sgdnesterov": "torch.optim.SGD",
    "sgdnesterov8bit": "bitsandbytes.optim.SGD8bit",
    "dadaptation": "dadaptation.experimental.DAdaptAdamPreprint",
    "dadaptadampreprint": "dadaptation.experimental.DAdaptAdamPreprint",
    "dadaptadagrad": "dadaptation.DAdaptAdaGrad",
    "dadaptadam": "dadaptation.DAdaptAdam",
    "dadaptadan": "dadaptation.DAdaptAdan",
    "dadaptadanip": "dadaptation.experimental.DAdaptAdanIP",
    "dadaptlion": "dadaptation.DAdaptLion",
    "dadaptsgd": "dadaptation.DAdaptSGD",
    "prodigy": "prodigyopt.Prodigy",
    "adafactor": "transformers.optimization.Adafactor",
    "radamschedulefree": "schedulefree.RAdamScheduleFree",
    "adamwschedulefree": "schedulefree.AdamWScheduleFree",
    "sgdschedulefree": "schedulefree.SGDScheduleFree",
}
"""Lower-case --optimizer_type -> class path, for exactly the names config.options.OPTIMIZERS lists (spec 9.1).
Any other name is a class path ('package.module.Class') or a class of torch.optim (case-sensitive)."""

PIP_NAMES = {"bitsandbytes": "bitsandbytes", "lion_pytorch": "lion-pytorch", "dadaptation": "dadaptation",
             "prodigyopt": "prodigyopt", "transformers": "transformers", "schedulefree": "schedulefree",
             "pytorch_optimizer": "pytorch-optimizer", "prodigyplus": "prodigy-plus-schedule-free"}
"""Import name -> pip package, for the 'pip install' hint when an optimizer's package is missing."""

ADAPTIVE = ("dadapt", "prodigy")
"""Name prefixes of optimizers that find their own step size (D-Adaptation, Prodigy): --learning_rate ~ 1."""


def class_path(optimizer_type: str) -> str:
    """The dotted class path an --optimizer_type name stands for."""
    known = OPTIMIZER_CLASSES.get(optimizer_type.lower())
    if known:
        return known
    return optimizer_type if "." in optimizer_type else f"torch.optim.{optimizer_type}"


def resolve_optimizer(optimizer_type: str) -> type:
    """Import the optimizer class; a missing package or class is one line naming --optimizer_type."""
    path = class_path(optimizer_type)
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        top = module_name.split(".")[0]
        missing = getattr(error, "name", None) or top
        pip = PIP_NAMES.get(missing.split(".")[0], missing.split(".")[0].replace("_", "-"))
        raise ConfigError(f"--optimizer_type {optimizer_type}: needs the Python package '{missing}' "
                          f"(install it with: pip install {pip})") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        hint = "" if "." in optimizer_type else " (give 'package.module.Class' for other optimizers)"
        raise ConfigError(f"--optimizer_type {optimizer_type}: {module_name} has no optimizer class "
                          f"{class_name}{hint}")
    return cls


def optimizer_kwargs(cfg: OptimConfig) -> dict:
    """--optimizer_args plus what sd-scripts adds per optimizer (spec 9.1)."""
    name, kwargs = cfg.optimizer_type.lower(), dict(cfg.optimizer_args)
    if name in ("sgdnesterov", "sgdnesterov8bit"):
        kwargs.setdefault("momentum", 0.9)
        kwargs["nesterov"] = True
    if name == "adafactor":
        kwargs["relative_step"] = adafactor_relative_step(kwargs)
    return kwargs


def check_optimizer(cfg: OptimConfig) -> type:
    """Before any model loads: the class imports and accepts every --optimizer_args key."""
    cls = resolve_optimizer(cfg.optimizer_type)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return cls
    unknown = [key for key in optimizer_kwargs(cfg) if key not in params or key in ("self", "params")]
    if unknown:
        accepted = ", ".join(k for k in params if k not in ("self", "params", "lr"))
        raise ConfigError([f"--optimizer_args {key}: {cls.__name__} has no argument {key} (it takes: {accepted})"
                           for key in unknown])
    return cls


def build_optimizer(cfg: OptimConfig, groups: list[dict], *, fp32_masters: bool = False) -> torch.optim.Optimizer:
    """The --optimizer_type optimizer over the param groups, at lr = --learning_rate (spec 9.1). With
    `fp32_masters` (--full_fp16) it steps float32 copies of the half-precision weights (see with_fp32_masters)."""
    cls = check_optimizer(cfg)
    pairs = []
    if fp32_masters:
        groups, pairs = with_fp32_masters(groups)
    kwargs, lr = optimizer_kwargs(cfg), cfg.learning_rate
    name = cfg.optimizer_type.lower()
    if name.startswith(ADAPTIVE):
        _warn_adaptive(lr, groups)
    if name == "adafactor" and kwargs["relative_step"]:
        # Adafactor computes its own step size; --learning_rate only seeds the logged LR (adafactor scheduler).
        if any(group.pop("lr", None) not in (None, lr) for group in groups):
            log.warning("Adafactor with relative_step: --unet_lr and --text_encoder_lr are ignored")
        lr = None
    kwargs |= multi_tensor_kwargs(cls, kwargs, groups)
    log.info("optimizer %s.%s %s", cls.__module__, cls.__name__, kwargs or "")
    optimizer = cls(groups, lr=lr, **kwargs)
    if is_schedule_free(cfg.optimizer_type):
        set_train_mode(optimizer, True)
    if cfg.fused_backward_pass:
        fuse_into_backward(optimizer, lambda group: cls([group], lr=lr, **kwargs), cfg.max_grad_norm)
    if pairs:
        optimizer.fp32_masters = pairs
        optimizer.register_step_post_hook(lambda *_: _copy_masters(pairs))
    return optimizer


def multi_tensor_kwargs(cls: type, kwargs: dict, groups: list[dict]) -> dict:
    """torch.optim's fastest update path where the user's --optimizer_args choose none: `fused` (one kernel
    for all tensors) on CUDA, `foreach` (one op per step over all tensors) elsewhere. torch picks neither for CPU
    tensors and then updates each of the ~500 LoRA tensors with its own dozen small ops; foreach gives the
    same weights bit for bit, fused the same within float rounding. Other packages' optimizers are left alone."""
    if not cls.__module__.startswith("torch.optim.") or "foreach" in kwargs or "fused" in kwargs:
        return {}
    accepted = inspect.signature(cls.__init__).parameters
    on_cuda = all(p.is_cuda for group in groups for p in group["params"])
    if on_cuda and "fused" in accepted and all(p.is_floating_point() for g in groups for p in g["params"]):
        return {"fused": True}
    return {"foreach": True} if "foreach" in accepted else {}


def with_fp32_masters(groups: list[dict]) -> tuple[list[dict], list[tuple[torch.Tensor, torch.Tensor]]]:
    """--full_fp16: the model computes with fp16 LoRA weights and fp16 gradients (scaled by accelerate's
    GradScaler), while the optimizer holds a float32 master copy of each weight. Plain AdamW on fp16 weights breaks
    within steps (its eps and small updates vanish in fp16); sd-scripts does exactly that. Each fp16 gradient is
    moved into its master's float32 .grad as soon as backward completes it (accumulating over micro-batches); after
    each optimizer step the masters are copied back into the fp16 weights. Returns the groups over the masters and
    the (fp16 weight, master) pairs."""
    pairs, out = [], []
    for group in groups:
        masters = []
        for param in group["params"]:
            master = param.detach().float().requires_grad_(True)
            param.register_post_accumulate_grad_hook(_grad_to_master(master))
            masters.append(master)
            pairs.append((param, master))
        out.append({**group, "params": masters})
    return out, pairs


def _grad_to_master(master: torch.Tensor):
    def move(param: torch.Tensor) -> None:
        grad = param.grad.float()
        master.grad = grad if master.grad is None else master.grad.add_(grad)
        param.grad = None

    return move


def _copy_masters(pairs) -> None:
    with torch.no_grad():
        for param, master in pairs:
            param.copy_(master)


def trained_parameters(optimizer) -> list[torch.Tensor]:
    """The tensors the optimizer steps (their gradients are the ones to clip): the float32 masters with
    --full_fp16, else the LoRA weights."""
    return [p for group in getattr(optimizer, "optimizer", optimizer).param_groups for p in group["params"]]


def fuse_into_backward(lead: torch.optim.Optimizer, make, max_grad_norm: float) -> None:
    """--fused_backward_pass for LoRA: each trained tensor gets its own optimizer (same class, arguments and
    group settings), stepped by a hook as soon as its gradient is complete in backward; the gradient is then
    freed, so no step ever holds every gradient at once. `lead` keeps the param groups the LR scheduler sets
    (their LRs are copied over before each step) and its own step() becomes a no-op. --max_grad_norm clips each
    tensor's gradient separately (the global norm is not known until backward ends), as sd-scripts' fused
    full fine-tuning does."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        raise ConfigError("--fused_backward_pass works in a single process only (each gradient is used before "
                          "processes average them)")
    fused = []
    for index, group in enumerate(lead.param_groups):
        settings = {key: value for key, value in group.items() if key != "params"}
        for param in group["params"]:
            single = make({**settings, "params": [param]})
            fused.append(single)
            param.register_post_accumulate_grad_hook(_step_hook(single, lead, index, max_grad_norm))
    lead.fused_optimizers = fused  # one per tensor, in param-group order (their state is the real one)
    lead.step = types.MethodType(_fused_step, lead)  # bound, as LR schedulers expect


def _step_hook(single: torch.optim.Optimizer, lead: torch.optim.Optimizer, index: int, max_grad_norm: float):
    def step(param: torch.Tensor) -> None:
        # Looked up at each step: accelerate's prepare() replaces the group dicts (load_state_dict).
        single.param_groups[0]["lr"] = lead.param_groups[index]["lr"]
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_([param], max_grad_norm)
        single.step()
        single.zero_grad(set_to_none=True)

    return step


def _fused_step(self, closure=None) -> None:
    """The optimizer already stepped every tensor during backward."""


def optimizer_state(optimizer) -> dict:
    """The optimizer's state for a state folder; with --fused_backward_pass the per-tensor optimizers hold it."""
    inner = getattr(optimizer, "optimizer", optimizer)
    fused = getattr(inner, "fused_optimizers", None)
    state = {"optimizer": optimizer.state_dict()}
    if fused is not None:
        state["fused"] = [single.state_dict() for single in fused]
    masters = getattr(inner, "fp32_masters", None)
    if masters is not None:  # the float32 weights themselves: the fp16 ones are only their rounding
        state["fp32_masters"] = [master.detach().cpu().clone() for _, master in masters]
    return state


def load_optimizer_state(optimizer, state: dict) -> None:
    inner = getattr(optimizer, "optimizer", optimizer)
    fused = getattr(inner, "fused_optimizers", None)
    if (fused is None) != ("fused" not in state):
        raise ConfigError("--resume: the state was saved with a different --fused_backward_pass setting")
    masters = getattr(inner, "fp32_masters", None)
    if (masters is None) != ("fp32_masters" not in state):
        raise ConfigError("--resume: the state was saved with a different --full_fp16 setting")
    optimizer.load_state_dict(state["optimizer"])
    for single, saved in zip(fused or [], state.get("fused", []), strict=True):
        single.load_state_dict(saved)
    with torch.no_grad():
        for (param, master), saved in zip(masters or [], state.get("fp32_masters", []), strict=True):
            master.copy_(saved)
            param.copy_(saved)


def set_train_mode(optimizer, training: bool) -> None:
    """Schedule-free optimizers keep two weight sequences: train() before optimizer steps, eval() before the
    weights are read (saving, sampling, validation). A no-op for every other optimizer."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    method = getattr(inner, "train" if training else "eval", None)
    if callable(method):
        method()


def _warn_adaptive(lr: float, groups: list[dict]) -> None:
    if lr <= 0.1:
        log.warning("--learning_rate %g is low for D-Adaptation/Prodigy, which scale it themselves; "
                    "use about 1.0", lr)
    if len({group.get("lr", lr) for group in groups}) > 1:
        log.warning("D-Adaptation/Prodigy with several learning rates: they adapt one step size, "
                    "the per-group rates only scale it")
