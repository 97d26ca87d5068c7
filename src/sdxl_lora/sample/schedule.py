"""When to sample (spec 8.3): pure functions of the frozen SampleConfig that the training loop calls.

Triggers, as sd-scripts: before the first step with --sample_at_first; after an optimizer step whose number N
divides (--sample_every_n_steps, only when --sample_every_n_epochs is unset: config.sampling turns it off then);
at the end of a 1-based epoch that --sample_every_n_epochs divides. No prompt file: never.
"""

from __future__ import annotations

from sdxl_lora.config.schema import SampleConfig


def sample_due_at_first(cfg: SampleConfig) -> bool:
    """Sample before the first step (files named e000000)."""
    return cfg.prompts is not None and cfg.at_first


def sample_due_at_step(cfg: SampleConfig, step: int) -> bool:
    """Sample after optimizer step `step` (counted from 1)."""
    return cfg.prompts is not None and cfg.every_n_steps is not None and step > 0 and step % cfg.every_n_steps == 0


def sample_due_at_epoch(cfg: SampleConfig, epoch: int) -> bool:
    """Sample at the end of epoch `epoch` (counted from 1)."""
    return (cfg.prompts is not None and cfg.every_n_epochs is not None and epoch > 0
            and epoch % cfg.every_n_epochs == 0)


def sampling_enabled(cfg: SampleConfig) -> bool:
    """Some trigger can fire: the prompt file is read (and checked) before the models load."""
    return cfg.prompts is not None and (cfg.at_first or cfg.every_n_steps is not None
                                        or cfg.every_n_epochs is not None)
