"""The --ddp_* and DeepSpeed options (spec 1.8, 1.15): the DistributedConfig they build, the combinations refused
through the real CLI (exit 2, one line naming the flag) before any model loads, the warnings, and the line
`sdxl-lora check` prints."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from sdxl_lora.cli import main
from sdxl_lora.config.build import build_run_config
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.config.schema import DistributedConfig

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _config(base_argv, *extra):
    parsed = parse_command_line([*base_argv, *extra])
    return build_run_config(parsed.values, parsed.given).distributed


def test_defaults_set_nothing(base_argv):
    assert _config(base_argv) == DistributedConfig()


def test_the_builder_reads_every_option(base_argv, tmp_path):
    assert _config(base_argv, "--ddp_timeout", "30", "--ddp_gradient_as_bucket_view", "--ddp_static_graph",
                   "--deepspeed", "--zero_stage", "3", "--offload_optimizer_device", "nvme",
                   "--offload_optimizer_nvme_path", str(tmp_path), "--offload_param_device", "nvme",
                   "--offload_param_nvme_path", str(tmp_path), "--zero3_save_16bit_model") == DistributedConfig(
        ddp_timeout_minutes=30, ddp_gradient_as_bucket_view=True, ddp_static_graph=True, deepspeed=True,
        zero_stage=3, offload_optimizer_device="nvme", offload_optimizer_nvme_path=str(tmp_path),
        offload_param_device="nvme", offload_param_nvme_path=str(tmp_path), zero3_save_16bit_model=True)
    assert _config(base_argv, "--deepspeed", "--mixed_precision", "fp16", "--offload_optimizer_device", "cpu",
                   "--fp16_master_weights_and_gradients") == DistributedConfig(
        deepspeed=True, offload_optimizer_device="cpu", fp16_master_weights_and_gradients=True)


def test_deepspeed_settings_without_deepspeed_are_dropped_with_a_warning(base_argv, caplog):
    caplog.set_level(logging.WARNING)
    assert _config(base_argv, "--zero_stage", "3", "--offload_param_device", "cpu") == DistributedConfig()
    assert "--zero_stage, --offload_param_device: no effect without --deepspeed" in caplog.text


@pytest.mark.parametrize(("extra", "problem"), [
    (("--ddp_timeout", "0"), "--ddp_timeout=0: must be at least 1 (minutes)"),
    (("--zero_stage", "3", "--offload_optimizer_device", "nvme"),
     "--offload_optimizer_device nvme needs --offload_optimizer_nvme_path (a folder on the NVMe drive)"),
    (("--zero_stage", "3", "--offload_param_device", "nvme"),
     "--offload_param_device nvme needs --offload_param_nvme_path (a folder on the NVMe drive)"),
    (("--offload_optimizer_device", "nvme", "--offload_optimizer_nvme_path", "."),
     "--offload_optimizer_device nvme needs --zero_stage 3 (ZeRO-Infinity); got 2"),
    (("--zero_stage", "0", "--offload_optimizer_device", "cpu"),
     "--offload_optimizer_device cpu needs --zero_stage 1, 2 or 3 (ZeRO-Offload)"),
    (("--offload_optimizer_device", "cpu", "--optimizer_type", "Lion"),
     "--offload_optimizer_device cpu: DeepSpeed then steps with its CPU Adam, so only --optimizer_type AdamW or "
     "Adam train as asked; got Lion"),
    (("--offload_param_device", "cpu"), "--offload_param_device needs --zero_stage 3; got 2"),
    (("--zero_stage", "1", "--zero3_init_flag"), "--zero3_init_flag needs --zero_stage 3; got 1"),
    (("--zero3_save_16bit_model",), "--zero3_save_16bit_model needs --zero_stage 3; got 2"),
    (("--fp16_master_weights_and_gradients", "--mixed_precision", "bf16"),
     "--fp16_master_weights_and_gradients needs --mixed_precision fp16, --offload_optimizer_device cpu (DeepSpeed "
     "supports it only with ZeRO-Offload of ZeRO-2 in fp16)"),
    (("--fp16_master_weights_and_gradients", "--mixed_precision", "fp16", "--offload_optimizer_device", "cpu",
      "--zero_stage", "1"),
     "--fp16_master_weights_and_gradients needs --zero_stage 2 (DeepSpeed supports it only with ZeRO-Offload of "
     "ZeRO-2 in fp16)"),
    (("--mixed_precision", "fp16", "--full_fp16"),
     "--full_fp16 with --deepspeed: DeepSpeed keeps the trained weights in the --mixed_precision dtype with float32 "
     "master copies itself; drop --full_fp16 (or add --fp16_master_weights_and_gradients)"),
    (("--fused_backward_pass",), "--fused_backward_pass with --deepspeed: DeepSpeed's engine steps the optimizer "
                                 "itself"),
    (("--save_state",), "--save_state with --deepspeed: resumable states of a DeepSpeed run are not supported yet "
                        "(ZeRO partitions the optimizer state)"),
])
def test_cli_refuses_with_one_line_naming_the_flag(base_argv, capsys, extra, problem):
    deepspeed = () if extra[0] == "--ddp_timeout" else ("--deepspeed",)
    assert main(["check", *base_argv, *deepspeed, *extra]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"sdxl-lora: error: {problem}"]


def test_check_shows_the_distributed_settings(base_argv, capsys):
    argv = ["check", *base_argv, "--deepspeed", "--zero_stage", "3", "--offload_param_device", "cpu",
            "--zero3_init_flag", "--ddp_timeout", "45", "--ddp_static_graph"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    line = next(x for x in printed.out.splitlines() if x.startswith("distributed: "))
    installed = "" if HAS_DEEPSPEED else ("; DeepSpeed is not installed here: pip install deepspeed (or pip install "
                                          "-e '.[deepspeed]'; docs/deepspeed.md)")
    assert line == (f"distributed: DeepSpeed ZeRO stage 3; parameters offloaded to cpu{installed}; process-group "
                    "timeout 45 min; DDP static_graph")
    assert "--zero3_init_flag: not applied" in printed.err
    assert "--ddp_static_graph: no effect with --deepspeed" in printed.err


def test_check_prints_no_distributed_line_by_default(base_argv, capsys):
    assert main(["check", *base_argv]) == 0
    assert "distributed:" not in capsys.readouterr().out
