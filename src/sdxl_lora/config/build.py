"""Command-line values -> frozen RunConfig: normalize (implied settings made explicit and logged once),
then validate everything (all problems reported together), before any model weight is touched."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from sdxl_lora.config.dataset_toml import read_datasets
from sdxl_lora.config.dataset_validate import validate_datasets
from sdxl_lora.config.distributed_options import distributed_problems, distributed_warnings, zero_stage
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.hub_options import hub_problems, hub_warnings
from sdxl_lora.config.logging_rules import (
    DEFAULT_TRACKER_NAME,
    logging_warnings,
    read_tracker_config,
    trackers_for,
)
from sdxl_lora.config.lycoris_args import LYCORIS_MODULE, lycoris_warnings, parse_lycoris_args
from sdxl_lora.config.network_args import LoraArgs, network_args_warnings, network_warnings, parse_lora_args
from sdxl_lora.config.optimizer_args import (
    adafactor_relative_step,
    is_schedule_free,
    parse_key_values,
    resolved_optimizer_type,
)
from sdxl_lora.config.options import OPTIONS, WORKS
from sdxl_lora.config.rules import check_dataset_rules, check_rules
from sdxl_lora.config.sampling import sample_problems, sample_schedule, sample_warnings
from sdxl_lora.config.schema import (
    DataConfig,
    DistributedConfig,
    HubConfig,
    LogConfig,
    LossConfig,
    ModelConfig,
    NetworkConfig,
    NoiseConfig,
    OptimConfig,
    RunConfig,
    SampleConfig,
    SaveConfig,
    TrainConfig,
    ValidationConfig,
)

log = logging.getLogger(__name__)

_IMPLIED = (
    ("cache_latents_to_disk", "cache_latents"),
    ("cache_text_encoder_outputs_to_disk", "cache_text_encoder_outputs"),
)


def build_run_config(values: dict, given: frozenset[str] = frozenset()) -> RunConfig:
    """Validate parsed option values and return the frozen configuration, or raise ConfigError."""
    values, notes = normalize(values, given)
    problems = (unsupported_options(values) + check_rules(values) + hub_problems(values) + validation_problems(values)
                + sample_problems(values) + distributed_problems(values))
    datasets, dataset_problems = read_datasets(_path_or_none(values.get("dataset_config")), values)
    problems += dataset_problems
    if datasets:
        problems += validate_datasets(datasets, cache_latents=bool(values.get("cache_latents")),
                                      masked_loss=bool(values.get("masked_loss")))
        problems += check_dataset_rules(values, datasets)
    if problems:
        raise ConfigError(problems)
    for note in notes:
        log.info("%s", note)
    lora_warnings = [] if values.get("network_module") == LYCORIS_MODULE else network_args_warnings(
        values.get("network_args"))
    warnings = lora_warnings + network_warnings(values) + lycoris_warnings(values) + optimizer_warnings(values)
    warnings += save_warnings(values) + hub_warnings(values) + validation_warnings(values, datasets)
    warnings += distributed_warnings(values)
    for warning in warnings + sample_warnings(values):
        log.warning("%s", warning)
    for warning in logging_warnings(values):
        log.warning("%s", warning)
    return assemble(values, datasets)


def normalize(values: dict, given: frozenset[str]) -> tuple[dict, list[str]]:
    """Make implied settings explicit. Returns a new dict and one note per implied setting (logged once,
    after validation passes)."""
    v, notes = dict(values), []
    for source, implied in _IMPLIED:
        if v.get(source) and not v.get(implied):
            v[implied] = True
            notes.append(f"--{source} implies --{implied}: enabled")
    if v.get("caption_extention") and "caption_extension" not in given:
        v["caption_extension"] = v["caption_extention"]
        notes.append("--caption_extention (legacy spelling) copied to --caption_extension")
    attention = [f"--{flag}" for flag in ("mem_eff_attn", "xformers", "sdpa") if v.get(flag)]
    if attention:
        notes.append(f"{' '.join(attention)}: attention runs through PyTorch scaled dot product attention "
                     "(as always here)")
    if v.get("seed") is None:
        v["seed"] = random.randint(0, 2**32 - 1)
        notes.append(f"--seed not given: using {v['seed']}")
    notes += _optimizer_notes(v)
    v["text_encoder_lrs"] = text_encoder_lrs(v.get("text_encoder_lr"), v.get("text_encoder_lr1"),
                                             v.get("text_encoder_lr2"))
    return v, notes


def _optimizer_notes(v: dict) -> list[str]:
    """The optimizer settings sd-scripts changes on its own, made explicit (legacy flags, the scheduler
    replaced). Sets v['lr_scheduler'] to 'adafactor' for Adafactor with relative_step."""
    notes, optimizer = [], resolved_optimizer_type(v)
    for flag in ("use_8bit_adam", "use_lion_optimizer"):
        if v.get(flag) and not v.get("optimizer_type"):
            notes.append(f"--{flag}: using --optimizer_type {optimizer}")
    kwargs, _ = parse_key_values("optimizer_args", v.get("optimizer_args"))
    if optimizer.lower() == "adafactor" and adafactor_relative_step(kwargs):
        if v.get("lr_scheduler") != "adafactor":
            notes.append(f"--optimizer_type Adafactor with relative_step (its default): the scheduler is "
                         f"'adafactor' (was {v.get('lr_scheduler')}); --learning_rate is its initial LR; "
                         "pass --optimizer_args relative_step=False to use --lr_scheduler")
        v["lr_scheduler"] = "adafactor"
    return notes


def save_warnings(v: dict) -> list[str]:
    """Saving options that have nothing to act on (sd-scripts skips them silently): we go on, saying so."""
    warnings = []
    for keep, every in (("save_last_n_epochs", "save_every_n_epochs"), ("save_last_n_steps", "save_every_n_steps"),
                        ("save_last_n_epochs_state", "save_every_n_epochs"),
                        ("save_last_n_steps_state", "save_every_n_steps")):
        if v.get(keep) and not v.get(every) and not (every == "save_every_n_epochs" and v.get("save_n_epoch_ratio")):
            warnings.append(f"--{keep} without --{every}: there are no such saves to thin out")
    for keep in ("save_last_n_epochs_state", "save_last_n_steps_state"):
        if v.get(keep) and not v.get("save_state"):
            warnings.append(f"--{keep} without --save_state: no state folders are saved along the way")
    if v.get("skip_until_initial_step") and v.get("initial_step") is None and v.get("initial_epoch") is None \
            and not v.get("resume"):
        warnings.append("--skip_until_initial_step without --initial_step, --initial_epoch or --resume: "
                        "there is nothing to skip")
    return warnings


def optimizer_warnings(v: dict) -> list[str]:
    """Settings sd-scripts ignores or warns about with the chosen optimizer and target: we go on, saying so."""
    warnings = []
    if v.get("zero_terminal_snr") and not v.get("v_parameterization"):
        warnings.append("--zero_terminal_snr without --v_parameterization: the last timestep is pure noise, which "
                        "an epsilon-prediction model cannot denoise (sd-scripts warns the same)")
    if is_schedule_free(resolved_optimizer_type(v)):
        if (v.get("lr_scheduler") or "constant") != "constant" or v.get("lr_scheduler_type"):
            warnings.append("--lr_scheduler/--lr_scheduler_type are ignored: schedule-free optimizers keep a "
                            "constant LR (as sd-scripts)")
        if v.get("lr_warmup_steps"):
            warnings.append("--lr_warmup_steps is ignored with a schedule-free optimizer (as sd-scripts); "
                            "use --optimizer_args warmup_steps=N")
    return warnings


def text_encoder_lrs(shared, lr1, lr2) -> tuple[float | None, float | None]:
    """(TE1, TE2) learning rates: --text_encoder_lr gives one value for both or one each; the guide's
    --text_encoder_lr1/--text_encoder_lr2 override per encoder."""
    shared = list(shared or [])
    first = shared[0] if shared else None
    second = shared[1] if len(shared) > 1 else first
    return (lr1 if lr1 is not None else first, lr2 if lr2 is not None else second)


def unsupported_options(values: dict) -> list[str]:
    """A non-default value of any option that does not work yet is an error, never silently ignored."""
    problems = []
    for opt in OPTIONS:
        if opt.status == WORKS or values.get(opt.name, opt.default) == opt.default:
            continue
        if opt.status.startswith("refused"):
            problems.append(f"--{opt.name}: {opt.status}")
        else:
            where = f" (roadmap: {opt.roadmap})" if opt.roadmap else ""
            problems.append(f"--{opt.name}: not supported yet{where}")
    return problems


def assemble(v: dict, datasets: tuple) -> RunConfig:
    """Split the flat, validated values into the per-component sections."""
    model = ModelConfig(
        pretrained_model_name_or_path=v["pretrained_model_name_or_path"], vae=v.get("vae"),
        mixed_precision=v.get("mixed_precision") or "no", no_half_vae=bool(v.get("no_half_vae")),
        full_fp16=bool(v.get("full_fp16")), full_bf16=bool(v.get("full_bf16")), fp8_base=bool(v.get("fp8_base")),
        fp8_base_unet=bool(v.get("fp8_base_unet")), lowram=bool(v.get("lowram")), highvram=bool(v.get("highvram")),
        max_token_length=v.get("max_token_length"), clip_skip=v.get("clip_skip"),
        disable_mmap_load_safetensors=bool(v.get("disable_mmap_load_safetensors")),
        tokenizer_cache_dir=v.get("tokenizer_cache_dir"),
    )
    lycoris = v["network_module"] == LYCORIS_MODULE
    network = NetworkConfig(
        network_module=v["network_module"], network_dim=v.get("network_dim"),
        network_alpha=v.get("network_alpha") if v.get("network_alpha") is not None else 0.0,
        train_unet=not v.get("network_train_text_encoder_only"),
        train_text_encoder=not v.get("network_train_unet_only"),
        network_dropout=v.get("network_dropout"),
        lora=parse_lora_args(v.get("network_args"))[0] if not lycoris else LoraArgs(),
        lycoris=parse_lycoris_args(v.get("network_args"))[0] if lycoris else None,
        network_weights=v.get("network_weights") or None, dim_from_weights=bool(v.get("dim_from_weights")),
        base_weights=tuple(v.get("base_weights") or ()),
        base_weights_multiplier=tuple(v.get("base_weights_multiplier") or ()),
        scale_weight_norms=v.get("scale_weight_norms") or None,
    )
    data = DataConfig(
        datasets=tuple(datasets), cache_latents=bool(v.get("cache_latents")),
        vae_batch_size=int(v.get("vae_batch_size") or 1),
        cache_latents_to_disk=bool(v.get("cache_latents_to_disk")),
        cache_text_encoder_outputs=bool(v.get("cache_text_encoder_outputs")),
        cache_text_encoder_outputs_to_disk=bool(v.get("cache_text_encoder_outputs_to_disk")),
        skip_cache_check=bool(v.get("skip_cache_check")),
        max_data_loader_n_workers=int(v.get("max_data_loader_n_workers") or 0),
        persistent_data_loader_workers=bool(v.get("persistent_data_loader_workers")),
        prior_loss_weight=float(v.get("prior_loss_weight") if v.get("prior_loss_weight") is not None else 1.0),
        masked_loss=bool(v.get("masked_loss")), skip_bad_files=bool(v.get("skip_bad_files")),
    )
    optim = OptimConfig(
        optimizer_type=resolved_optimizer_type(v), learning_rate=float(v["learning_rate"]),
        unet_lr=v.get("unet_lr"),
        text_encoder_lr=v["text_encoder_lrs"], max_grad_norm=float(v.get("max_grad_norm") or 0.0),
        lr_scheduler=v.get("lr_scheduler") or "constant", lr_warmup_steps=v.get("lr_warmup_steps") or 0,
        optimizer_args=tuple(parse_key_values("optimizer_args", v.get("optimizer_args"))[0].items()),
        lr_scheduler_type=v.get("lr_scheduler_type") or "",
        lr_scheduler_args=tuple(parse_key_values("lr_scheduler_args", v.get("lr_scheduler_args"))[0].items()),
        lr_decay_steps=v.get("lr_decay_steps") or 0,
        lr_scheduler_num_cycles=int(v.get("lr_scheduler_num_cycles") or 1),
        lr_scheduler_power=float(v.get("lr_scheduler_power") if v.get("lr_scheduler_power") is not None else 1.0),
        lr_scheduler_timescale=v.get("lr_scheduler_timescale"),
        lr_scheduler_min_lr_ratio=v.get("lr_scheduler_min_lr_ratio"),
        fused_backward_pass=bool(v.get("fused_backward_pass")),
    )
    train = TrainConfig(
        max_train_steps=int(v["max_train_steps"]), max_train_epochs=v.get("max_train_epochs"),
        gradient_accumulation_steps=int(v.get("gradient_accumulation_steps") or 1), seed=int(v["seed"]),
        gradient_checkpointing=bool(v.get("gradient_checkpointing")),
        resume=Path(v["resume"]) if v.get("resume") else None, initial_epoch=v.get("initial_epoch"),
        initial_step=v.get("initial_step"), skip_until_initial_step=bool(v.get("skip_until_initial_step")),
    )
    save = SaveConfig(
        output_dir=Path(v["output_dir"]), output_name=v.get("output_name"),
        save_model_as=v.get("save_model_as") or "safetensors", save_precision=v.get("save_precision"),
        no_metadata=bool(v.get("no_metadata")), training_comment=v.get("training_comment"),
        save_every_n_epochs=v.get("save_every_n_epochs"), save_n_epoch_ratio=v.get("save_n_epoch_ratio"),
        save_every_n_steps=v.get("save_every_n_steps"), save_last_n_epochs=v.get("save_last_n_epochs"),
        save_last_n_steps=v.get("save_last_n_steps"), save_last_n_epochs_state=v.get("save_last_n_epochs_state"),
        save_last_n_steps_state=v.get("save_last_n_steps_state"), save_state=bool(v.get("save_state")),
        save_state_on_train_end=bool(v.get("save_state_on_train_end")),
    )
    return RunConfig(model=model, network=network, data=data, optim=optim, train=train, save=save, args=dict(v),
                     noise=noise_config(v), loss=loss_config(v), validation=validation_config(v),
                     log=logging_config(v), hub=hub_config(v), sample=sample_config(v),
                     distributed=distributed_config(v))


def noise_config(v: dict) -> NoiseConfig:
    """Timestep range and noise options (spec 1.9); unset numbers take sd-scripts' defaults."""
    return NoiseConfig(
        min_timestep=int(v.get("min_timestep") or 0),
        max_timestep=int(v["max_timestep"] if v.get("max_timestep") is not None else 1000),
        noise_offset=v.get("noise_offset"), noise_offset_random_strength=bool(v.get("noise_offset_random_strength")),
        adaptive_noise_scale=v.get("adaptive_noise_scale"),
        multires_noise_iterations=v.get("multires_noise_iterations"),
        multires_noise_discount=float(_default(v, "multires_noise_discount", 0.3)),
        ip_noise_gamma=v.get("ip_noise_gamma"),
        ip_noise_gamma_random_strength=bool(v.get("ip_noise_gamma_random_strength")),
        zero_terminal_snr=bool(v.get("zero_terminal_snr")),
    )


