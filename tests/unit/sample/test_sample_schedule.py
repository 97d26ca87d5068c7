"""When samples are due (spec 8.3), as pure functions of SampleConfig."""

from __future__ import annotations

from pathlib import Path

from sdxl_lora.config.schema import SampleConfig
from sdxl_lora.sample.schedule import (
    sample_due_at_epoch,
    sample_due_at_first,
    sample_due_at_step,
    sampling_enabled,
)

PROMPTS = Path("p.txt")


def test_every_n_steps_fires_on_multiples_of_n_only():
    cfg = SampleConfig(prompts=PROMPTS, every_n_steps=3)
    assert [s for s in range(0, 10) if sample_due_at_step(cfg, s)] == [3, 6, 9]
    assert not any(sample_due_at_epoch(cfg, e) for e in range(5)) and not sample_due_at_first(cfg)


def test_every_n_epochs_fires_at_the_end_of_multiples_of_n():
    cfg = SampleConfig(prompts=PROMPTS, every_n_epochs=2)
    assert [e for e in range(0, 7) if sample_due_at_epoch(cfg, e)] == [2, 4, 6]
    assert not any(sample_due_at_step(cfg, s) for s in range(10))


def test_at_first():
    assert sample_due_at_first(SampleConfig(prompts=PROMPTS, at_first=True))
    assert not sample_due_at_first(SampleConfig(prompts=PROMPTS))


def test_nothing_is_due_without_prompts():
    cfg = SampleConfig(prompts=None, every_n_steps=1, every_n_epochs=1, at_first=True)
    assert not (sample_due_at_first(cfg) or sample_due_at_step(cfg, 1) or sample_due_at_epoch(cfg, 1))
    assert not sampling_enabled(cfg)
    assert not sampling_enabled(SampleConfig(prompts=PROMPTS))
    assert sampling_enabled(SampleConfig(prompts=PROMPTS, every_n_epochs=1))
