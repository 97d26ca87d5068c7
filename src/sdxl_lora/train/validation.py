"""Validation loss on held-out images (spec 1.13, 5.8): fixed timesteps, fixed noise, training unperturbed.

Each validation run computes, for every validation batch (up to max_steps) and each of four fixed timesteps,
the training loss without gradients, and returns the mean. Its noise comes from a generator seeded afresh at the
start of every run, so two runs on the same weights give the same value and the curve over a training run shows
the LoRA changing, not the noise. The global random states (Python, NumPy, torch CPU and CUDA) are saved, seeded
for the run and restored, and the modules go back to the training flags they had: a run with validation trains
exactly as one without.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import torch

from sdxl_lora.config.schema import RunConfig, ValidationConfig
from sdxl_lora.train.optim import set_train_mode

NUM_TIMESTEPS = 4
"""Fixed validation timesteps per batch (sd-scripts' NUM_VALIDATION_TIMESTEPS)."""

StepFn = Callable[[object, int, torch.Generator], torch.Tensor]
"""(batch, timestep, noise generator) -> the batch's scalar loss with every sample at that timestep."""


def validation_timesteps(min_t: int, max_t: int) -> list[int]:
    """The four timesteps strictly inside [min_t, max_t], evenly spaced and truncated to integers, as
    numpy.linspace(min_t, max_t, 6, dtype=int)[1:-1] gives them (0, 1000 -> 200, 400, 600, 800)."""
    step = (max_t - min_t) / (NUM_TIMESTEPS + 1)
    return [int(i * step + min_t) for i in range(1, NUM_TIMESTEPS + 1)]


def validation_due(cfg: ValidationConfig, *, step: int | None = None, epoch: int | None = None) -> bool:
    """Whether to validate after optimizer step `step` (every_n_steps divides it; never without every_n_steps)
    or after the 1-based epoch `epoch` that just ended (every_n_epochs divides it; every epoch without it).
    Give exactly one of the two."""
    if (step is None) == (epoch is None):
        raise ValueError("validation_due: give step or epoch")
    if step is not None:
        return cfg.every_n_steps is not None and step % cfg.every_n_steps == 0
    return cfg.every_n_epochs is None or epoch % cfg.every_n_epochs == 0


def at_timestep(cfg: RunConfig, timestep: int) -> RunConfig:
    """`cfg` with every sample's timestep `timestep`: noise.sample_timesteps puts every sample at max_timestep
    when min_timestep >= max_timestep (sd-scripts sets both to t), drawing nothing from the generator."""
    return replace(cfg, noise=replace(cfg.noise, min_timestep=timestep, max_timestep=timestep))


def fixed_timestep_step(training_step: Callable, parts, cfg: RunConfig) -> StepFn:
    """The StepFn of loop.training_step: the same loss, every sample at the given timestep."""
    configs = {t: at_timestep(cfg, t) for t in validation_timesteps(cfg.noise.min_timestep, cfg.noise.max_timestep)}

    def step(batch, timestep: int, generator: torch.Generator) -> torch.Tensor:
        return training_step(batch, parts, configs.get(timestep) or at_timestep(cfg, timestep), generator)

    return step


def validation_loss(batches: Iterable, step_fn: StepFn, timesteps: list[int], seed: int,
                    max_steps: int | None = None, *, device="cpu", modules: Iterable = (),
                    optimizer=None) -> float:
    """Mean loss over the first `max_steps` batches (all when None) x `timesteps`, without gradients.

    Noise is drawn from a torch.Generator on `device` seeded with `seed` at the start of the run; the global
    RNGs are seeded with `seed` during the run (a DataLoader's worker seeds come from torch's) and restored after.
    `modules` (nn.Modules, None entries skipped) are put in eval mode (LoRA dropouts off) and every submodule
    gets its own training flag back; a schedule-free `optimizer` is switched to its evaluation weights and back.
    """
    modules = [m for m in modules if m is not None]
    flags = [(sub, sub.training) for module in modules for sub in module.modules()]
    states = _rng_states()
    try:
        _seed_all(seed)
        set_train_mode(optimizer, False)
        for module in modules:
            module.eval()
        generator = torch.Generator(device).manual_seed(seed)
        losses = []
        with torch.no_grad():
            for index, batch in enumerate(batches):
                if max_steps is not None and index >= max_steps:
                    break
                losses += [step_fn(batch, timestep, generator).detach().float() for timestep in timesteps]
        if not losses:
            raise ValueError("validation_loss: no validation batch")
        return torch.stack(losses).cpu().double().mean().item()  # the run's only device sync
    finally:
        for sub, training in flags:
            sub.training = training
        set_train_mode(optimizer, True)
        _restore_rng_states(states)


def _cuda_in_use() -> bool:
    """Touch CUDA's RNG only where CUDA already runs: seeding it otherwise would queue a lazy seed that
    changes its state when CUDA starts later."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _rng_states() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if _cuda_in_use() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if _cuda_in_use():
        torch.cuda.manual_seed_all(seed)


def _restore_rng_states(states: tuple) -> None:
    python, numpy_state, cpu, cuda = states
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
