"""TrainDataset: single-bucket batches, shapes, conditioning, loss weights, epoch shuffling (spec 2.6, 2.8)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.data import dataset as dataset_module
from sdxl_lora.data.dataset import TrainDataset, TrainDatasets, build_train_dataset, collate_first, final_caption
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


class RotatingRng:
    """Stands in for random.Random: shuffle moves the first element to the end, so orders are hand-workable."""

    def __init__(self, seeds: list, seed):
        seeds.append(seed)

    def shuffle(self, items: list) -> None:
        items[:] = items[1:] + items[:1]


def test_epoch_order_follows_sd_scripts_rule_worked_by_hand(tmp_path, monkeypatch):
    # Rule (sd-scripts): random.seed(seed + epoch); shuffle the (bucket, batch) list; shuffle each bucket's images;
    # batch (b, j) = images j*B .. j*B+B-1 of shuffled bucket b.
    seeds = []
    monkeypatch.setattr(dataset_module, "epoch_rng", lambda seed, epoch: RotatingRng(seeds, seed + epoch))
    dataset = make(tmp_path)  # seed 7, batch size 3
    dataset.set_epoch(5)
    names = [[Path(i.path).stem for i in dataset.batch_images(k)] for k in range(len(dataset))]
    assert seeds == [12]
    # Buckets sorted by (w, h), images in plan order with repeats: (64,192) d d e e; (128,128) a a b b r*10;
    # (192,64) c c. Batches of 3: (0,0) (0,1) (1,0)..(1,4) (2,0). Rotated: (0,1) (1,0) (1,1) (1,2) (1,3) (1,4)
    # (2,0) (0,0); buckets rotated: d e e d | a b b r*10 a | c c.
    assert names == [["d"], ["a", "b", "b"], ["r"] * 3, ["r"] * 3, ["r"] * 3, ["r", "a"], ["c", "c"],
                     ["d", "e", "e"]]


class Numbered(torch.utils.data.Dataset):
    def __init__(self, name: str, batches: int):
        self.name, self.batches, self.epochs = name, batches, []

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.name, index

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


class RiffleRng:
    def __init__(self, seeds: list, seed):
        seeds.append(seed)

    def shuffle(self, items: list) -> None:
        items[:] = items[::2] + items[1::2]


def test_batches_of_all_datasets_are_shuffled_together_worked_by_hand(monkeypatch):
    seeds = []
    monkeypatch.setattr(dataset_module, "epoch_rng", lambda seed, epoch: RiffleRng(seeds, seed + epoch))
    datasets = TrainDatasets([Numbered("A", 3), Numbered("B", 2)], seed=40)
    datasets.set_epoch(2)
    # Pairs A0 A1 A2 B0 B1; riffled (even positions, then odd): A0 A2 B1 A1 B0.
    assert [datasets[k] for k in range(len(datasets))] == [("A", 0), ("A", 2), ("B", 1), ("A", 1), ("B", 0)]
    assert seeds == [42] and datasets.datasets[0].epochs == [2] == datasets.datasets[1].epochs


def test_real_batch_order_mixes_datasets_and_is_reproducible():
    def order(seed: int, epoch: int) -> list:
        datasets = TrainDatasets([Numbered("A", 6), Numbered("B", 6)], seed=seed)
        datasets.set_epoch(epoch)
        return [datasets[k] for k in range(len(datasets))]

    assert order(3, 1) == order(3, 1) and order(3, 1) != order(3, 2) and order(3, 1) != order(4, 1)
    assert sorted(order(3, 1)) == [(n, k) for n in "AB" for k in range(6)]
    # Dataset A not all first in every epoch (probability of that by chance: 5 x 1/924).
    assert any([n for n, _ in order(3, e)] != ["A"] * 6 + ["B"] * 6 for e in range(5))


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


def test_images_for_cache_cover_every_image_and_flip_once(tmp_path):
    dataset = make(tmp_path, flip_aug=True)
    chunks = list(dataset.iter_images_for_cache(batch_size=3))
    keys = [key for chunk_keys, _ in chunks for key in chunk_keys]
    # 5 training images with and without flip + 1 regularisation image (no flip_aug on that subset).
    assert len(keys) == len(set(keys)) == 11
    for chunk_keys, images in chunks:
        (width, height), = {bucket for _, bucket, _ in chunk_keys}
        assert images.shape == (len(chunk_keys), 3, height, width) and len(chunk_keys) <= 3
    by_key = {key: image for chunk_keys, images in chunks for key, image in zip(chunk_keys, images, strict=True)}
    path = dataset.plan.images[0].path
    assert torch.equal(by_key[(path, (128, 128), True)], by_key[(path, (128, 128), False)].flip(-1))


def test_latents_replace_images_after_set_latents(tmp_path):
    dataset = make(tmp_path, flip_aug=True)
    cache = {key: torch.full((4, key[1][1] // 8, key[1][0] // 8), float(i))
             for i, key in enumerate(k for keys, _ in dataset.iter_images_for_cache(4) for k in keys)}
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
    loader = DataLoader(datasets, batch_size=1, shuffle=False, collate_fn=collate_first)
    trees = [Path(batch["paths"][0]).parts[-3] for batch in loader]
    assert sum(len(batch["captions"]) for batch in loader) == 2 * 20
    assert sorted(trees) == sorted(["one"] * 8 + ["two"] * datasets.datasets[1].plan.batches_per_epoch)
