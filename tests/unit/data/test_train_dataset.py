"""TrainDataset: single-bucket batches, shapes, conditioning, loss weights, epoch shuffling (spec 2.6, 2.8)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.data.dataset import TrainDataset, build_train_dataset, collate_first, final_caption
from sdxl_lora.data.plan import build_plan


def pngs(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        Image.new("RGB", size, (200, 30, 90)).save(folder / f"{name}.png")
    return folder


def config(tmp_path: Path, batch_size: int = 3, **subset_settings) -> DatasetConfig:
    train = pngs(tmp_path / "train", {"a": (128, 128), "b": (130, 128), "c": (200, 64), "d": (64, 180),
                                      "e": (64, 210)})
    reg = pngs(tmp_path / "reg", {"r": (128, 128)})
    subsets = (SubsetConfig(str(train), num_repeats=2, class_tokens="sks", **subset_settings),
               SubsetConfig(str(reg), is_reg=True, class_tokens="dog"))
    return DatasetConfig(subsets=subsets, resolution=(128, 128), enable_bucket=True, min_bucket_reso=64,
                         max_bucket_reso=256, batch_size=batch_size)


def make(tmp_path: Path, seed: int = 7, **kwargs) -> TrainDataset:
    (plan,) = build_plan((config(tmp_path, **kwargs),)).datasets
    return TrainDataset(plan, seed=seed, prior_loss_weight=0.25)


def test_batches_are_single_bucket_with_matching_shapes(tmp_path):
    dataset = make(tmp_path)
    # Buckets: (128,128): a,b x2 + r balanced to 10 samples -> 4+10 = 14 -> ceil(14/3) = 5 batches;
    # (192,64): c x2 -> 1; (64,192): d,e x2 = 4 -> 2. Total 8.
    assert len(dataset) == 8 == dataset.plan.batches_per_epoch
    seen = 0
    for index in range(len(dataset)):
        batch = dataset[index]
        height, width = batch["images"].shape[2:]
        count = len(batch["captions"])
        assert batch["images"].shape == (count, 3, height, width) and batch["images"].dtype == torch.float32
        assert batch["target_size_hw"].tolist() == [[height, width]] * count
        assert batch["target_size_hw"].dtype == torch.long and batch["crop_top_left"].shape == (count, 2)
        for path, size, weight in zip(batch["paths"], batch["original_size_hw"].tolist(),
                                      batch["loss_weights"].tolist(), strict=True):
            with Image.open(path) as image:
                assert size == [image.height, image.width]
            assert weight == (0.25 if "/reg/" in path else 1.0)
        seen += count
    assert seen == 4 + 10 + 2 + 4


def test_conditioning_values(tmp_path):
    dataset = make(tmp_path, batch_size=4)
    batch = next(dataset[i] for i in range(len(dataset)) if dataset[i]["paths"][0].endswith("c.png"))
    # c 200x64 in bucket (192,64): bucket 3.0 < image 3.125 -> fit by width: 192 x 61.44; top = floor(1.28) = 1.
    assert batch["original_size_hw"].tolist() == [[64, 200], [64, 200]]
    assert batch["crop_top_left"].tolist() == [[1, 0], [1, 0]]
    assert batch["captions"] == ["sks", "sks"]


def test_epoch_shuffling_is_deterministic(tmp_path):
    def order(dataset, epoch):
        dataset.set_epoch(epoch)
        return [[Path(i.path).name for i in dataset.batch_images(k)] for k in range(len(dataset))]

    first, second = make(tmp_path), make(tmp_path)
    assert order(first, 1) == order(second, 1)
    assert order(first, 1) != order(first, 2)
    assert order(first, 3) == order(second, 3) and order(first, 1) == order(second, 1)  # any epoch order
    assert order(first, 1) != order(make(tmp_path, seed=8), 1)


def test_epoch_order_matches_sd_scripts_shuffle(tmp_path):
    # random.seed(seed + epoch), shuffle the (bucket, batch) list, then each bucket's images in bucket order.
    dataset = make(tmp_path)
    rng = random.Random(7 + 5)
    batches = [(b, j) for b, bucket in enumerate(dataset._buckets)
               for j in range(math.ceil(len(bucket) / 3))]
    rng.shuffle(batches)
    buckets = [list(bucket) for bucket in dataset._buckets]
    for bucket in buckets:
        rng.shuffle(bucket)
    dataset.set_epoch(5)
    b, j = batches[0]
    expected = [dataset.plan.images[k].path for k in buckets[b][j * 3:(j + 1) * 3]]
    assert [i.path for i in dataset.batch_images(0)] == expected


def test_flip_aug_flips_some_images_and_their_crop_conditioning(tmp_path):
    dataset = make(tmp_path, batch_size=4, flip_aug=True)
    lefts = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            batch = dataset[index]
            lefts |= {tuple(x) for x, p in zip(batch["crop_top_left"].tolist(), batch["paths"], strict=True)
                      if p.endswith("e.png")}
    # e 64x210 in (64,192): bucket 0.333 > image 0.305 -> fit by height: 58.51 x 192;
    # left = floor(5.49 / 2) = 2; flipped: 64 - (2 + 58.51) = 3.49 -> 3.
    assert lefts == {(0, 2), (0, 3)}
    dataset.set_epoch(1)
    assert torch.equal(dataset[0]["images"], dataset[0]["images"])  # same flips for the same epoch and index


def test_latent_jobs_cover_every_image_and_flip_once(tmp_path):
    dataset = make(tmp_path, flip_aug=True)
    keys = [job.key for job in dataset.latent_jobs()]
    # 5 training images with and without flip + 1 regularisation image (no flip_aug on that subset).
    assert len(keys) == len(set(keys)) == 11
    by_key = {job.key: job.pixels() for job in dataset.latent_jobs()}
    for (_, (width, height), _), image in by_key.items():
        assert image.shape == (3, height, width)
    path = dataset.plan.images[0].path
    assert torch.equal(by_key[(path, (128, 128), True)], by_key[(path, (128, 128), False)].flip(-1))


def test_latents_replace_images_after_set_latents(tmp_path):
    dataset = make(tmp_path, flip_aug=True)
    cache = {key: torch.full((4, key[1][1] // 8, key[1][0] // 8), float(i))
             for i, key in enumerate(job.key for job in dataset.latent_jobs())}
    dataset.set_epoch(1)
    with_images = dataset[0]
    dataset.set_latents(cache)
    batch = dataset[0]
    assert "images" not in batch and "images" in with_images
    assert batch["latent_keys"] == with_images["latent_keys"]  # same flips either way
    assert torch.equal(batch["latents"], torch.stack([cache[k] for k in batch["latent_keys"]]))


def test_final_caption_prefix_suffix_and_wildcards():
    subset = SubsetConfig("x", caption_prefix="best,", caption_suffix="end", enable_wildcard=True)
    rng = random.Random(0)
    captions = {final_caption("a {red|blue} dog\ncat", subset, rng) for _ in range(50)}
    assert captions == {"best, a red dog end", "best, a blue dog end", "best, cat end"}
    assert final_caption("a {x|y}", SubsetConfig("x"), rng) == "a {x|y}"  # no wildcards: literal


def test_concatenated_datasets_through_a_dataloader(tmp_path):
    configs = (config(tmp_path / "one"), config(tmp_path / "two", batch_size=8))
    datasets = build_train_dataset(configs, seed=1)
    assert len(datasets) == 8 + datasets.datasets[1].plan.batches_per_epoch
    datasets.set_epoch(2)
    assert all(d._epoch.value == 2 for d in datasets.datasets)
    loader = DataLoader(datasets, batch_size=1, shuffle=True, collate_fn=collate_first)
    assert sum(len(batch["captions"]) for batch in loader) == 2 * 20
