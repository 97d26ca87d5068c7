"""train/distributed.py: the accelerate kwargs handlers of --ddp_*, the DeepSpeed config each --deepspeed option
makes (expected dicts written from DeepSpeed's config schema, docs 'config-json'), the checks that DeepSpeed can
run, and what the prepare step hands to accelerate with and without DeepSpeed (a recording stand-in)."""

from __future__ import annotations

import datetime
import importlib.util
import math

import pytest
import torch
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.schema import DistributedConfig
from sdxl_lora.train import distributed
from sdxl_lora.train.distributed import (
    TrainedModels,
    check_deepspeed,
    deepspeed_plugin,
    full_parameters,
    kwargs_handlers,
    prepare_models,
)

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
LAUNCHED = {"LOCAL_RANK": "0", "WORLD_SIZE": "1"}


def test_no_option_no_handler():
    assert kwargs_handlers(DistributedConfig()) == []


def test_ddp_timeout_is_minutes():
    (handler,) = kwargs_handlers(DistributedConfig(ddp_timeout_minutes=90))
    assert isinstance(handler, InitProcessGroupKwargs)
    assert handler.timeout == datetime.timedelta(seconds=5400)


@pytest.mark.parametrize(("bucket_view", "static"), [(True, False), (False, True), (True, True)])
def test_ddp_flags_make_one_ddp_handler(bucket_view, static):
    (handler,) = kwargs_handlers(DistributedConfig(ddp_gradient_as_bucket_view=bucket_view, ddp_static_graph=static))
    assert isinstance(handler, DistributedDataParallelKwargs)
    assert (handler.gradient_as_bucket_view, handler.static_graph) == (bucket_view, static)
    assert handler.find_unused_parameters is False  # accelerate's default, untouched


def _plugin(cfg: DistributedConfig, **kw):
    args = {"mixed_precision": "no", "gradient_accumulation_steps": 1, "max_grad_norm": 1.0, "micro_batch_size": 1,
            "world_size": 1} | kw
    return deepspeed_plugin(cfg, **args)


def test_zero2_cpu_offload_fp16_master_weights():
    cfg = DistributedConfig(deepspeed=True, zero_stage=2, offload_optimizer_device="cpu",
                            fp16_master_weights_and_gradients=True)
    plugin = _plugin(cfg, mixed_precision="fp16", gradient_accumulation_steps=2, max_grad_norm=1.0,
                     micro_batch_size=3, world_size=4)
    assert plugin.deepspeed_config == {
        "train_batch_size": 24,  # 3 per micro batch x 2 accumulated x 4 processes
        "train_micro_batch_size_per_gpu": 3,
        "gradient_accumulation_steps": 2,
        "gradient_clipping": 1.0,
        "zero_optimization": {
            "stage": 2,
            "offload_optimizer": {"device": "cpu", "nvme_path": None},
            "offload_param": {"device": "none", "nvme_path": None},
            "stage3_gather_16bit_weights_on_model_save": False,
        },
        "fp16": {"enabled": True, "auto_cast": True, "initial_scale_power": 0, "fp16_master_weights_and_grads": True},
        "bf16": {"enabled": False},  # accelerate's set_mixed_precision writes the other 16-bit type off
        "steps_per_print": math.inf,
    }
    assert plugin.zero3_init_flag is False


def test_zero3_nvme_offload_bf16_without_clipping():
    cfg = DistributedConfig(deepspeed=True, zero_stage=3, offload_optimizer_device="nvme",
                            offload_optimizer_nvme_path="/nvme/opt", offload_param_device="nvme",
                            offload_param_nvme_path="/nvme/param", zero3_save_16bit_model=True)
    plugin = _plugin(cfg, mixed_precision="bf16", max_grad_norm=0.0, micro_batch_size=2, world_size=8)
    assert plugin.deepspeed_config == {
        "train_batch_size": 16,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": 3,
            "offload_optimizer": {"device": "nvme", "nvme_path": "/nvme/opt"},
            "offload_param": {"device": "nvme", "nvme_path": "/nvme/param"},
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "bf16": {"enabled": True},
        "fp16": {"enabled": False},
        "steps_per_print": math.inf,
    }
    # deepspeed.zero.Init would partition the weights while they load, before dtype/fp8 placement and LoRA.
    assert plugin.zero3_init_flag is False


def test_fp16_master_weights_only_in_fp16():
    plugin = _plugin(DistributedConfig(deepspeed=True, zero_stage=0), mixed_precision="fp16")
    assert plugin.deepspeed_config["fp16"] == {"enabled": True, "auto_cast": True, "initial_scale_power": 0}
    assert "fp16_master_weights_and_grads" not in plugin.deepspeed_config["fp16"]
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 0


