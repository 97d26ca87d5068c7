"""Several processes: each trains its shard of a global batch formed as one process with batch_size x processes
would form it; the loss scale that makes DDP's gradient mean the global batch's. Numbers worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_train_dataset import Numbered, config

from sdxl_lora.data.batch import Shard, shard_rows
from sdxl_lora.data.dataset import TrainDataset, TrainDatasets
from sdxl_lora.data.plan import build_plan


def test_shard_rows_split_contiguously_the_first_ones_longer():
    assert [shard_rows(10, r, 4) for r in range(4)] == [(0, 1, 2), (3, 4, 5), (6, 7), (8, 9)]
    assert [shard_rows(4, r, 2) for r in range(2)] == [(0, 1), (2, 3)]
    assert [shard_rows(1, r, 2) for r in range(2)] == [(0,), ()]
    assert [shard_rows(3, r, 1) for r in range(1)] == [(0, 1, 2)]


def test_loss_scale_makes_the_mean_of_process_losses_the_global_mean():
    # Global batch of 3 samples with losses 1, 2, 6 (mean 3) over 2 processes: rows (0, 1) and (2,).
    first, second = Shard((0, 1), 3, 2, ()), Shard((2,), 3, 2, ())
    assert (first.loss_scale, second.loss_scale) == pytest.approx((4 / 3, 2 / 3))
    # Each process's mean loss times its scale: 1.5 * 4/3 = 2 and 6 * 2/3 = 4; DDP's mean of the two is 3.
    assert (1.5 * first.loss_scale + 6 * second.loss_scale) / 2 == pytest.approx(3.0)
    # A process without a row holds row 0 again with weight 0: its loss is 0 whatever its scale.
    assert Shard((0,), 1, 2, ()).loss_scale == pytest.approx(2.0)


def _dataset(tmp_path, batch_size: int, processes: int) -> TrainDataset:
    (plan,) = build_plan((replace(config(tmp_path, color_aug=True, flip_aug=True), batch_size=batch_size),)
                         ).datasets
    return TrainDataset(plan, seed=7, prior_loss_weight=0.25, processes=processes)


def test_four_shards_put_together_are_the_batch_of_one_process_with_four_times_the_batch(tmp_path):
    single, sharded = _dataset(tmp_path, 4, 1), _dataset(tmp_path, 1, 4)
    assert len(sharded) == len(single) == 6  # buckets of 14, 2 and 4 samples in batches of 4: 4 + 1 + 1
    sharded.set_epoch(1)
    single.set_epoch(1)
    padded = 0
    for index in range(len(single)):
        whole = single.batch(index, step=0)
        parts = [sharded.batch(index, step=0, rank=r) for r in range(4)]
        real = [p for r, p in enumerate(parts) if shard_rows(len(whole), r, 4)]
        keys = [k for p in real for k in p.latent_keys]
        assert keys == whole.latent_keys  # same images, flips and crops, in the same rows
        assert [c for p in real for c in p.captions] == whole.captions
        assert [w for p in real for w in p.loss_weights.tolist()] == whole.loss_weights.tolist()
        assert all(p.shard.paths == tuple(whole.paths) and p.shard.size == len(whole) for p in parts)
        for part in parts[len(real):]:  # no rows left: row 0 again, weighing nothing
            assert part.shard.rows == (0,) and part.loss_weights.tolist() == [0.0]
            assert part.paths == whole.paths[:1]
            padded += 1
    assert padded == 4  # the last batch of 14 (2 left) and the bucket of 2 leave processes 2 and 3 idle


def test_the_loader_order_hands_each_process_its_shard_of_every_global_batch():
    datasets = TrainDatasets([Numbered("A", 3)], seed=40, processes=2)
    assert len(datasets) == 6 and datasets.num_batches == 3
    datasets.datasets[0].batch = lambda j, step, rank=0: (j, step, rank)
    order = [j for _, j in datasets.batch_order()]
    items = [datasets[k] for k in range(len(datasets))]
    # accelerate's loader gives process r the items r, r + 2, r + 4: every global batch in order, its own shard,
    # and the step of a global batch (token warmup) is the same on both.
    assert items[0::2] == [(j, step, 0) for step, j in enumerate(order)]
    assert items[1::2] == [(j, step, 1) for step, j in enumerate(order)]
