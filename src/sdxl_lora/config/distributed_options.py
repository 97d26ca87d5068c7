"""The DDP and DeepSpeed options (spec 1.8, 1.15): the checks and warnings run before any model is loaded.

DeepSpeed's own config checks run only when the engine is built, after the models are loaded; the combinations
it rejects (or silently ignores) are caught here instead, each naming the flag.
"""

from __future__ import annotations

from sdxl_lora.config.optimizer_args import resolved_optimizer_type

DEEPSPEED_ONLY = ("zero_stage", "offload_optimizer_device", "offload_optimizer_nvme_path", "offload_param_device",
                  "offload_param_nvme_path", "zero3_init_flag", "zero3_save_16bit_model",
                  "fp16_master_weights_and_gradients")
"""Options that do nothing without --deepspeed."""
_DEFAULTS = {"zero_stage": 2}
# accelerate replaces the optimizer by DeepSpeed's CPU Adam when optimizer states are offloaded; only these
# optimizers are the same algorithm there (accelerate maps Adam to Adam and AdamW to AdamW).
_OFFLOAD_OPTIMIZERS = ("adamw", "adam")


def _given(v: dict, name: str) -> bool:
    value = v.get(name)
    return value not in (None, False, "") and value != _DEFAULTS.get(name)


def zero_stage(v: dict) -> int:
    """--zero_stage, 2 when unset (sd-scripts' default)."""
    return 2 if v.get("zero_stage") is None else int(v["zero_stage"])


def distributed_problems(v: dict) -> list[str]:
    """--ddp_timeout is a positive number of minutes; DeepSpeed combinations DeepSpeed rejects, or that would train
    something other than what was asked."""
    timeout = v.get("ddp_timeout")
    out = [f"--ddp_timeout={timeout}: must be at least 1 (minutes)"] if timeout is not None and timeout < 1 else []
    return out + (_deepspeed_problems(v) if v.get("deepspeed") else [])


def _deepspeed_problems(v: dict) -> list[str]:
    out, stage = [], zero_stage(v)
    for kind in ("optimizer", "param"):
        device, path = v.get(f"offload_{kind}_device"), v.get(f"offload_{kind}_nvme_path")
        if device == "nvme" and not path:
            out.append(f"--offload_{kind}_device nvme needs --offload_{kind}_nvme_path (a folder on the NVMe drive)")
    optimizer_device = v.get("offload_optimizer_device")
    if optimizer_device == "cpu" and stage == 0:
        out.append("--offload_optimizer_device cpu needs --zero_stage 1, 2 or 3 (ZeRO-Offload)")
    if optimizer_device == "nvme" and stage != 3:
        out.append(f"--offload_optimizer_device nvme needs --zero_stage 3 (ZeRO-Infinity); got {stage}")
    if optimizer_device and resolved_optimizer_type(v).lower() not in _OFFLOAD_OPTIMIZERS:
        out.append(f"--offload_optimizer_device {optimizer_device}: DeepSpeed then steps with its CPU Adam, so only "
                   f"--optimizer_type AdamW or Adam train as asked; got {resolved_optimizer_type(v)}")
    for name in ("offload_param_device", "zero3_init_flag", "zero3_save_16bit_model"):
        if _given(v, name) and stage != 3:
            out.append(f"--{name} needs --zero_stage 3; got {stage}")
    if v.get("fp16_master_weights_and_gradients"):
        missing = [need for need, ok in (("--mixed_precision fp16", v.get("mixed_precision") == "fp16"),
                                         ("--zero_stage 2", stage == 2),
                                         ("--offload_optimizer_device cpu", optimizer_device == "cpu")) if not ok]
        if missing:
            out.append("--fp16_master_weights_and_gradients needs " + ", ".join(missing)
                       + " (DeepSpeed supports it only with ZeRO-Offload of ZeRO-2 in fp16)")
    out += _loop_conflicts(v)
    return out


def _loop_conflicts(v: dict) -> list[str]:
    """Options of ours that DeepSpeed's engine replaces or cannot honour."""
    out = []
    for flag in ("full_fp16", "full_bf16"):
        if v.get(flag):
            out.append(f"--{flag} with --deepspeed: DeepSpeed keeps the trained weights in the --mixed_precision "
                       "dtype with float32 master copies itself; drop --" + flag
                       + (" (or add --fp16_master_weights_and_gradients)" if flag == "full_fp16" else ""))
    if v.get("fused_backward_pass"):
        out.append("--fused_backward_pass with --deepspeed: DeepSpeed's engine steps the optimizer itself")
    for flag in ("save_state", "save_state_on_train_end", "resume"):
        if v.get(flag):
            out.append(f"--{flag} with --deepspeed: resumable states of a DeepSpeed run are not supported yet "
                       "(ZeRO partitions the optimizer state)")
    return out


def distributed_warnings(v: dict) -> list[str]:
    """Options that have nothing to act on: we go on, saying so (sd-scripts ignores them silently)."""
    if not v.get("deepspeed"):
        given = [f"--{name}" for name in DEEPSPEED_ONLY if _given(v, name)]
        return [f"{', '.join(given)}: no effect without --deepspeed"] if given else []
    out = []
    for kind in ("optimizer", "param"):
        if v.get(f"offload_{kind}_nvme_path") and v.get(f"offload_{kind}_device") != "nvme":
            out.append(f"--offload_{kind}_nvme_path: no effect without --offload_{kind}_device nvme")
    if v.get("zero3_init_flag"):
        out.append("--zero3_init_flag: not applied: the frozen SDXL weights are loaded and placed (dtype, fp8) "
                   "whole, then ZeRO-3 partitions them when the models are prepared")
    given = [f"--{name}" for name in ("ddp_gradient_as_bucket_view", "ddp_static_graph") if v.get(name)]
    if given:
        out.append(f"{', '.join(given)}: no effect with --deepspeed (DeepSpeed does not use torch DDP)")
    return out
