"""Every --optimizer_type of spec 9.1 builds and takes steps on a small LoRA-like module; --optimizer_args reach it."""

from __future__ import annotations

import sys

import pytest
import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.options import OPTIMIZERS
from sdxl_lora.config.schema import OptimConfig
from sdxl_lora.train.optim import build_optimizer, check_optimizer, multi_tensor_kwargs, set_train_mode
from sdxl_lora.train.schedulers import build_scheduler

# The class each name stands for, from spec 9.1 (not read from train.optim).
SPEC_CLASSES = {
    "AdamW": "torch.optim.adamw.AdamW", "AdamW8bit": "bitsandbytes.optim.adamw.AdamW8bit",
    "PagedAdamW": "bitsandbytes.optim.adamw.PagedAdamW", "PagedAdamW8bit": "bitsandbytes.optim.adamw.PagedAdamW8bit",
    "PagedAdamW32bit": "bitsandbytes.optim.adamw.PagedAdamW32bit", "Lion": "lion_pytorch.lion_pytorch.Lion",
    "Lion8bit": "bitsandbytes.optim.lion.Lion8bit", "PagedLion8bit": "bitsandbytes.optim.lion.PagedLion8bit",
    "SGDNesterov": "torch.optim.sgd.SGD", "SGDNesterov8bit": "bitsandbytes.optim.sgd.SGD8bit",
    "DAdaptation": "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint",
    "DAdaptAdamPreprint": "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint",
    "DAdaptAdaGrad": "dadaptation.dadapt_adagrad.DAdaptAdaGrad", "DAdaptAdam": "dadaptation.dadapt_adam.DAdaptAdam",
    "DAdaptAdan": "dadaptation.dadapt_adan.DAdaptAdan",
    "DAdaptAdanIP": "dadaptation.experimental.dadapt_adan_ip.DAdaptAdanIP",
    "DAdaptLion": "dadaptation.dadapt_lion.DAdaptLion", "DAdaptSGD": "dadaptation.dadapt_sgd.DAdaptSGD",
    "Prodigy": "prodigyopt.prodigy.Prodigy", "Adafactor": "transformers.optimization.Adafactor",
    "RAdamScheduleFree": "schedulefree.radam_schedulefree.RAdamScheduleFree",
    "AdamWScheduleFree": "schedulefree.adamw_schedulefree.AdamWScheduleFree",
    "SGDScheduleFree": "schedulefree.sgd_schedulefree.SGDScheduleFree",
}
ADAPTIVE = ("DAdapt", "Prodigy")