def loss_config(v: dict) -> LossConfig:
    """Target, loss type and weightings (spec 1.9, 5.3, 5.4)."""
    return LossConfig(
        v_parameterization=bool(v.get("v_parameterization")), loss_type=v.get("loss_type") or "l2",
        huber_schedule=v.get("huber_schedule") or "snr", huber_c=float(_default(v, "huber_c", 0.1)),
        huber_scale=float(_default(v, "huber_scale", 1.0)), min_snr_gamma=v.get("min_snr_gamma"),
        scale_v_pred_loss_like_noise_pred=bool(v.get("scale_v_pred_loss_like_noise_pred")),
        v_pred_like_loss=v.get("v_pred_like_loss"),
        debiased_estimation_loss=bool(v.get("debiased_estimation_loss")), masked_loss=bool(v.get("masked_loss")),
    )


def sample_config(v: dict) -> SampleConfig:
    """Sample prompts and schedule (spec 1.11): N <= 0 is off; --sample_every_n_epochs turns step sampling off."""
    steps, epochs, at_first = sample_schedule(v)
    return SampleConfig(prompts=Path(v["sample_prompts"]) if v.get("sample_prompts") else None,
                        every_n_steps=steps, every_n_epochs=epochs, at_first=at_first,
                        sampler=(v.get("sample_sampler") or SampleConfig.sampler).lower())


