"""Plan: discovery + buckets + regularisation balancing (spec 2.5, 2.6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.data.plan import balance_reg_repeats, build_plan


def pngs(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        Image.new("RGB", size).save(folder / f"{name}.png")
    return folder


@pytest.mark.parametrize(("repeats", "target", "expected"), [
    ([1, 1, 1], 7, [3, 2, 2]),  # pass 1: 3; pass 2: +1 each = 6; pass 3: +1 to the first = 7
    ([5, 5], 7, [5, 5]),  # first pass overshoots: 10
    ([2, 2, 2], 3, [2, 2, 0]),  # stops once 4 >= 3; the third image is unused
    ([1, 1], 0, [0, 0]),  # no training samples: no regularisation either
    ([], 5, []),
])
def test_balance_reg_repeats(repeats, target, expected):
    assert balance_reg_repeats(repeats, target) == expected


def dataset(tmp_path: Path, **settings) -> DatasetConfig:
    train = pngs(tmp_path / "train", {"a": (128, 128), "b": (200, 64), "c": (64, 180)})
    (train / "a.caption").write_text("a photo", encoding="utf-8")
    reg = pngs(tmp_path / "reg", {f"r{i}": (128, 128) for i in range(5)})
    subsets = (SubsetConfig(str(train), num_repeats=2, class_tokens="sks", key_path="datasets[0].subsets[0]"),
               SubsetConfig(str(reg), is_reg=True, class_tokens="dog", key_path="datasets[0].subsets[1]"))
    base = {"resolution": (128, 128), "enable_bucket": True, "min_bucket_reso": 64, "max_bucket_reso": 256,
            "batch_size": 4, "key_path": "datasets[0]"}
    return DatasetConfig(subsets=subsets, **{**base, **settings})


def test_plan_counts_buckets_and_conditioning(tmp_path):
    # Buckets for 128x128, step 64, 64..256: (64,192) (64,256) (128,128) (192,64) (256,64).
    # b 200x64 (3.125) -> (192,64), scale 64/64 -> resized (200,64); c 64x180 (0.356) -> (64,192),
    # scale 192/180 -> (68,192). Reg: 5 images x 1 repeat, balanced to the 6 training samples -> [2,1,1,1,1].
    (plan,) = build_plan((dataset(tmp_path),)).datasets
    assert (plan.num_train_images, plan.num_reg_images) == (6, 5)
    train = {Path(i.path).name: i for i in plan.images if not i.is_reg}
    assert train["a.png"].caption == "a photo"
    b, c = train["b.png"], train["c.png"]
    assert (b.caption, b.bucket, b.resized_size, b.original_size, b.repeats) == ("sks", (192, 64), (200, 64),
                                                                                (200, 64), 2)
    assert (c.bucket, c.resized_size) == ((64, 192), (68, 192))
    # c: resized 68x192 centre-cropped to 64x192: left = (68 - 64) // 2 = 2, top 0.
    assert c.crop_top_left == (0, 2)
    assert [i.repeats for i in plan.images if i.is_reg] == [2, 1, 1, 1, 1]
    # (128,128): a x2 + reg 6 = 8 samples -> 2 batches of 4; (192,64): 2 -> 1; (64,192): 2 -> 1.
    assert plan.buckets == (((64, 192), 2), ((128, 128), 8), ((192, 64), 2))
    assert plan.batches_per_epoch == 4


def test_plan_to_dict_is_json(tmp_path):
    plan = build_plan((dataset(tmp_path),))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["batches_per_epoch"] == 4
    first = data["datasets"][0]
    assert first["buckets"][1] == {"width": 128, "height": 128, "count": 8}
    assert first["subsets"][0]["images"] == 3 and first["subsets"][1]["is_reg"] is True
    assert set(first["images"][0]) >= {"path", "caption", "bucket", "original_size", "crop_top_left",
                                       "target_size"}


def test_plan_reports_every_unusable_file(tmp_path):
    config = dataset(tmp_path)
    (tmp_path / "train" / "b.caption").write_text("", encoding="utf-8")
    (tmp_path / "reg" / "r0.caption").write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        build_plan((config,))
    assert [p.split(": ")[0] for p in e.value.problems] == ["datasets[0].subsets[0]", "datasets[0].subsets[1]",
                                                            "to leave unusable files out and train on the rest, "
                                                            "pass --skip_bad_files"]


def test_no_upscale_image_smaller_than_a_step_is_a_problem(tmp_path):
    pngs(tmp_path / "train", {"tiny": (200, 30)})
    config = dataset(tmp_path, bucket_no_upscale=True)
    with pytest.raises(ConfigError, match=r"tiny.png \(200x30\) is too small for bucket_reso_steps=64"):
        build_plan((config,))


def test_only_regularisation_images_is_a_problem(tmp_path):
    reg = pngs(tmp_path / "reg", {"r": (64, 64)})
    config = DatasetConfig(subsets=(SubsetConfig(str(reg), is_reg=True),), resolution=(64, 64),
                           key_path="datasets[0]")
    with pytest.raises(ConfigError, match=r"datasets\[0\]: no training images"):
        build_plan((config,))
