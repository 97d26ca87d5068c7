"""TrainDataset: single-bucket batches, shapes, conditioning, loss weights, epoch shuffling (spec 2.6, 2.8)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.data import dataset as dataset_module
from sdxl_lora.data.dataset import LatentKey, TrainDataset, TrainDatasets, build_train_dataset, collate_first
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
        height, width = batch.images.shape[2:]
        count = len(batch.captions)
        assert batch.images.shape == (count, 3, height, width) and batch.images.dtype == torch.float32
        assert batch.target_size_hw.tolist() == [[height, width]] * count
        assert batch.target_size_hw.dtype == torch.long and batch.crop_top_left.shape == (count, 2)
        for path, size, weight in zip(batch.paths, batch.original_size_hw.tolist(),
                                      batch.loss_weights.tolist(), strict=True):
            with Image.open(path) as image:
                assert size == [image.height, image.width]
            assert weight == (0.25 if "/reg/" in path else 1.0)
        seen += count
    assert seen == 4 + 10 + 2 + 4


def test_conditioning_values(tmp_path):
    dataset = make(tmp_path, batch_size=4)
    batch = next(dataset[i] for i in range(len(dataset)) if dataset[i].paths[0].endswith("c.png"))
    # c 200x64 in bucket (192,64): covers at scale 64/64 -> resized 200x64, centre window left (200-192)//2 = 4.
    assert batch.original_size_hw.tolist() == [[64, 200], [64, 200]]
    assert batch.crop_top_left.tolist() == [[0, 4], [0, 4]]
    assert batch.latent_keys[0] == LatentKey(batch.paths[0], (192, 64), (4, 0), False)
    assert batch.captions == ["sks", "sks"]


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
        self.name, self.batches, self.epochs, self.steps, self.accumulation = name, batches, [], [], 1

    def __len__(self) -> int:
        return self.batches

    def batch(self, index: int, step: int, rank: int = 0) -> tuple[str, int]:
        self.steps.append(step)
        return self.name, index

    def set_schedule(self, max_train_steps: int, accumulation: int) -> None:
        self.accumulation = accumulation

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
    # Optimizer step of item k in epoch 2 with accumulation 2: (2 * 5 + k) // 2 = 5, 5, 6, 6, 7 for k = 0..4,
    # i.e. A0 5, A2 5, B1 6, A1 6, B0 7.
    datasets.set_schedule(100, 2)
    for k in range(5):
        datasets[k]
    assert datasets.datasets[0].steps[-3:] == [5, 5, 6] and datasets.datasets[1].steps[-2:] == [6, 7]


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
    lefts, flips = set(), set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            batch = dataset[index]
            lefts |= {tuple(x) for x, p in zip(batch.crop_top_left.tolist(), batch.paths, strict=True)
                      if p.endswith("e.png")}
            flips |= {k.flip for k in batch.latent_keys}
    # c 200x64 in (192,64): resized 200x64, window left 4 of 8 excess; flipped 8 - 4 = 4. e 64x210 in (64,192):
    # resized 64x210 (scale 1), top (210 - 192) // 2 = 9, no horizontal excess: (9, 0) flipped or not.
    assert lefts == {(9, 0)} and flips == {False, True}
    dataset.set_epoch(1)
    assert torch.equal(dataset[0].images, dataset[0].images)  # same flips for the same epoch and index


def test_latent_jobs_cover_every_image_and_flip_once(tmp_path):
    dataset = make(tmp_path, flip_aug=True)
    keys = [job.key for job in dataset.latent_jobs()]
    # 5 training images with and without flip + 1 regularisation image (no flip_aug on that subset).
    assert len(keys) == len(set(keys)) == 11
    by_key = {job.key: job.pixels() for job in dataset.latent_jobs()}
    for (_, (width, height), _, _), image in by_key.items():
        assert image.shape == (3, height, width)
    path = dataset.plan.images[0].path
    assert torch.equal(by_key[(path, (128, 128), (0, 0), True)], by_key[(path, (128, 128), (0, 0), False)].flip(-1))


def test_latents_replace_images_after_set_latents(tmp_path):
    dataset = make(tmp_path, flip_aug=True)
    cache = {key: torch.full((4, key[1][1] // 8, key[1][0] // 8), float(i))
             for i, key in enumerate(job.key for job in dataset.latent_jobs())}
    dataset.set_epoch(1)
    with_images = dataset[0]
    dataset.set_latents(cache)
    batch = dataset[0]
    assert batch.images is None and with_images.images is not None and with_images.latents is None
    assert batch.latent_keys == with_images.latent_keys  # same flips either way
    assert torch.equal(batch.latents, torch.stack([cache[k] for k in batch.latent_keys]))


def test_concatenated_datasets_through_a_dataloader(tmp_path):
    configs = (config(tmp_path / "one"), config(tmp_path / "two", batch_size=8))
    datasets = build_train_dataset(configs, seed=1)
    assert len(datasets) == 8 + datasets.datasets[1].plan.batches_per_epoch
    datasets.set_epoch(2)
    assert all(d._epoch.value == 2 for d in datasets.datasets)
    loader = DataLoader(datasets, batch_size=1, shuffle=False, collate_fn=collate_first)
    trees = [Path(batch.paths[0]).parts[-3] for batch in loader]
    assert sum(len(batch.captions) for batch in loader) == 2 * 20
    assert sorted(trees) == sorted(["one"] * 8 + ["two"] * datasets.datasets[1].plan.batches_per_epoch)


def test_batches_carry_token_ids_from_loader_workers(tmp_path):
    import functools

    from sdxl_lora.models.text import tokenize
    from sdxl_lora.models.tokenizers import clip_tokenizers

    tok1, tok2 = clip_tokenizers()
    (plan,) = build_plan((config(tmp_path),)).datasets
    dataset = TrainDataset(plan, seed=7, tokenize=functools.partial(tokenize, tok1, tok2, max_token_length=150))
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_first, num_workers=1)
    batch = next(iter(loader))
    count = len(batch.captions)
    assert batch.input_ids_1.shape == batch.input_ids_2.shape == (count, 2, 77)  # 150 tokens: two chunks
    assert batch.input_ids_1[:, 0, 0].tolist() == [49406] * count  # BOS starts each chunk
    expected = tokenize(tok1, tok2, batch.captions, 150)
    assert torch.equal(batch.input_ids_1, expected[0]) and torch.equal(batch.input_ids_2, expected[1])
    moved = batch.to("cpu")
    assert moved.paths == batch.paths and torch.equal(moved.images, batch.images)


def test_caption_dropout_every_n_epochs_applies_from_the_first_batch(tmp_path):
    dataset = make(tmp_path, caption_dropout_every_n_epochs=2)
    # 0-based epoch 1 is the user's epoch 2: every training caption of that epoch is empty, batch 0 included.
    dataset.set_epoch(1)
    assert [c for k in range(len(dataset)) for c, p in zip(dataset[k].captions, dataset[k].paths, strict=True)
            if "/train/" in p] == [""] * 10
    dataset.set_epoch(2)
    assert all(c == "sks" for k in range(len(dataset)) for c, p in
               zip(dataset[k].captions, dataset[k].paths, strict=True) if "/train/" in p)


def test_token_warmup_follows_the_optimizer_step_of_each_batch(tmp_path):
    (plan,) = build_plan((config(tmp_path, token_warmup_step=8, token_warmup_min=1,
                                 caption_prefix="p1, p2, p3, p4, p5,"),)).datasets
    dataset = TrainDataset(plan, seed=7)
    dataset.set_schedule(max_train_steps=100, gradient_accumulation_steps=2)
    # Caption "p1, ..., p5, sks": 6 tags. Epoch 1 of 8 batches: batch k is step (8 + k) // 2 = 4 4 5 5 6 6 7 7;
    # floor(step * (6 - 1) / 8) + 1 tags = 3 3 4 4 4 4 5 5.
    dataset.set_epoch(1)
    expected = [3, 3, 4, 4, 4, 4, 5, 5]
    seen = 0
    for k in range(8):
        batch = dataset[k]
        for caption, path in zip(batch.captions, batch.paths, strict=True):
            if "/train/" in path:
                assert caption == ", ".join(["p1", "p2", "p3", "p4", "p5"][:expected[k]]), k
                seen += 1
    assert seen == 10


def test_caption_preview_shows_what_the_first_epoch_trains_on(tmp_path):
    datasets = build_train_dataset((config(tmp_path, caption_prefix="a, b, c, d,", shuffle_caption=True,
                                          keep_tokens=1),), seed=5)
    preview = datasets.caption_preview(per_subset=2)
    trained = {}
    for k in range(len(datasets)):
        batch = datasets[k]
        for path, caption in zip(batch.paths, batch.captions, strict=True):
            trained.setdefault(path, caption)
    (train, reg), = preview
    assert len(train) == 2 and len(reg) == 1  # one regularisation image
    for entry in train + reg:
        assert entry["caption"] == trained[entry["path"]]
    assert all(e["caption"].startswith("a, ") and sorted(e["caption"].split(", ")) == ["a", "b", "c", "d", "sks"]
               for e in train)


def test_persistent_workers_follow_set_epoch(tmp_path):
    datasets = build_train_dataset((config(tmp_path / "one"), config(tmp_path / "two", batch_size=2)), seed=3)
    loader = DataLoader(datasets, batch_size=1, shuffle=False, collate_fn=collate_first, num_workers=2,
                        persistent_workers=True)
    for epoch in (0, 1, 2):
        datasets.set_epoch(epoch)
        seen = [(b.paths, b.captions) for b in loader]
        assert seen == [(datasets[k].paths, datasets[k].captions) for k in range(len(datasets))], epoch


def test_dataset_report_lists_buckets_and_first_epoch_captions(tmp_path):
    from sdxl_lora.data.dataset import shuffle_seed
    from sdxl_lora.data.report import dataset_report

    plan = build_plan((config(tmp_path, caption_prefix="x, y,", shuffle_caption=True),))
    (entry,) = dataset_report(plan, seed=11, max_train_steps=10, per_subset=2)
    assert {(Path(i["path"]).name, tuple(i["bucket"])) for i in entry["images"]} == {
        ("a.png", (128, 128)), ("b.png", (128, 128)), ("c.png", (192, 64)), ("d.png", (64, 192)),
        ("e.png", (64, 192)), ("r.png", (128, 128))}
    shown = entry["subsets"][0]["first_epoch_captions"]
    training = build_train_dataset(plan, seed=shuffle_seed(11))
    first = {}
    for k in range(len(training)):
        batch = training[k]
        for path, caption in zip(batch.paths, batch.captions, strict=True):
            first.setdefault(path, caption)
    assert len(shown) == 2 and all(first[e["path"]] == e["caption"] for e in shown)
    assert entry["subsets"][1]["first_epoch_captions"][0]["caption"] == "dog"