_VALIDATION_COUNTS = ("validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps")


def validation_config(v: dict) -> ValidationConfig:
    """When and how much to validate (spec 1.13); the validation RNG seed falls back to --seed."""
    return ValidationConfig(
        split=float(v.get("validation_split") or 0.0),
        seed=int(v["validation_seed"] if v.get("validation_seed") is not None else v["seed"]),
        every_n_steps=v.get("validate_every_n_steps"), every_n_epochs=v.get("validate_every_n_epochs"),
        max_steps=v.get("max_validation_steps"),
    )


def validation_problems(v: dict) -> list[str]:
    """Validation counts are positive. (validation_split is checked per dataset, where the TOML may override
    the flag: config.dataset_validate.)"""
    return [f"--{name}={v[name]}: must be at least 1" for name in _VALIDATION_COUNTS
            if v.get(name) is not None and v[name] < 1]


def validation_warnings(v: dict, datasets: tuple) -> list[str]:
    """Validation flags given while no dataset holds images out: nothing to validate (sd-scripts is silent)."""
    if any(d.validation_split > 0 for d in datasets):
        return []
    given = [f"--{name}" for name in (*_VALIDATION_COUNTS, "validation_seed") if v.get(name) is not None]
    if not given:
        return []
    return [f"{', '.join(given)}: no validation loss is computed because no dataset holds images out; set "
            "--validation_split (or validation_split in --dataset_config) above 0"]


