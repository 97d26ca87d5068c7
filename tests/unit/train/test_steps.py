"""Step and epoch arithmetic (spec 0.1), against numbers worked out by hand. (Warmup has its own tests.)"""

from __future__ import annotations

from sdxl_lora.train.steps import plan_steps


def test_steps_per_epoch_round_up_partial_accumulation():
    # 10 batches, 3 per step: steps after batches 3, 6, 9 and the epoch's end (10) -> 4 per epoch;
    # 25 steps need ceil(25 / 4) = 7 epochs.
    plan = plan_steps(10, 3, 25, None)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.max_train_steps, plan.num_epochs) == (10, 4, 25, 7)


def test_without_accumulation_every_batch_is_a_step():
    plan = plan_steps(10, 1, 25, None)
    assert (plan.steps_per_epoch, plan.max_train_steps, plan.num_epochs) == (10, 25, 3)


def test_max_train_epochs_overrides_max_train_steps():
    """sd-scripts: --max_train_epochs sets the step count (2 epochs x 4 steps), whatever --max_train_steps says."""
    assert (plan_steps(10, 3, 1600, 2).max_train_steps, plan_steps(10, 3, 1600, 2).num_epochs) == (8, 2)
    assert (plan_steps(10, 3, 1, 2).max_train_steps, plan_steps(10, 3, 1, 2).num_epochs) == (8, 2)


def test_fewer_steps_than_an_epoch_is_one_epoch():
    plan = plan_steps(50, 2, 5, None)
    assert (plan.steps_per_epoch, plan.max_train_steps, plan.num_epochs) == (25, 5, 1)
