"""--optimizer_type / --lr_scheduler: one table in config says which names work; train.optim builds exactly those."""

from __future__ import annotations

import pytest
import torch

from sdxl_lora.config.options import OPTIMIZERS, SCHEDULERS, WORKS
from sdxl_lora.config.rules import check_rules
from sdxl_lora.config.schema import OptimConfig
from sdxl_lora.train.optim import OPTIMIZER_CLASSES, build_optimizer, build_scheduler


def test_train_builds_exactly_the_optimizers_config_marks_working():
    assert set(OPTIMIZER_CLASSES) == {name.lower() for name, status in OPTIMIZERS.items() if status == WORKS}


@pytest.mark.parametrize("name", [name for name, status in OPTIMIZERS.items() if status == WORKS])
def test_every_working_optimizer_builds_in_any_case(name):
    param = torch.nn.Parameter(torch.zeros(2))
    for spelling in (name, name.lower(), name.upper()):
        optimizer = build_optimizer(OptimConfig(optimizer_type=spelling, learning_rate=0.5), [{"params": [param]}])
        assert optimizer.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("name", [name for name, status in SCHEDULERS.items() if status == WORKS])
def test_every_working_scheduler_builds(name):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    build_scheduler(OptimConfig(lr_scheduler=name), optimizer, total_steps=10, warmup=2)


def _choice_problems(**values) -> list[str]:
    return [p for p in check_rules(values) if p.startswith(("--optimizer_type", "--lr_scheduler"))]


def test_names_not_working_are_refused_with_the_roadmap():
    assert _choice_problems(optimizer_type="adamw", lr_scheduler="cosine") == []
    assert _choice_problems(optimizer_type="Prodigy", lr_scheduler="polynomial") == [
        "--optimizer_type Prodigy: not supported yet (roadmap: training loop); available: AdamW",
        "--lr_scheduler polynomial: not supported yet (roadmap: training loop); "
        "available: constant, constant_with_warmup, cosine, linear",
    ]
    assert _choice_problems(optimizer_type="my.module.Opt", lr_scheduler="Cosine")[0].startswith(
        "--optimizer_type my.module.Opt: not supported yet")