def test_accelerate_config_variables_do_not_change_the_flags(monkeypatch, tmp_path):
    for name, value in (("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3"), ("ACCELERATE_GRADIENT_CLIPPING", "5.0"),
                        ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "nvme"),
                        ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "cpu"),
                        ("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true"),
                        ("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "ds.json"))):
        monkeypatch.setenv(name, value)
    config = _plugin(DistributedConfig(deepspeed=True)).deepspeed_config
    assert config["zero_optimization"]["stage"] == 2
    assert config["gradient_clipping"] == 1.0
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert config["zero_optimization"]["offload_param"]["device"] == "none"


@pytest.mark.skipif(HAS_DEEPSPEED, reason="DeepSpeed is installed")
def test_missing_deepspeed_names_the_flag_and_the_install():
    with pytest.raises(ConfigError) as err:
        check_deepspeed("no", LAUNCHED)
    assert err.value.problems == [
        "--deepspeed: DeepSpeed is not installed: pip install deepspeed (or pip install -e '.[deepspeed]'; "
        "docs/deepspeed.md)"]


@pytest.fixture
def installed(monkeypatch):
    """DeepSpeed looks installed (only the checks after the install check run)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(distributed.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "deepspeed" else real(name, *a))


def test_a_run_without_a_launcher_is_refused(installed):
    with pytest.raises(ConfigError) as err:
        check_deepspeed("no", {})
    assert err.value.problems == [
        "--deepspeed: start the run with a launcher that sets LOCAL_RANK and WORLD_SIZE, e.g. accelerate launch "
        "--use_deepspeed --num_processes N sdxl_train_network.py ... (or torchrun)"]


def test_accelerate_deepspeed_config_file_and_flags_are_not_mixed(installed):
    with pytest.raises(ConfigError, match=r"^--deepspeed: accelerate was also given a DeepSpeed config file \(ds"):
        check_deepspeed("no", LAUNCHED | {"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"})


def test_launched_fp32_run_passes(installed):
    check_deepspeed("no", LAUNCHED)


class Recorder:
    """Stands in for accelerate's Accelerator: records each prepare call, returns ('prepared', obj) tuples."""

    def __init__(self, kind, zero_stage=2):
        self.distributed_type, self.calls = kind, []
        self.device = torch.device("cpu")
        self.state = type("State", (), {"deepspeed_plugin": type("Plugin", (), {"zero_stage": zero_stage})()})()

    def prepare(self, *objs):
        self.calls.append(objs)
        out = tuple(("prepared", o) for o in objs)
        return out if len(out) > 1 else out[0]


def _cfg(train_unet=True, train_te=True, mixed_precision="no"):
    from types import SimpleNamespace

    return SimpleNamespace(network=SimpleNamespace(train_unet=train_unet, train_text_encoder=train_te),
                           model=SimpleNamespace(mixed_precision=mixed_precision))


def _models():
    return torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)


def test_without_deepspeed_each_trained_model_is_prepared_on_its_own():
    acc, (unet, te1, te2) = Recorder(DistributedType.NO), _models()
    out = prepare_models(acc, _cfg(), unet, te1, te2, "opt", "loader", "sched")
    # The scheduler is not prepared: accelerate would step it once per process; the loop steps it once per step.
    assert acc.calls == [("opt", "loader"), (unet,), (te1, te2)]
    assert out == (("prepared", unet), ("prepared", te1), ("prepared", te2), ("prepared", "opt"),
                   ("prepared", "loader"), "sched")


def test_without_deepspeed_frozen_models_are_not_prepared():
    acc, (unet, te1, te2) = Recorder(DistributedType.MULTI_CPU), _models()
    out = prepare_models(acc, _cfg(train_te=False), unet, te1, te2, "opt", "loader", "sched")
    assert acc.calls == [("opt", "loader"), (unet,)]
    assert out[1] is te1 and out[2] is te2


def test_with_deepspeed_the_trained_models_are_one_module_prepared_with_the_optimizer():
    acc, (unet, te1, te2) = Recorder(DistributedType.DEEPSPEED), _models()
    network = torch.nn.Linear(2, 2)
    out = prepare_models(acc, _cfg(train_te=True), unet, te1, te2, "opt", "loader", "sched", network=network)
    ((wrapper, *rest),) = acc.calls
    assert rest == ["opt", "loader", "sched"]
    assert isinstance(wrapper, TrainedModels)
    assert dict(wrapper.models) == {"unet": unet, "text_encoder1": te1, "text_encoder2": te2, "network": network}
    # the loop keeps calling the models themselves
    assert out == (unet, te1, te2, ("prepared", "opt"), ("prepared", "loader"), ("prepared", "sched"))


def test_with_deepspeed_frozen_text_encoders_stay_out():
    acc, (unet, te1, te2) = Recorder(DistributedType.DEEPSPEED), _models()
    prepare_models(acc, _cfg(train_te=False), unet, te1, te2, "opt", "loader", "sched")
    assert list(acc.calls[0][0].models) == ["unet"]


@pytest.mark.parametrize(("mixed", "dtype"), [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_with_deepspeed_mixed_precision_forwards_run_in_autocast(mixed, dtype):
    acc, (unet, te1, te2) = Recorder(DistributedType.DEEPSPEED), _models()
    prepare_models(acc, _cfg(train_te=False, mixed_precision=mixed), unet, te1, te2, "opt", "loader", "sched")
    assert unet(torch.ones(1, 2)).dtype == dtype  # float32 weights and input; autocast computes in bf16
    assert te1(torch.ones(1, 2)).dtype == torch.float32  # frozen: not wrapped, forward untouched


def test_full_parameters_is_a_no_op_without_zero3():
    p = torch.nn.Parameter(torch.ones(3))
    with full_parameters([p]):
        assert p.shape == (3,)


class _Device:
    """DeepSpeed's accelerator object as on a CPU-only machine: bf16 yes, fp16 no."""

    def is_fp16_supported(self):
        return False

    def is_bf16_supported(self):
        return True

    def device_name(self):
        return "cpu"


def test_a_precision_the_device_lacks_is_one_line_before_loading(installed, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("deepspeed.accelerator")
    fake.get_accelerator = _Device
    monkeypatch.setitem(sys.modules, "deepspeed", types.ModuleType("deepspeed"))
    monkeypatch.setitem(sys.modules, "deepspeed.accelerator", fake)
    with pytest.raises(ConfigError) as err:
        check_deepspeed("fp16", LAUNCHED)
    assert err.value.problems == ["--deepspeed with --mixed_precision fp16: DeepSpeed's cpu accelerator does not "
                                  "support fp16 on this machine"]
    check_deepspeed("bf16", LAUNCHED)
