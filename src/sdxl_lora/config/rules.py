"""Cross-option rules (spec 1.17 and the guide), each a small function returning the problems it finds.

Every message names the flag(s). Rules that also need the datasets take them as a second argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.logging_rules import logging_problems
from sdxl_lora.config.lycoris_args import LYCORIS_MODULE, parse_lycoris_args
from sdxl_lora.config.network_args import parse_lora_args
from sdxl_lora.config.optimizer_args import (
    adafactor_relative_step,
    is_schedule_free,
    parse_key_values,
    resolved_optimizer_type,
)
from sdxl_lora.config.options import OPTIMIZERS_ROADMAP, SCHEDULERS, WORKS, choice_status
from sdxl_lora.config.paths import path_problems
from sdxl_lora.config.sources import detect_source

SUPPORTED_NETWORK_MODULES = ("networks.lora", LYCORIS_MODULE)
ADAPTIVE_LR_OPTIMIZERS = ("dadaptation", "dadaptadampreprint", "dadaptadagrad", "dadaptadam", "dadaptadan",
                          "dadaptanip", "dadaptlion", "dadaptsgd", "dadaptadanip", "prodigy")
LORAPLUS_KEYS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")


def _required(v: dict) -> list[str]:
    out = []
    if not v.get("pretrained_model_name_or_path"):
        out.append("--pretrained_model_name_or_path is required (an SDXL diffusers folder, file or hub id)")
    else:
        try:
            detect_source(str(v["pretrained_model_name_or_path"]))
        except ConfigError as err:
            out += err.problems
    if not v.get("output_dir"):
        out.append("--output_dir is required (where the LoRA file is written)")
    if not v.get("network_module"):
        out.append("--network_module is required (use --network_module=networks.lora)")
    elif v["network_module"] not in SUPPORTED_NETWORK_MODULES:
        out.append(f"--network_module={v['network_module']}: only networks.lora and lycoris.kohya are supported")
    return out


def _positive(v: dict) -> list[str]:
    out = []
    for name in ("max_train_steps", "gradient_accumulation_steps", "train_batch_size", "vae_batch_size"):
        if v.get(name) is not None and v[name] < 1:
            out.append(f"--{name}={v[name]}: must be at least 1")
    for name in ("max_train_epochs", "network_dim", "save_every_n_epochs", "save_every_n_steps", "save_n_epoch_ratio",
                 "save_last_n_epochs", "save_last_n_steps", "save_last_n_epochs_state", "save_last_n_steps_state",
                 "initial_epoch"):
        if v.get(name) is not None and v[name] < 1:
            out.append(f"--{name}={v[name]}: must be at least 1")
    rates = [("learning_rate", v.get("learning_rate")), ("unet_lr", v.get("unet_lr")),
             ("text_encoder_lr1", v.get("text_encoder_lr1")), ("text_encoder_lr2", v.get("text_encoder_lr2"))]
    rates += [("text_encoder_lr", x) for x in v.get("text_encoder_lr") or []]
    for name in ("max_grad_norm", "prior_loss_weight", "max_data_loader_n_workers", "lr_warmup_steps"):
        rates.append((name, v.get(name)))
    for name, value in rates:
        if value is not None and not (value >= 0 and math.isfinite(value)):
            out.append(f"--{name}={value}: must be a finite number, not negative")
    if len(v.get("text_encoder_lr") or []) > 2:
        out.append("--text_encoder_lr: give one value (both encoders) or two (TE1, TE2)")
    seed = v.get("seed")
    if seed is not None and not 0 <= seed < 2**32:
        out.append(f"--seed={seed}: must be in [0, 2^32)")
    return out


def _implemented_choices(v: dict) -> list[str]:
    """Scheduler names accepted by the parser (sd-scripts does not restrict them) but not implemented here.
    Every --optimizer_type is accepted: a name not in config.options.OPTIMIZERS is a class path, imported
    (and its arguments checked) by train.optim before any model loads."""
    name = v.get("lr_scheduler") or "constant"
    if v.get("lr_scheduler_type") or is_schedule_free(resolved_optimizer_type(v)):
        return []
    if choice_status(SCHEDULERS, name) != WORKS:
        available = ", ".join(key for key, status in SCHEDULERS.items() if status == WORKS)
        return [f"--lr_scheduler {name}: not supported yet (roadmap: {OPTIMIZERS_ROADMAP}); available: {available}"]
    return []


def _key_value_args(v: dict) -> list[str]:
    """--optimizer_args / --lr_scheduler_args parse as sd-scripts parses them (key=Python literal)."""
    out = []
    for flag in ("optimizer_args", "lr_scheduler_args"):
        out += parse_key_values(flag, v.get(flag))[1]
    kwargs = parse_key_values("optimizer_args", v.get("optimizer_args"))[0]
    for key in ("lr", "params"):
        if key in kwargs:
            out.append(f"--optimizer_args {key}: set by the trainer (use --learning_rate / --unet_lr)")
    for key, value in kwargs.items():
        if key in ("weight_decay", "eps", "momentum") and not _number(value, low=0):
            out.append(f"--optimizer_args {key}={value!r}: must be a number, not negative")
        if key == "betas" and not (isinstance(value, (tuple, list)) and 2 <= len(value) <= 3
                                   and all(_number(b, low=0, below=1) for b in value)):
            out.append(f"--optimizer_args betas={value!r}: expected 2 or 3 numbers in [0, 1), e.g. betas=0.9,0.999")
    return out


def _number(value, low: float, below: float = math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value < below)


def _something_trains(v: dict) -> list[str]:
    if v.get("network_train_unet_only") and v.get("network_train_text_encoder_only"):
        return ["--network_train_unet_only and --network_train_text_encoder_only together train nothing"]
    # A component whose learning rate is 0 gets no parameter group; with all of them at 0 the optimizer would
    # be built with no parameters at all (sd-scripts stops there with a traceback).
    base = v.get("learning_rate")
    rates = [] if v.get("network_train_text_encoder_only") else [v.get("unet_lr")]
    if not v.get("network_train_unet_only"):
        rates += list(v.get("text_encoder_lrs") or (None, None))
    if base is not None and not any(base if rate is None else rate for rate in rates):
        return ["every learning rate is 0 (--learning_rate, --unet_lr, --text_encoder_lr): nothing would train"]
    return []


def _text_encoder_cache(v: dict) -> list[str]:
    if v.get("cache_text_encoder_outputs") and not v.get("network_train_unet_only"):
        return ["--cache_text_encoder_outputs needs --network_train_unet_only (cached text encoders cannot train)"]
    return []


def _precision(v: dict) -> list[str]:
    out = []
    mp = v.get("mixed_precision") or "no"
    if v.get("full_fp16") and mp != "fp16":
        out.append("--full_fp16 needs --mixed_precision fp16")
    if v.get("full_bf16") and mp != "bf16":
        out.append("--full_bf16 needs --mixed_precision bf16")
    if v.get("full_fp16") and v.get("full_bf16"):
        out.append("--full_fp16 and --full_bf16 cannot be combined")
    if v.get("full_fp16") and v.get("fused_backward_pass"):
        out.append("--full_fp16 with --fused_backward_pass: the fused steps need the whole scaled gradient before "
                   "the loss scale is known to be finite; use --full_bf16 or plain --mixed_precision fp16")
    if v.get("full_fp16") and v.get("scale_weight_norms"):
        out.append("--full_fp16 with --scale_weight_norms: the norm would be applied to the fp16 copies, not to "
                   "the float32 weights that train; drop one of them")
    for flag in ("fp8_base", "fp8_base_unet"):
        if v.get(flag) and mp == "no":
            out.append(f"--{flag} needs --mixed_precision fp16 or bf16 (fp8 weights compute in that dtype)")
    return out


def _noise_and_loss(v: dict) -> list[str]:
    out = []
    # A zero scale is a no-op (GUI configs write adaptive_noise_scale = 0 beside noise_offset = 0); a non-zero
    # scale without an offset would be silently ignored (sd-scripts applies it only inside the offset).
    if v.get("adaptive_noise_scale") and not v.get("noise_offset"):
        out.append("--adaptive_noise_scale needs --noise_offset")
    if v.get("scale_v_pred_loss_like_noise_pred") and not v.get("v_parameterization"):
        out.append("--scale_v_pred_loss_like_noise_pred needs --v_parameterization")
    if v.get("v_pred_like_loss") and v.get("v_parameterization"):
        out.append("--v_pred_like_loss cannot be used with --v_parameterization")
    lo, hi = v.get("min_timestep"), v.get("max_timestep")
    if lo is not None and not 0 <= lo <= 1000:
        out.append(f"--min_timestep={lo}: must be in [0, 1000]")
    if hi is not None and not 0 <= hi <= 1000:
        out.append(f"--max_timestep={hi}: must be in [0, 1000]")
    if lo is not None and hi is not None and lo > hi:
        out.append(f"--min_timestep={lo} is above --max_timestep={hi}")
    huber_c = v.get("huber_c")
    if v.get("loss_type") in ("huber", "smooth_l1") and huber_c is not None and not 0 < huber_c <= 1:
        out.append(f"--huber_c={huber_c}: must be in (0, 1] (the exponential and snr schedules need it)")
    for name in ("min_snr_gamma", "ip_noise_gamma", "multires_noise_discount", "huber_scale"):
        if v.get(name) is not None and not (v[name] >= 0 and math.isfinite(v[name])):
            out.append(f"--{name}={v[name]}: must be a finite number, not negative")
    if v.get("multires_noise_iterations") is not None and v["multires_noise_iterations"] < 0:
        out.append(f"--multires_noise_iterations={v['multires_noise_iterations']}: must not be negative")
    return out


def _optimizer(v: dict) -> list[str]:
    out = []
    opt = resolved_optimizer_type(v).lower()
    if v.get("use_8bit_adam") and (v.get("use_lion_optimizer") or v.get("optimizer_type")):
        out.append("--use_8bit_adam cannot be combined with --optimizer_type or --use_lion_optimizer")
    if v.get("use_lion_optimizer") and v.get("optimizer_type") and not v.get("use_8bit_adam"):
        out.append("--use_lion_optimizer cannot be combined with --optimizer_type")
    if v.get("fused_backward_pass"):
        if opt in ADAPTIVE_LR_OPTIMIZERS or is_schedule_free(opt):
            out.append(f"--fused_backward_pass cannot be used with --optimizer_type {resolved_optimizer_type(v)}: "
                       "it steps each tensor with its own optimizer, and this one shares its step size (or "
                       "averaged weights) across all of them")
        if (v.get("gradient_accumulation_steps") or 1) > 1:
            out.append("--fused_backward_pass cannot be used with --gradient_accumulation_steps > 1")
        if v.get("mixed_precision") == "fp16":
            out.append("--fused_backward_pass cannot be used with --mixed_precision fp16 (the loss scaler needs "
                       "every gradient before a step); use bf16")
    if (v.get("lr_scheduler") or "") == "adafactor" and opt != "adafactor":
        out.append("--lr_scheduler adafactor works only with --optimizer_type Adafactor")
    if opt in ADAPTIVE_LR_OPTIMIZERS and _loraplus_ratio(v.get("network_args")):
        out.append(f"--optimizer_type {v['optimizer_type']} (adaptive learning rate) cannot be used with "
                   "LoRA+ (--network_args loraplus_*_ratio)")
    if opt in ADAPTIVE_LR_OPTIMIZERS and opt not in ("dadaptadan", "dadaptadanip", "dadaptadagrad"):
        rates = _trained_rates(v)
        if len(set(rates.values())) > 1:
            given = ", ".join(f"{name} {rate:g}" for name, rate in rates.items())
            out.append(f"--optimizer_type {v['optimizer_type']} needs one learning rate for every trained part "
                       f"(got {given}); it fails at the first step otherwise")
    return out


def _trained_rates(v: dict) -> dict[str, float]:
    """Non-zero learning rate of each trained part (U-Net, TE1, TE2), as train.optim.param_groups sets them."""
    base = v.get("learning_rate")
    te1, te2 = v.get("text_encoder_lrs") or _text_encoder_lrs(v)
    parts = {}
    if not v.get("network_train_text_encoder_only"):
        parts["--unet_lr"] = v.get("unet_lr")
    if not v.get("network_train_unet_only"):
        parts["--text_encoder_lr (TE1)"], parts["--text_encoder_lr (TE2)"] = te1, te2
    rates = {name: (rate if rate is not None else base) for name, rate in parts.items()}
    return {name: rate for name, rate in rates.items() if rate}


def _text_encoder_lrs(v: dict) -> tuple:
    from sdxl_lora.config.build import text_encoder_lrs  # build imports this module

    return text_encoder_lrs(v.get("text_encoder_lr"), v.get("text_encoder_lr1"), v.get("text_encoder_lr2"))


def _scheduler(v: dict) -> list[str]:
    warmup = v.get("lr_warmup_steps") or 0
    sched = v.get("lr_scheduler") or "constant"
    optimizer = resolved_optimizer_type(v)
    if is_schedule_free(optimizer):
        return []
    out = _scheduler_arguments(v, sched)
    if not warmup:
        return out
    kwargs = parse_key_values("optimizer_args", v.get("optimizer_args"))[0]
    if optimizer.lower() == "adafactor" and adafactor_relative_step(kwargs):
        return out + [f"--lr_warmup_steps={warmup}: Adafactor with relative_step (its default) sets its own step size "
                "and ignores the schedule; pass --optimizer_args relative_step=False or set the warmup to 0"]
    if sched in ("constant", "adafactor", "piecewise_constant") or v.get("lr_scheduler_type"):
        what = "--lr_scheduler_type" if v.get("lr_scheduler_type") else f"--lr_scheduler {sched}"
        return out + [f"--lr_warmup_steps={warmup} has no effect with {what}; use constant_with_warmup or set it "
                      "to 0"]
    return out


def _scheduler_arguments(v: dict, sched: str) -> list[str]:
    """What the named schedule needs (each would otherwise fail when the scheduler is built)."""
    out = []
    args = parse_key_values("lr_scheduler_args", v.get("lr_scheduler_args"))[0]
    ratio = v.get("lr_scheduler_min_lr_ratio")
    if v.get("lr_scheduler_type"):
        return out
    if sched == "cosine_with_min_lr" and (ratio is None) == ("min_lr" not in args):
        out.append("--lr_scheduler cosine_with_min_lr needs exactly one of --lr_scheduler_min_lr_ratio or "
                   "--lr_scheduler_args min_lr=...")
    if sched == "piecewise_constant" and not isinstance(args.get("step_rules"), str):
        out.append("--lr_scheduler piecewise_constant needs --lr_scheduler_args step_rules='1:10,0.1:20,0.01' "
                   "(LR multiplier 1 until step 10, 0.1 until step 20, then 0.01)")
    if ratio is not None and not 0 <= ratio <= 1:
        out.append(f"--lr_scheduler_min_lr_ratio={ratio}: must be in [0, 1]")
    for name in ("lr_scheduler_num_cycles", "lr_scheduler_timescale"):
        if v.get(name) is not None and v[name] < 1:
            out.append(f"--{name}={v[name]}: must be at least 1")
    if (v.get("lr_decay_steps") or 0) < 0:
        out.append(f"--lr_decay_steps={v['lr_decay_steps']}: must not be negative")
    return out


def _resume(v: dict) -> list[str]:
    start, total = v.get("initial_step"), v.get("max_train_steps")
    out = []
    if start is not None and start < 0:
        out.append(f"--initial_step={start}: must be at least 0")
    elif start is not None and total is not None and start >= total and not v.get("max_train_epochs"):
        out.append(f"--initial_step={start} must be below --max_train_steps={total}")
    return out


def _network(v: dict) -> list[str]:
    """--network_args of networks.lora (every key checked, unknown keys named) and --network_dropout."""
    out = []
    if v.get("network_module") == LYCORIS_MODULE:
        out += _lycoris(v)
    elif v.get("network_module") in SUPPORTED_NETWORK_MODULES:
        out += parse_lora_args(v.get("network_args"))[1]
    dropout = v.get("network_dropout")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        out.append(f"--network_dropout={dropout}: must be in [0, 1)")
    if v.get("save_model_as") == "diffusers":
        out.append("--save_model_as diffusers: a pickled diffusers LoRA cannot carry the alphas (diffusers would load "
                   "every module at alpha = rank); use --save_model_as diffusers_safetensors")
    if v.get("dim_from_weights") and not v.get("network_weights"):
        out.append("--dim_from_weights needs --network_weights (the file to take modules, ranks and alphas from)")
    norm = v.get("scale_weight_norms")
    if norm is not None and not (norm >= 0 and math.isfinite(norm)):
        out.append(f"--scale_weight_norms={norm}: must be a finite number, not negative")
    return out


def _lycoris(v: dict) -> list[str]:
    """lycoris.kohya: its --network_args, the package, and the options whose files UIs could not read."""
    import importlib.util

    out = parse_lycoris_args(v.get("network_args"))[1]
    if importlib.util.find_spec("lycoris") is None:
        out.append("--network_module lycoris.kohya needs the lycoris-lora package: "
                   "pip install 'lycoris-lora==4.1.3' (or pip install -e '.[lycoris]')")
    if v.get("save_model_as") in ("diffusers", "diffusers_safetensors"):
        out.append(f"--save_model_as {v['save_model_as']} with lycoris.kohya: diffusers cannot load LyCORIS "
                   "modules; use safetensors (the format A1111/ComfyUI read)")
    if v.get("dim_from_weights"):
        out.append("--dim_from_weights with lycoris.kohya: not supported; give the same --network_dim and "
                   "--network_args as the run that wrote --network_weights")
    return out


def _loraplus_ratio(network_args) -> bool:
    return any(str(a).split("=", 1)[0].strip() in LORAPLUS_KEYS for a in (network_args or []))


RULES: tuple[Callable[[dict], list[str]], ...] = (
    _required, _positive, path_problems, _implemented_choices, _something_trains, _text_encoder_cache, _precision,
    _noise_and_loss, _key_value_args, _optimizer, _scheduler, logging_problems, _resume, _network,
)


def check_rules(values: dict) -> list[str]:
    """Every cross-option problem, in rule order."""
    return [problem for rule in RULES for problem in rule(values)]


def check_dataset_rules(values: dict, datasets) -> list[str]:
    """Rules that combine options with the dataset settings (spec 1.17). Unlike sd-scripts, caption shuffling
    and dropout work with --cache_text_encoder_outputs (several caption variants are cached per image); token
    warmup changes captions with the step, so it cannot."""
    out = []
    if values.get("cache_text_encoder_outputs"):
        for ds in datasets:
            out += [f"{sub.key_path}.token_warmup_step={sub.token_warmup_step}: token warmup changes captions at "
                    "every step and cannot be used with --cache_text_encoder_outputs (caption shuffling and dropout "
                    "can: each image gets several cached caption variants)"
                    for sub in ds.subsets if sub.token_warmup_step > 0]
    return out
