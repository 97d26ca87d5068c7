"""Several processes without launching them: the refusal of lone copies, and loss reads that are the same on
every process (the mean over them, at the same steps), so a NaN on one process stops all of them alike."""

from __future__ import annotations

import pytest
import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.runtime import refuse_lone_copies
from sdxl_lora.train.progress import LossMeter, NonFiniteLoss


def test_processes_that_do_not_see_each_other_are_refused_each_saying_why():
    with pytest.raises(ConfigError) as first:
        refuse_lone_copies(1, {"WORLD_SIZE": "2", "RANK": "0"})
    assert first.value.problems[0].startswith("2 processes were launched (WORLD_SIZE=2) but each one trains alone")
    assert "ACCELERATE_USE_CPU=1" in first.value.problems[0]
    with pytest.raises(ConfigError) as other:
        refuse_lone_copies(1, {"PMI_SIZE": "4", "PMI_RANK": "3"})  # an MPI launcher's variables
    assert other.value.problems[0].startswith("4 processes were launched (PMI_SIZE=4)")


def test_a_real_group_or_a_single_process_goes_on():
    refuse_lone_copies(2, {"WORLD_SIZE": "2", "RANK": "1"})
    refuse_lone_copies(1, {"WORLD_SIZE": "1"})
    refuse_lone_copies(1, {})


def _meter(other: list[float], main: bool = True) -> LossMeter:
    """A meter of process 0 of 2 whose partner process pending losses are `other` (and its interval slot 0)."""
    return LossMeter(sum_over_processes=lambda t: t + torch.tensor([*other, 0.0 if main else 5.0]),
                     processes=2, main=main)


def test_a_read_is_the_mean_over_the_processes():
    meter = _meter([3.0, 1.0])
    meter.add(1, torch.tensor(1.0), [])
    meter.add(2, torch.tensor(2.0), [])
    assert [v for _, v in meter.read()] == [2.0, 1.5]  # (1 + 3) / 2, (2 + 1) / 2


def test_a_nan_on_the_other_process_stops_this_one_at_the_same_step():
    meter = _meter([1.0, float("nan")])
    meter.add(1, torch.tensor(1.0), [], ("a.png",))
    meter.add(2, torch.tensor(1.0), [], ("b.png",))
    with pytest.raises(NonFiniteLoss) as err:
        meter.read()
    assert err.value.pending.step == 2


def test_reads_come_every_n_steps_as_the_main_process_chose():
    meter = _meter([1.0], main=False)  # the main process (the partner here) asks for a read every 5 steps
    meter.add(1, torch.tensor(1.0), [])
    assert meter.due()  # before the first read: every step
    meter.read()
    for step in range(2, 6):
        meter.add(step, torch.tensor(1.0), [])
        assert not meter.due()
    meter.add(6, torch.tensor(1.0), [])
    assert meter.due()


def test_a_shard_draws_exactly_its_rows_of_the_global_batch():
    """Every option that draws per batch (random strengths, the pyramid's scale and global std) or reads the
    latents (the adaptive offset): a process holding rows 1 and 2 of 3 gets those rows of the whole draw. (Both
    together are not exact: the pyramid's std would need the other processes' latents; docs/multi-gpu.md.)"""
    from sdxl_lora.config.schema import NoiseConfig
    from sdxl_lora.train.noise import draw

    strengths = {"noise_offset": 0.1, "noise_offset_random_strength": True, "ip_noise_gamma": 0.1,
                 "ip_noise_gamma_random_strength": True}
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for cfg in (NoiseConfig(**strengths, adaptive_noise_scale=0.05), NoiseConfig(**strengths,
                                                                                  multires_noise_iterations=3)):
        whole = draw(latents, cfg, torch.Generator().manual_seed(5))
        part = draw(latents[1:], cfg, torch.Generator().manual_seed(5), rows=(1, 2), size=3)
        for full, shard in zip(whole, part, strict=True):
            assert torch.equal(full[1:], shard)
