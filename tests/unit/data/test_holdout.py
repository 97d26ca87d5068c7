"""Images held out for the validation loss (spec 2.10): the split, its seed, its checks, the validation dataset."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from PIL import Image

from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig, load_datasets
from sdxl_lora.config.dataset_validate import validate_datasets
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.split import training_count
from sdxl_lora.data.dataset import CacheGroup, build_train_dataset, build_validation_dataset
from sdxl_lora.data.holdout import hold_out
from sdxl_lora.data.plan import build_plan


def pngs(folder: Path, count: int, size: tuple[int, int] = (64, 64), prefix: str = "i") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size).save(folder / f"{prefix}{i:02d}.png")
        (folder / f"{prefix}{i:02d}.txt").write_text(f"picture {i}, red", encoding="utf-8")
    return folder


def dataset(tmp_path: Path, n: int = 10, split: float = 0.3, seed: int | None = 5, reg: int = 0,
            **subset_settings) -> DatasetConfig:
    subsets = [SubsetConfig(str(pngs(tmp_path / "train", n)), num_repeats=3, caption_extension=".txt",
                            key_path="datasets[0].subsets[0]", **subset_settings)]
    if reg:
        subsets.append(SubsetConfig(str(pngs(tmp_path / "reg", reg, prefix="r")), is_reg=True, class_tokens="dog",
                                    key_path="datasets[0].subsets[1]"))
    return DatasetConfig(subsets=tuple(subsets), resolution=(64, 64), batch_size=2, validation_split=split,
                         validation_seed=seed, key_path="datasets[0]")


@pytest.mark.parametrize(("n", "split", "trains"), [
    (10, 0.7, 3),  # 10 x (1 - 0.7) is 3.0000000000000004 in floating point: sd-scripts' ceil keeps 4
    (10, 0.3, 7),
    (10, 0.25, 8),  # ceil(7.5)
    (3, 0.5, 2),  # ceil(1.5)
    (2, 0.5, 1),
    (1, 0.5, 1),  # nothing left to hold out
    (4, 0.999, 1),  # ceil(0.004)
    (5, 0.0, 5),
])
def test_training_count_by_hand(n, split, trains):
    assert training_count(n, split) == trains


def _sd_scripts_validation_part(items: list, split: float, seed: int) -> list:
    """sd-scripts' split_train_val for the validation dataset, given a validation_seed: seed the global random
    module, shuffle, keep the last round(n x split)."""
    shuffled = list(items)
    state = random.getstate()
    random.seed(seed)
    random.shuffle(shuffled)
    random.setstate(state)
    return shuffled[len(shuffled) - round(len(shuffled) * split):]


@pytest.mark.parametrize(("n", "split", "seed"), [(10, 0.2, 0), (7, 0.5, 42), (20, 0.25, 1234)])
def test_hold_out_is_disjoint_sized_by_hand_and_matches_sd_scripts_with_a_seed(n, split, seed):
    items = [f"img{i:02d}" for i in range(n)]
    trains, held = hold_out(items, split, seed)
    assert set(trains).isdisjoint(held) and sorted(trains + held) == sorted(items)
    assert len(held) == n - math.ceil(n * (1 - split) - 1e-9)
    assert trains == sorted(trains) and held == sorted(held)  # each part keeps the discovery order
    # The same shuffle as sd-scripts: its validation part, where n x split is whole; where it is not (7 x 0.5),
    # sd-scripts' round(3.5) = 4 validation images overlap its ceil(3.5) = 4 training images by one.
    sd_scripts = set(_sd_scripts_validation_part(items, split, seed))
    assert set(held) == sd_scripts if (n * split).is_integer() else set(held) < sd_scripts
    assert hold_out(items, split, seed) == (trains, held)  # deterministic


def test_plan_holds_images_out_of_training_each_once_and_never_regularisation(tmp_path):
    (plan,) = build_plan((dataset(tmp_path, reg=4),)).datasets
    trains = {i.path for i in plan.images if not i.is_reg}
    held = [i.path for i in plan.validation.images]
    assert (len(trains), len(held)) == (7, 3) and trains.isdisjoint(held)
    assert {Path(p).name for p in trains | set(held)} == {f"i{i:02d}.png" for i in range(10)}
    assert plan.num_train_images == 7 * 3  # repeats count for training only
    assert {i.repeats for i in plan.validation.images} == {1} and not any(i.is_reg for i in plan.validation.images)
    assert sum(i.repeats for i in plan.images if i.is_reg) == 21  # reg balanced against 21 training samples
    assert plan.validation.batches_per_epoch == 2  # 3 images, batch size 2
    assert [(s.num_images, s.num_validation_images) for s in plan.subsets] == [(7, 3), (4, 0)]
    report = plan.to_dict()
    assert report["validation"]["num_images"] == 3 and report["subsets"][0]["validation_images"] == 3


def test_no_split_no_validation(tmp_path):
    (plan,) = build_plan((dataset(tmp_path, split=0.0),)).datasets
    assert plan.validation is None and len(plan.images) == 10
    assert build_validation_dataset(build_plan((dataset(tmp_path, split=0.0),)), seed=1) is None


def _held(tmp_path: Path, toml: str, **cli_values) -> set[str]:
    path = tmp_path / "d.toml"
    path.write_text(toml, encoding="utf-8")
    (plan,) = build_plan(load_datasets(path, _cli(**cli_values))).datasets
    return {Path(i.path).name for i in plan.validation.images} if plan.validation else set()


def _cli(**values) -> dict:
    base = {"resolution": "64", "train_batch_size": 1, "dataset_repeats": 1, "caption_extension": ".txt",
            "validation_split": 0.0}
    return {**base, **values}


def test_seed_of_the_split_toml_then_validation_seed_then_seed(tmp_path):
    images = pngs(tmp_path / "img", 20)
    subset = f"[[datasets.subsets]]\nimage_dir = '{images.as_posix()}'\n"
    toml = "[[datasets]]\nvalidation_split = 0.25\n" + subset
    by_seed = {seed: _held(tmp_path, toml, seed=seed) for seed in range(6)}
    assert all(len(held) == 5 for held in by_seed.values())
    assert len({frozenset(h) for h in by_seed.values()}) > 1  # without --validation_seed, --seed decides
    assert _held(tmp_path, toml, seed=3) == by_seed[3]  # deterministic across calls
    # --validation_seed decides whatever --seed is: the same as a run whose --seed has that value.
    assert _held(tmp_path, toml, seed=0, validation_seed=4) == _held(tmp_path, toml, seed=5, validation_seed=4)
    assert _held(tmp_path, toml, seed=0, validation_seed=4) == by_seed[4]
    # A dataset's validation_seed wins over the flags.
    own_seed = "[[datasets]]\nvalidation_split = 0.25\nvalidation_seed = 2\n" + subset
    assert _held(tmp_path, own_seed, seed=0, validation_seed=4) == by_seed[2]


def test_toml_validation_split_wins_over_the_flag(tmp_path):
    images = pngs(tmp_path / "img", 10)
    subset = f"[[datasets.subsets]]\nimage_dir = '{images.as_posix()}'\n"
    assert len(_held(tmp_path, "[[datasets]]\n" + subset, seed=1, validation_split=0.2)) == 2
    assert len(_held(tmp_path, "[[datasets]]\nvalidation_split = 0.5\n" + subset, seed=1,
                     validation_split=0.2)) == 5
    assert _held(tmp_path, "[[datasets]]\nvalidation_split = 0.0\n" + subset, seed=1, validation_split=0.2) == set()


def test_a_split_that_holds_out_nothing_is_one_error_before_and_at_planning(tmp_path):
    config = dataset(tmp_path, n=3, split=0.1)  # ceil(3 x 0.9) = 3: nothing held out
    message = ("datasets[0].validation_split=0.1: holds out no image of datasets[0] (a subset of n images keeps "
               "ceil(n x (1 - split)) for training); raise it to at least 0.334 or set it to 0")
    assert validate_datasets((config,), cache_latents=False) == [message]
    with pytest.raises(ConfigError) as err:
        build_plan((config,))
    assert err.value.problems == [message]
    assert validate_datasets((dataset(tmp_path, n=3, split=0.34),), cache_latents=False) == []


@pytest.mark.parametrize("split", [1.0, -0.1, 1.5])
def test_split_must_be_in_zero_one(tmp_path, split):
    (problem,) = validate_datasets((dataset(tmp_path, split=split),), cache_latents=False)
    assert problem.startswith(f"datasets[0].validation_split={split}: must be at least 0 and below 1")


def test_validation_batches_have_no_random_augmentation_and_the_same_order_every_time(tmp_path):
    config = dataset(tmp_path, flip_aug=True, shuffle_caption=True, caption_dropout_rate=0.5,
                     caption_tag_dropout_rate=0.5, keep_tokens=1, caption_prefix="sks")
    valid = build_validation_dataset(build_plan((config,)), seed=3)
    assert len(valid) == 2  # 3 held-out images, batch size 2
    first = [valid[i] for i in range(len(valid))]
    again = build_validation_dataset(build_plan((config,)), seed=3)
    for one, two in zip(first, [again[i] for i in range(len(again))], strict=True):
        assert one.paths == two.paths and one.captions == two.captions
        assert (one.images == two.images).all()
    assert sorted(p for b in first for p in b.paths) == sorted(i.path for i in valid.plan.datasets[0].images)
    for batch in first:
        assert not any(key.flip for key in batch.latent_keys)
        # The caption as written with its prefix: no shuffle, no dropout of the caption or of its tags.
        assert all(c.startswith("sks picture ") and c.endswith(", red") for c in batch.captions)


def test_validation_latents_and_captions_are_cached_with_the_training_ones(tmp_path):
    plan = build_plan((dataset(tmp_path, flip_aug=True),))
    train, valid = build_train_dataset(plan, seed=1), build_validation_dataset(plan, seed=1)
    group = CacheGroup(train, valid)
    jobs = group.latent_jobs()
    held = {i.path for i in plan.datasets[0].validation.images}
    assert {j.key.path for j in jobs} == {i.path for i in plan.datasets[0].images} | held
    assert {j.key.flip for j in jobs if j.key.path in held} == {False}  # validation never flips
    group.set_latents({j.key: j.key.path for j in jobs})  # any mapping: each dataset reads its own keys
    assert valid.datasets[0].latents is train.datasets[0].latents
    group.set_caption_variants(2)
    assert {j.path for j in group.text_jobs()} >= held
    assert train.num_validation_images == 3


def test_fine_tuning_datasets_are_split_too(tmp_path):
    images = pngs(tmp_path / "img", 4)
    metadata = tmp_path / "meta.json"
    metadata.write_text(json.dumps({f"i{i:02d}": {"caption": f"picture {i}"} for i in range(4)}), encoding="utf-8")
    subset = SubsetConfig(str(images), metadata_file=str(metadata), key_path="datasets[0].subsets[0]")
    config = DatasetConfig(subsets=(subset,), resolution=(64, 64), validation_split=0.5, validation_seed=1)
    (plan,) = build_plan((config,)).datasets
    assert len(plan.images) == len(plan.validation.images) == 2
    assert {i.path for i in plan.images}.isdisjoint(i.path for i in plan.validation.images)


def test_mask_datasets_are_split_with_their_masks(tmp_path):
    images, masks = pngs(tmp_path / "img", 4), pngs(tmp_path / "mask", 4)
    subset = SubsetConfig(str(images), caption_extension=".txt", conditioning_data_dir=str(masks),
                          key_path="datasets[0].subsets[0]")
    config = DatasetConfig(subsets=(subset,), resolution=(64, 64), validation_split=0.5, validation_seed=1)
    valid = build_validation_dataset(build_plan((config,)), seed=0)
    batch = valid[0]
    assert batch.masks is not None and batch.masks.shape == (1, 64, 64)
    assert {Path(i.mask_path).name for i in valid.datasets[0].plan.images} == {
        Path(i.path).name for i in valid.datasets[0].plan.images}
