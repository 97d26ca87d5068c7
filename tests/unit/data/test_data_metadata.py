"""Dataset metadata for the saved file (spec 4.1)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.data.dataset import build_train_dataset
from sdxl_lora.data.metadata import bucket_info, dataset_dirs, merged_tag_frequency, metadata_datasets
from sdxl_lora.data.plan import build_plan


def folder(path: Path, captions: dict[str, str | None], size=(64, 64)) -> str:
    path.mkdir(parents=True)
    for name, caption in captions.items():
        Image.new("RGB", size).save(path / f"{name}.png")
        if caption is not None:
            (path / f"{name}.caption").write_text(caption, encoding="utf-8")
    return str(path)


def plan_of(tmp_path: Path, **settings):
    dog = folder(tmp_path / "a" / "dog", {"1": "Sks, dog ,running", "2": "sks,  , DOG", "3": None})
    dog2 = folder(tmp_path / "b" / "dog", {"1": "other"})
    reg = folder(tmp_path / "reg", {"r": None})
    subsets = (SubsetConfig(dog, num_repeats=3, class_tokens="sks"), SubsetConfig(dog2, num_repeats=2),
               SubsetConfig(reg, is_reg=True, class_tokens="a dog"))
    return build_plan((DatasetConfig(subsets=subsets, resolution=(64, 64), **settings),))


def test_tag_frequency_counts_images_per_folder_lower_cased(tmp_path):
    plan = plan_of(tmp_path)
    # Both folders are named 'dog': inside one dataset their counts add up (as sd-scripts).
    assert merged_tag_frequency(plan) == {"dog": {"sks": 3, "dog": 2, "running": 1, "other": 1},
                                          "reg": {"a dog": 1}}


def test_tag_frequency_first_dataset_wins_across_datasets(tmp_path):
    first = folder(tmp_path / "1" / "cats", {"a": "tabby"})
    second = folder(tmp_path / "2" / "cats", {"a": "black"})
    plan = build_plan(tuple(DatasetConfig(subsets=(SubsetConfig(d),), resolution=(64, 64)) for d in (first, second)))
    assert merged_tag_frequency(plan) == {"cats": {"tabby": 1}}


def test_dataset_dirs_rename_duplicates_and_split_reg(tmp_path):
    plan = plan_of(tmp_path)
    assert dataset_dirs(plan) == {"dog": {"n_repeats": 3, "img_count": 3}, "dog (2)": {"n_repeats": 2, "img_count": 1}}
    assert dataset_dirs(plan, reg=True) == {"reg": {"n_repeats": 1, "img_count": 1}}


def test_bucket_info_indices_are_positions_in_the_bucket_list(tmp_path):
    plan = plan_of(tmp_path, enable_bucket=True, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=32)
    # Buckets for 64x64, step 32, 32..128: (32,96) (32,128) (64,64) (96,32) (128,32); all images are square.
    # Samples: 3x3 + 1x2 + reg balanced to 11 = 22 in (64,64), index 2.
    assert bucket_info(plan.datasets[0]) == {"buckets": {"2": {"resolution": [64, 64], "count": 22}},
                                             "mean_img_ar_error": 0.0}


def test_metadata_datasets_is_json_with_rounded_limits(tmp_path):
    entry = metadata_datasets(plan_of(tmp_path, enable_bucket=True, min_bucket_reso=40, max_bucket_reso=100,
                                      bucket_reso_steps=32))[0]
    assert (entry["min_bucket_reso"], entry["max_bucket_reso"]) == (32, 128)
    assert (entry["num_train_images"], entry["num_reg_images"]) == (11, 1)
    assert [s["image_dir"] for s in entry["subsets"]] == ["dog", "dog", "reg"]
    assert entry["subsets"][2]["is_reg"] and entry["subsets"][0]["img_count"] == 3
    json.dumps(entry)
    no_buckets = metadata_datasets(plan_of(tmp_path / "x"))[0]
    assert (no_buckets["min_bucket_reso"], no_buckets["max_bucket_reso"]) == (None, None)


def test_train_datasets_expose_the_metadata(tmp_path):
    datasets = build_train_dataset(plan_of(tmp_path), seed=0)
    assert (datasets.num_train_images, datasets.num_reg_images) == (11, 1)
    assert datasets.tag_frequency()["reg"] == {"a dog": 1}
    assert list(datasets.dataset_dirs()) == ["dog", "dog (2)"] and len(datasets.metadata_datasets()) == 1


def test_fine_tuning_dataset_is_not_dreambooth(tmp_path):
    images = folder(tmp_path / "ft", {"1": None})
    (tmp_path / "m.json").write_text(json.dumps({"1": {"caption": "a cat"}}), encoding="utf-8")
    subset = SubsetConfig(images, metadata_file=str(tmp_path / "m.json"))
    plan = build_plan((DatasetConfig(subsets=(subset,), resolution=(64, 64)),))
    (entry,) = metadata_datasets(plan)
    assert entry["is_dreambooth"] is False and entry["subsets"][0]["image_dir"] == "ft"
    assert json.loads(json.dumps(entry))["num_train_images"] == 1