def logging_config(v: dict) -> LogConfig:
    """Trackers (spec 1.12). An empty string (GUIs write "" for unset options) means not given."""
    tracker_file = v.get("log_tracker_config")
    return LogConfig(
        log_with=trackers_for(v), logging_dir=Path(v["logging_dir"]).expanduser() if v.get("logging_dir") else None,
        log_prefix=v.get("log_prefix") or "", tracker_name=v.get("log_tracker_name") or DEFAULT_TRACKER_NAME,
        wandb_run_name=v.get("wandb_run_name") or None,
        tracker_init_kwargs=read_tracker_config(tracker_file)[0] if tracker_file else None,
        wandb_api_key=v.get("wandb_api_key") or None, log_config=bool(v.get("log_config")),
    )


def hub_config(v: dict) -> HubConfig:
    """Hugging Face Hub options (spec 1.10). GUIs write every option, so an empty string means not given."""
    return HubConfig(
        repo_id=v.get("huggingface_repo_id") or None, repo_type=v.get("huggingface_repo_type") or None,
        path_in_repo=(v.get("huggingface_path_in_repo") or "").strip("/"),
        token=v.get("huggingface_token") or None, visibility=v.get("huggingface_repo_visibility") or None,
        save_state_to_huggingface=bool(v.get("save_state_to_huggingface")),
        resume_from_huggingface=bool(v.get("resume_from_huggingface")), async_upload=bool(v.get("async_upload")),
    )