class TinyLora(torch.nn.Module):
    """A frozen linear layer plus a trainable down/up pair; down has 8 x 512 = 4096 elements, the size at which
    bitsandbytes starts keeping 8-bit state."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.base = torch.nn.Linear(512, 16).requires_grad_(False)
        self.down = torch.nn.Parameter(torch.randn(8, 512, generator=gen) * 0.05)
        self.up = torch.nn.Parameter(torch.randn(16, 8, generator=gen) * 0.05)

    def forward(self, x):
        return self.base(x) + x @ self.down.T @ self.up.T


def _train(name: str, steps: int = 6, **cfg_kwargs):
    """`steps` optimizer steps on a fixed regression; 6 by default because RAdam variants skip the first few."""
    torch.manual_seed(0)
    model = TinyLora()
    x, y = torch.randn(4, 512), torch.randn(4, 16)
    lr = 1.0 if name.startswith(ADAPTIVE) else 1e-3
    cfg = OptimConfig(optimizer_type=name, learning_rate=lr, **cfg_kwargs)
    optimizer = build_optimizer(cfg, [{"params": [model.down, model.up], "lr": lr, "name": "unet"}])
    before = [p.detach().clone() for p in (model.down, model.up)]
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, optimizer, before


def test_the_test_table_covers_every_name_config_lists():
    assert set(SPEC_CLASSES) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_builds_the_spec_class_and_moves_the_weights(name):
    for spelling in (name.lower(), name.upper()):
        model, optimizer, before = _train(spelling)
        cls = type(optimizer)
        assert f"{cls.__module__}.{cls.__name__}" == SPEC_CLASSES[name]
        for param, old in zip((model.down, model.up), before, strict=True):
            assert torch.isfinite(param).all()
            assert not torch.equal(param, old), f"{name}: {tuple(param.shape)} did not move"


@pytest.mark.parametrize("name", ["AdamW8bit", "PagedAdamW8bit", "Lion8bit", "PagedLion8bit"])
def test_8bit_optimizers_keep_uint8_state_on_this_cpu(name):
    model, optimizer, _ = _train(name)
    state = optimizer.state[model.down]
    assert state["state1"].dtype == torch.uint8


def test_sgd_nesterov_gets_nesterov_and_momentum_0_9_unless_given():
    _, optimizer, _ = _train("SGDNesterov")
    assert optimizer.param_groups[0]["nesterov"] is True and optimizer.param_groups[0]["momentum"] == 0.9
    _, optimizer, _ = _train("sgdnesterov", optimizer_args=(("momentum", 0.5),))
    assert optimizer.param_groups[0]["momentum"] == 0.5


def test_optimizer_args_reach_the_optimizer():
    _, optimizer, _ = _train("AdamW", optimizer_args=(("betas", (0.8, 0.95)), ("weight_decay", 0.25)))
    group = optimizer.param_groups[0]
    assert tuple(group["betas"]) == (0.8, 0.95) and group["weight_decay"] == 0.25


def test_adafactor_relative_step_drops_the_lr_and_the_adafactor_schedule_reports_it():
    model, optimizer, _ = _train("Adafactor", steps=0, lr_scheduler="adafactor")
    assert optimizer.param_groups[0]["lr"] is None and optimizer.param_groups[0]["relative_step"] is True
    scheduler = build_scheduler(OptimConfig(optimizer_type="Adafactor", learning_rate=1e-3,
                                            lr_scheduler="adafactor"), optimizer, total_steps=10)
    assert scheduler.get_last_lr() == [1e-3]  # before the first step: the initial LR given by --learning_rate
    _, fixed, _ = _train("Adafactor", optimizer_args=(("relative_step", False), ("scale_parameter", False)))
    assert fixed.param_groups[0]["lr"] == 1e-3 and fixed.param_groups[0]["relative_step"] is False


def test_adafactor_warmup_init_forces_relative_step_as_sd_scripts():
    _, optimizer, _ = _train("Adafactor", steps=1, optimizer_args=(("relative_step", False), ("warmup_init", True)))
    assert optimizer.param_groups[0]["relative_step"] is True


@pytest.mark.parametrize("name", ["AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree"])
def test_schedule_free_starts_in_train_mode_and_eval_swaps_in_the_averaged_weights(name):
    model, optimizer, _ = _train(name)
    assert optimizer.param_groups[0]["train_mode"] is True
    trained = model.down.detach().clone()
    set_train_mode(optimizer, False)
    assert optimizer.param_groups[0]["train_mode"] is False
    assert not torch.equal(model.down, trained)
    set_train_mode(optimizer, True)
    torch.testing.assert_close(model.down, trained)


def test_set_train_mode_is_a_no_op_for_other_optimizers():
    model, optimizer, _ = _train("AdamW")
    weights = model.down.detach().clone()
    set_train_mode(optimizer, False)
    assert torch.equal(model.down, weights)


@pytest.mark.parametrize(("name", "cls"), [("pytorch_optimizer.CAME", "CAME"), ("RAdam", "RAdam"),
                                           ("bitsandbytes.optim.AdEMAMix8bit", "AdEMAMix8bit")])
def test_any_class_path_or_torch_optim_name(name, cls):
    _, optimizer, _ = _train(name)
    assert type(optimizer).__name__ == cls


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)  # import lion_pytorch now raises ImportError
    with pytest.raises(ConfigError, match=r"--optimizer_type Lion: needs .*'lion_pytorch'.*pip install lion-pytorch"):
        check_optimizer(OptimConfig(optimizer_type="Lion"))
    with pytest.raises(ConfigError, match="pip install no-such-pkg"):
        check_optimizer(OptimConfig(optimizer_type="no_such_pkg.Optim"))


def test_unknown_class_and_unknown_argument_are_one_line_each():
    with pytest.raises(ConfigError, match="torch.optim has no optimizer class Adamw8Bits"):
        check_optimizer(OptimConfig(optimizer_type="Adamw8Bits"))
    with pytest.raises(ConfigError) as error:
        check_optimizer(OptimConfig(optimizer_type="AdamW", optimizer_args=(("beta", 0.9), ("weight_decay", 0.1))))
    assert error.value.problems == [error.value.problems[0]]
    assert error.value.problems[0].startswith("--optimizer_args beta: AdamW has no argument beta")


def _run(name: str, fused: bool, steps: int = 5, max_grad_norm: float = 0.0, **cfg_kwargs):
    """`steps` steps of a plain loop (backward, clip, step, schedule, zero_grad) with a linear schedule."""
    torch.manual_seed(0)
    model = TinyLora()
    data = [(torch.randn(4, 512), torch.randn(4, 16)) for _ in range(steps)]
    relative = name == "Adafactor" and not cfg_kwargs.get("optimizer_args")
    schedule = {"lr_scheduler": "adafactor"} if relative else {"lr_scheduler": "linear", "lr_warmup_steps": 2}
    cfg = OptimConfig(optimizer_type=name, learning_rate=1e-2, max_grad_norm=max_grad_norm,
                      fused_backward_pass=fused, **schedule, **cfg_kwargs)
    groups = [{"params": [model.down], "lr": 1e-2, "name": "unet"}, {"params": [model.up], "lr": 5e-3, "name": "te1"}]
    optimizer = build_optimizer(cfg, groups)
    scheduler = build_scheduler(cfg, optimizer, total_steps=steps)
    optimizer.load_state_dict(optimizer.state_dict())  # as accelerate's prepare() does: new group dicts
    for x, y in data:
        torch.nn.functional.mse_loss(model(x), y).backward()
        if max_grad_norm and not fused:
            for group in optimizer.param_groups:  # per tensor, as the fused pass clips
                for p in group["params"]:
                    torch.nn.utils.clip_grad_norm_([p], max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model, optimizer


@pytest.mark.parametrize(("name", "args"), [
    ("AdamW", ()), ("AdamW8bit", ()), ("Lion", ()), ("SGDNesterov", ()),
    ("Adafactor", (("relative_step", False), ("scale_parameter", False))), ("Adafactor", ()),
])
def test_fused_backward_gives_the_weights_of_the_plain_loop(name, args):
    plain, _ = _run(name, fused=False, optimizer_args=args)
    fused, optimizer = _run(name, fused=True, optimizer_args=args)
    assert len(optimizer.fused_optimizers) == 2
    for a, b in ((plain.down, fused.down), (plain.up, fused.up)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert b.grad is None  # freed inside backward


def test_fused_backward_with_per_tensor_clipping_matches_per_tensor_clipping():
    plain, _ = _run("AdamW", fused=False, max_grad_norm=0.01)
    fused, _ = _run("AdamW", fused=True, max_grad_norm=0.01)
    torch.testing.assert_close(plain.up, fused.up)


def test_fused_backward_steps_during_backward_with_the_scheduled_lr():
    model = TinyLora()
    cfg = OptimConfig(learning_rate=1.0, fused_backward_pass=True, lr_scheduler="constant")
    optimizer = build_optimizer(cfg, [{"params": [model.down, model.up], "lr": 1.0, "name": "unet"}])
    optimizer.param_groups[0]["lr"] = 0.25  # as a scheduler would set it
    before = model.up.detach().clone()
    model(torch.randn(2, 512)).sum().backward()
    assert not torch.equal(model.up, before) and model.up.grad is None
    assert optimizer.fused_optimizers[1].param_groups[0]["lr"] == 0.25


def test_torch_optimizers_take_the_foreach_path_on_cpu_with_the_single_tensor_weights():
    """torch leaves CPU tensors on its per-tensor loop; we ask for foreach, which must give the same weights."""
    from types import SimpleNamespace

    def weights(**args):
        torch.manual_seed(0)
        model = TinyLora()
        x, y = torch.randn(4, 512), torch.randn(4, 16)
        cfg = OptimConfig(optimizer_type="AdamW", learning_rate=1e-2, optimizer_args=tuple(args.items()))
        optimizer = build_optimizer(cfg, [{"params": [model.down, model.up], "lr": 1e-2}])
        for _ in range(5):
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        return optimizer.defaults, [p.detach() for p in (model.down, model.up)]

    defaults, ours = weights()
    assert defaults["foreach"] is True and not defaults["fused"]
    single_defaults, single = weights(foreach=False)
    assert single_defaults["foreach"] is False  # the user's choice is kept
    for a, b in zip(ours, single, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    cuda = [{"params": [SimpleNamespace(is_cuda=True, is_floating_point=lambda: True)]}]
    assert multi_tensor_kwargs(torch.optim.AdamW, {}, cuda) == {"fused": True}
    assert multi_tensor_kwargs(torch.optim.RMSprop, {}, cuda) == {"foreach": True}
    assert multi_tensor_kwargs(torch.optim.AdamW, {"fused": False}, cuda) == {}
    lion = pytest.importorskip("lion_pytorch").Lion
    assert multi_tensor_kwargs(lion, {}, cuda) == {}
