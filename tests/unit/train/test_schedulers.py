"""Each --lr_scheduler's LR curve at pinned steps (spec 9.2). The optimizer LR is 1, so the LR is the schedule's
multiplier; every expected value is worked out by hand from the definition in the comment."""

from __future__ import annotations

import math

import pytest
import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.options import SCHEDULERS
from sdxl_lora.config.schema import OptimConfig
from sdxl_lora.train.schedulers import build_scheduler, check_scheduler


def lrs_at(cfg: OptimConfig, steps: list[int], total: int = 10) -> list[float]:
    """LR after k scheduler steps, for each k in `steps`."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(cfg, optimizer, total_steps=total)
    out, done = [], 0
    for k in steps:
        while done < k:
            optimizer.step()
            scheduler.step()
            done += 1
        out.append(optimizer.param_groups[0]["lr"])
    return out


CURVES = {
    # constant: 1 everywhere
    "constant": (OptimConfig(lr_scheduler="constant"), [0, 5, 10], [1.0, 1.0, 1.0]),
    # k / warmup during warmup (4 steps), then 1
    "constant_with_warmup": (OptimConfig(lr_scheduler="constant_with_warmup", lr_warmup_steps=4),
                             [0, 1, 2, 3, 4, 9], [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]),
    # warmup 2: k/2; then (10 - k) / (10 - 2)
    "linear": (OptimConfig(lr_scheduler="linear", lr_warmup_steps=2), [0, 1, 2, 6, 9, 10],
               [0.0, 0.5, 1.0, 0.5, 0.125, 0.0]),
    # warmup 2; then 0.5 (1 + cos(pi (k - 2) / 8)): k=4 -> 0.5 (1 + cos(pi/4)) = 0.853553..., k=6 -> 0.5
    "cosine": (OptimConfig(lr_scheduler="cosine", lr_warmup_steps=2), [1, 2, 4, 6, 10],
               [0.5, 1.0, 0.5 * (1 + math.sqrt(0.5)), 0.5, 0.0]),
    # 2 cycles over 10 steps: 0.5 (1 + cos(pi ((2 k / 10) mod 1))); restarts at k=5; 0 at the end
    "cosine_with_restarts": (OptimConfig(lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=2),
                             [0, 4, 5, 6, 10], [1.0, 0.5 * (1 + math.cos(0.8 * math.pi)), 1.0,
                                                0.5 * (1 + math.cos(0.2 * math.pi)), 0.0]),
    # power 2, lr_end 1e-7: (1 - 1e-7) (1 - k/10)^2 + 1e-7
    "polynomial": (OptimConfig(lr_scheduler="polynomial", lr_scheduler_power=2.0), [0, 5, 10],
                   [1.0, (1 - 1e-7) * 0.25 + 1e-7, 1e-7]),
    # warmup 4: k/4; then 1 / sqrt((k + timescale - warmup) / timescale), timescale = warmup = 4
    "inverse_sqrt": (OptimConfig(lr_scheduler="inverse_sqrt", lr_warmup_steps=4), [2, 4, 9, 16],
                     [0.5, 1.0, 2 / 3, 0.5]),
    # num_cycles 1 -> 0.5 (sd-scripts halves it): warmup 2, then 0.1 + 0.9 * 0.5 (1 + cos(pi (k - 2) / 8))
    "cosine_with_min_lr": (OptimConfig(lr_scheduler="cosine_with_min_lr", lr_warmup_steps=2,
                                       lr_scheduler_min_lr_ratio=0.1), [1, 2, 6, 10], [0.5, 1.0, 0.55, 0.1]),
    # warmup 2 (0.2 + 0.8 k/2), stable 10 - 2 - 4 = 4 steps at 1, decay 4 (40%):
    # 0.2 + 0.8 * 0.5 (1 + cos(pi (k - 6) / 4)), then the floor 0.2
    "warmup_stable_decay": (OptimConfig(lr_scheduler="warmup_stable_decay", lr_warmup_steps=2, lr_decay_steps=0.4,
                                        lr_scheduler_min_lr_ratio=0.2),
                            [0, 1, 2, 5, 6, 8, 10], [0.2, 0.6, 1.0, 1.0, 1.0, 0.6, 0.2]),
    # multiplier 1 before step 3, 0.5 before step 6, then 0.1
    "piecewise_constant": (OptimConfig(lr_scheduler="piecewise_constant",
                                       lr_scheduler_args=(("step_rules", "1:3,0.5:6,0.1"),)),
                           [0, 2, 3, 5, 6, 9], [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]),
}


def test_every_scheduler_name_has_a_curve_here():
    assert set(CURVES) | {"adafactor"} == set(SCHEDULERS)


@pytest.mark.parametrize("name", sorted(CURVES))
def test_curve_at_pinned_steps(name):
    cfg, steps, expected = CURVES[name]
    assert lrs_at(cfg, steps) == pytest.approx(expected, abs=1e-12)


def test_warmup_and_decay_fractions_are_of_the_total_steps():
    # total 20: warmup 25% -> 5 steps; linear then falls as (20 - k) / 15
    cfg = OptimConfig(lr_scheduler="linear", lr_warmup_steps=0.25)
    assert lrs_at(cfg, [1, 5, 8, 20], total=20) == pytest.approx([0.2, 1.0, 0.8, 0.0])


def test_inverse_sqrt_timescale():
    # warmup 4, timescale 8: shift 4; k=12 -> 1 / sqrt(16 / 8) = 0.7071...
    cfg = OptimConfig(lr_scheduler="inverse_sqrt", lr_warmup_steps=4, lr_scheduler_timescale=8)
    assert lrs_at(cfg, [4, 12]) == pytest.approx([1.0, math.sqrt(0.5)])


def test_scheduler_args_are_added_to_a_built_in_schedule():
    # transformers' polynomial takes lr_end: (1 - 0.5) (1 - k/10) + 0.5 at power 1
    cfg = OptimConfig(lr_scheduler="polynomial", lr_scheduler_args=(("lr_end", 0.5),))
    assert lrs_at(cfg, [0, 4, 10]) == pytest.approx([1.0, 0.8, 0.5])


def test_lr_scheduler_type_by_torch_name_or_class_path_with_its_arguments():
    step_lr = OptimConfig(lr_scheduler="cosine", lr_scheduler_type="StepLR",
                          lr_scheduler_args=(("step_size", 3), ("gamma", 0.5)))
    assert lrs_at(step_lr, [2, 3, 6]) == pytest.approx([1.0, 0.5, 0.25])
    exponential = OptimConfig(lr_scheduler_type="torch.optim.lr_scheduler.ExponentialLR",
                              lr_scheduler_args=(("gamma", 0.5),))
    assert lrs_at(exponential, [1, 3]) == pytest.approx([0.5, 0.125])


def test_schedule_free_optimizers_keep_a_constant_lr_whatever_the_schedule():
    cfg = OptimConfig(optimizer_type="AdamWScheduleFree", lr_scheduler="linear", lr_warmup_steps=2)
    assert lrs_at(cfg, [0, 1, 10]) == [1.0, 1.0, 1.0]


def test_adafactor_schedule_reports_the_relative_step_size():
    from transformers.optimization import Adafactor

    param = torch.nn.Parameter(torch.ones(4))
    optimizer = Adafactor([param], lr=None, relative_step=True, scale_parameter=False)
    scheduler = build_scheduler(OptimConfig(optimizer_type="Adafactor", lr_scheduler="adafactor",
                                            learning_rate=3e-4), optimizer, total_steps=10)
    assert scheduler.get_last_lr() == [3e-4]  # the initial LR (--learning_rate) until a step is taken
    for _ in range(4):
        param.sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    # relative step at step 4: min(1e-2, 1/sqrt(4)) = 1e-2 (scale_parameter off, no warmup_init)
    param.sum().backward()
    scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([1e-2])


def test_scheduler_class_problems_are_one_line_each():
    with pytest.raises(ConfigError, match="--lr_scheduler_type NoSuchLR: torch.optim.lr_scheduler has no class"):
        check_scheduler(OptimConfig(lr_scheduler_type="NoSuchLR"))
    with pytest.raises(ConfigError, match="pip install nope-pkg"):
        check_scheduler(OptimConfig(lr_scheduler_type="nope_pkg.Sched"))
    with pytest.raises(ConfigError, match="--lr_scheduler_args gama: StepLR has no argument gama"):
        check_scheduler(OptimConfig(lr_scheduler_type="StepLR", lr_scheduler_args=(("gama", 0.5),)))
