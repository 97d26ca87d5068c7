"""Save schedules, names and deletion rules (spec 7.1, 7.2), worked out by hand."""

from __future__ import annotations

import pytest

from sdxl_lora.train.schedule import (
    Every,
    due_at_epoch,
    due_at_step,
    epoch_name,
    epoch_save_interval,
    file_name,
    final_name,
    stale_epoch,
    stale_step,
    state_name,
    step_name,
)


def test_names_follow_sd_scripts():
    assert file_name(epoch_name("my_lora", 1), "safetensors") == "my_lora-000001.safetensors"
    assert file_name(step_name("my_lora", 100), "safetensors") == "my_lora-step00000100.safetensors"
    assert file_name(final_name("my_lora"), "ckpt") == "my_lora.ckpt"
    # Without --output_name: 'epoch', 'at' and 'last'.
    assert (epoch_name(None, 3), step_name(None, 7), final_name(None)) == ("epoch-000003", "at-step00000007", "last")
    assert state_name(epoch_name(None, 3)) == "epoch-000003-state"
    assert state_name(final_name(None)) == "last-state"
    assert file_name("lora", "diffusers_safetensors") == "lora"  # a folder


def test_step_saves_at_multiples_only():
    every = Every(steps=3)
    assert [s for s in range(1, 11) if due_at_step(every, s)] == [3, 6, 9]
    assert not any(due_at_step(Every(), s) for s in range(1, 11))


def test_epoch_saves_skip_the_last_epoch():
    every = Every(epochs=2)
    assert [e for e in range(1, 7) if due_at_epoch(every, e, num_epochs=6)] == [2, 4]  # 6 is the final file
    assert [e for e in range(1, 8) if due_at_epoch(every, e, num_epochs=7)] == [2, 4, 6]


@pytest.mark.parametrize(("every", "ratio", "epochs", "expected"), [
    (None, None, 10, None), (3, None, 10, 3), (None, 3, 10, 3), (None, 4, 10, 2), (None, 20, 10, 1), (5, 2, 10, 5),
])
def test_save_n_epoch_ratio(every, ratio, epochs, expected):
    assert epoch_save_interval(every, ratio, epochs) == expected


def test_epoch_deletion_keeps_the_last_n_saves():
    # every 2 epochs, keep 2: after saving 6, epoch 2 goes (4 and 6 remain).
    assert stale_epoch(6, 2, 2) == 2
    assert stale_epoch(4, 2, 2) is None  # 0: nothing was saved at epoch 0
    assert stale_epoch(6, 2, None) is None


def test_step_deletion_rounds_down_to_a_saved_step():
    # The spec's example: every 10, last 30 -> at step 50 the save of step 10 goes.
    assert stale_step(50, 10, 30) == 10
    assert stale_step(40, 10, 30) is None  # 40 - 31 = 9 -> 0: no save at step 0
    assert stale_step(45, 5, 12) == 30  # 45 - 13 = 32 -> 30
    assert stale_step(50, 10, None) is None


def test_start_position_priority_and_the_position_of_a_step():
    from sdxl_lora.train.state import TrainState, position_of, start_position

    # --initial_step wins, then --initial_epoch (first step of that 1-based epoch), then the state's step.
    assert start_position(9, 4, 3, steps_per_epoch=5) == 4
    assert start_position(9, None, 3, steps_per_epoch=5) == 10
    assert start_position(9, None, None, steps_per_epoch=5) == 9
    assert start_position(None, None, None, steps_per_epoch=5) is None
    # Step 7 of 5 steps per epoch with accumulation 2: epoch 1 (0-based), 2 steps in = 4 batches in.
    assert position_of(7, 5, 2, skip_batches=True) == TrainState(epoch=1, step=7, batch=4)
    assert position_of(7, 5, 2, skip_batches=False) == TrainState(epoch=1, step=7, batch=0)