def distributed_config(v: dict) -> DistributedConfig:
    """DDP and DeepSpeed options (spec 1.8, 1.15); DeepSpeed settings are kept only with --deepspeed (without it
    they were warned about and do nothing)."""
    ddp = {"ddp_timeout_minutes": v.get("ddp_timeout"),
           "ddp_gradient_as_bucket_view": bool(v.get("ddp_gradient_as_bucket_view")),
           "ddp_static_graph": bool(v.get("ddp_static_graph"))}
    if not v.get("deepspeed"):
        return DistributedConfig(**ddp)
    return DistributedConfig(
        **ddp, deepspeed=True, zero_stage=zero_stage(v),
        offload_optimizer_device=v.get("offload_optimizer_device") or None,
        offload_optimizer_nvme_path=v.get("offload_optimizer_nvme_path") or None,
        offload_param_device=v.get("offload_param_device") or None,
        offload_param_nvme_path=v.get("offload_param_nvme_path") or None,
        zero3_save_16bit_model=bool(v.get("zero3_save_16bit_model")),
        fp16_master_weights_and_gradients=bool(v.get("fp16_master_weights_and_gradients")),
    )


def _default(v: dict, name: str, default):
    return v[name] if v.get(name) is not None else default


def _path_or_none(value) -> Path | None:
    return Path(value) if value else None
