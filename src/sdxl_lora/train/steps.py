"""Step and epoch arithmetic (spec 0.1): one place, plain integers in and out."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    """How long the run is."""

    batches_per_epoch: int
    """DataLoader length (per process)."""
    steps_per_epoch: int
    """Optimizer steps per epoch: ceil(batches / gradient accumulation)."""
    max_train_steps: int
    """Total optimizer steps."""
    num_epochs: int
    """Epochs needed to reach max_train_steps."""


def plan_steps(batches_per_epoch: int, grad_accum: int, max_train_steps: int,
               max_train_epochs: int | None, num_processes: int = 1) -> StepPlan:
    """sd-scripts' arithmetic: --max_train_epochs overrides --max_train_steps; the run stops at whichever
    of steps / epochs comes first."""
    steps_per_epoch = math.ceil(batches_per_epoch / grad_accum)
    if max_train_epochs is not None:
        max_train_steps = max_train_epochs * math.ceil(batches_per_epoch / num_processes / grad_accum)
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    return StepPlan(batches_per_epoch, steps_per_epoch, max_train_steps, num_epochs)


def warmup_steps(value: float | int, total_steps: int) -> int:
    """--lr_warmup_steps (and --lr_decay_steps) in steps (spec 1.7, 9.2): an int is a step count; a float is a
    fraction of `total_steps` (from '0.1' or 'N%', so '100%' = 1.0 = every step), rounded down as sd-scripts
    does. A product within 1e-9 of an integer counts as that integer: '29%' of 100 is 29 steps, not the 28
    that 0.29 * 100 = 28.999999999999996 would give."""
    if isinstance(value, float):
        return math.floor(value * total_steps + 1e-9)
    return int(value)
