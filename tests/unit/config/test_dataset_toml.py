"""Dataset TOML / DreamBooth folder loading and dataset validation (spec 2.1-2.4, 1.17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sdxl_lora.config.dataset_toml import load_datasets, parse_dreambooth_folder
from sdxl_lora.config.dataset_validate import validate_datasets
from sdxl_lora.config.errors import ConfigError

CLI_DEFAULTS = {  # what sd-scripts' parser gives when nothing is passed
    "resolution": None, "train_batch_size": 1, "dataset_repeats": 1, "caption_extension": ".caption",
    "enable_bucket": False, "min_bucket_reso": 256, "max_bucket_reso": 1024, "bucket_reso_steps": 64,
    "bucket_no_upscale": False, "shuffle_caption": False, "keep_tokens": 0, "flip_aug": False,
    "color_aug": False, "random_crop": False, "caption_dropout_rate": 0.0, "validation_split": 0.0,
    "train_data_dir": None, "reg_data_dir": None,
}


def cli(**changes) -> dict:
    return {**CLI_DEFAULTS, **changes}


def image_folder(path: Path, count: int = 1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (64, 64)).save(path / f"{i}.png")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(toml: Path, **changes) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_datasets(toml, cli(**changes))
    return e.value.problems


def test_fallback_chain_subset_dataset_general_cli_default(tmp_path):
    toml = write(tmp_path / "dataset.toml", """
[general]
shuffle_caption = true
caption_extension = "txt"
keep_tokens = 1
flip_aug = true

[[datasets]]
resolution = [1024, 768]
batch_size = 4
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = "a"
  num_repeats = 10
  class_tokens = "sks dog"
  keep_tokens = 3

  [[datasets.subsets]]
  image_dir = "b"
  is_reg = true

[[datasets]]
enable_bucket = true
  [[datasets.subsets]]
  image_dir = "c"
""")
    first, second = load_datasets(toml, cli(resolution="512,640", dataset_repeats=2, color_aug=True))
    a, b = first.subsets
    assert (first.resolution, first.batch_size, first.enable_bucket) == ((1024, 768), 4, False)
    assert (a.num_repeats, a.class_tokens, a.keep_tokens, a.is_reg) == (10, "sks dog", 3, False)
    assert (b.num_repeats, b.class_tokens, b.keep_tokens, b.is_reg) == (2, None, 2, True)  # cli, default, dataset
    assert a.caption_extension == ".txt" and a.shuffle_caption and a.flip_aug and a.color_aug  # general, cli
    assert a.caption_dropout_rate == 0.0 and a.token_warmup_min == 1  # cli default, built-in default
    assert (second.resolution, second.batch_size, second.enable_bucket) == ((512, 640), 1, True)
    assert second.subsets[0].keep_tokens == 1  # from [general]
    assert second.key_path == "datasets[1]" and b.key_path == "datasets[0].subsets[1]"
    assert a.where("caption_extension") == f"{toml}: general.caption_extension"
    assert b.where("num_repeats") == "--dataset_repeats"


def test_json_by_extension(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"datasets": [{"resolution": 512, "subsets": [{"image_dir": "x"}]}]}))
    (dataset,) = load_datasets(path, cli())
    assert dataset.resolution == (512, 512) and dataset.subsets[0].image_dir == "x"


def test_validation_split_int_literal_accepted_as_float(tmp_path):
    toml = write(tmp_path / "d.toml", '[[datasets]]\nresolution = 512\nvalidation_split = 0\n'
                                      '[[datasets.subsets]]\nimage_dir = "x"\n')
    (dataset,) = load_datasets(toml, cli())
    assert dataset.validation_split == 0.0 and isinstance(dataset.validation_split, float)


def test_every_problem_reported_at_once_with_key_path_and_file(tmp_path):
    toml = write(tmp_path / "dataset.toml", """
[general]
flipaug = true
image_dir = "x"

[[datasets]]
resolution = 512
[[datasets.subsets]]
image_dir = "a"
[[datasets.subsets]]
num_repeats = "ten"
batch_size = 2

[[datasets]]
[[datasets.subsets]]
image_dir = "b"
resize_interpolation = "fancy"
""")
    problems = problems_of(toml)
    assert problems == [
        f"{toml}: general.flipaug: unknown key (did you mean 'flip_aug'?)",
        f"{toml}: general.image_dir: image_dir belongs in [[datasets.subsets]]",
        f'{toml}: datasets[0].subsets[1].num_repeats: expected an integer, got "ten"',
        f"{toml}: datasets[0].subsets[1].batch_size: batch_size is a dataset-level key: set it in [[datasets]] "
        "or [general], not in a subset",
        f"{toml}: datasets[0].subsets[1].image_dir: missing; every subset needs the folder of its images",
        f'{toml}: datasets[1].subsets[0].resize_interpolation: expected one of lanczos, nearest, bilinear, '
        'linear, bicubic, cubic, area, box, got "fancy"',
        f"{toml}: datasets[1].resolution: missing; set resolution in [[datasets]] or [general], or pass "
        "--resolution",
    ]


def test_type_errors_name_the_expected_type(tmp_path):
    toml = write(tmp_path / "d.toml", """
[[datasets]]
resolution = [512]
enable_bucket = 1
[[datasets.subsets]]
image_dir = 3
face_crop_aug_range = [1.0]
""")
    problems = problems_of(toml)
    assert any("datasets[0].resolution: expected an integer or [width, height]" in p for p in problems)
    assert any("datasets[0].enable_bucket: expected true or false, got 1" in p for p in problems)
    assert any("datasets[0].subsets[0].image_dir: expected a string, got 3" in p for p in problems)
    assert any("face_crop_aug_range: expected [low, high]" in p for p in problems)


def test_top_level_and_structure_errors(tmp_path):
    toml = write(tmp_path / "d.toml", 'resolution = 512\n[[datasets]]\nresolution = 512\n')
    problems = problems_of(toml)
    assert problems[0].startswith(f"{toml}: resolution: unknown top-level key")
    assert f"{toml}: datasets[0].subsets: expected one or more [[datasets.subsets]] tables" in problems
    assert problems_of(write(tmp_path / "e.toml", "[general]\n")) == [
        f"{tmp_path / 'e.toml'}: datasets: expected one or more [[datasets]] tables"]


def test_unparsable_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot parse"):
        load_datasets(write(tmp_path / "bad.toml", "[[datasets]\n"), cli())
    with pytest.raises(ConfigError, match="--dataset_config: file not found"):
        load_datasets(tmp_path / "nope.toml", cli())


def test_command_line_values_checked_and_resolution_forms(tmp_path):
    toml = write(tmp_path / "d.toml", '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\n')
    assert load_datasets(toml, cli(resolution="768"))[0].resolution == (768, 768)
    assert load_datasets(toml, cli(resolution="1024,768"))[0].resolution == (1024, 768)
    assert load_datasets(toml, cli(resolution=(640, 512)))[0].resolution == (640, 512)
    problems = problems_of(toml, resolution="big", train_batch_size="4")
    assert problems[0].startswith('--resolution: expected an integer or [width, height] ("S" or "W,H"')
    assert problems[1] == '--train_batch_size: expected an integer, got "4"'


def test_caption_extension_gets_a_dot_and_legacy_spelling_is_used(tmp_path):
    toml = write(tmp_path / "d.toml", '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "x"\n')
    assert load_datasets(toml, cli(caption_extension="txt"))[0].subsets[0].caption_extension == ".txt"
    legacy = load_datasets(toml, cli(caption_extention=".tags"))[0].subsets[0]
    assert legacy.caption_extension == ".tags"


def test_duplicate_image_dir_in_one_dataset_is_ignored(tmp_path):
    toml = write(tmp_path / "d.toml", '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "x"\n'
                                      '[[datasets.subsets]]\nimage_dir = "x"\n')
    (dataset,) = load_datasets(toml, cli())
    assert len(dataset.subsets) == 1
    assert dataset.skipped == (f"{toml}: datasets[0].subsets[1]: x is already used by another subset of "
                               "datasets[0]; subset ignored",)


@pytest.mark.parametrize(("name", "expected"), [
    ("10_sks dog", (10, "sks dog")), ("5_a_b", (5, "a_b")), ("1_", (1, "")), ("0_x", (0, "x")),
    ("dog", None), ("x_dog", None), ("10", None),
])
def test_parse_dreambooth_folder(name, expected):
    assert parse_dreambooth_folder(name) == expected


def test_dreambooth_folders_become_subsets(tmp_path):
    image_folder(tmp_path / "train" / "10_sks dog")
    image_folder(tmp_path / "train" / "5_a_b")
    image_folder(tmp_path / "reg" / "1_dog")
    (dataset,) = load_datasets(None, cli(train_data_dir=str(tmp_path / "train"), reg_data_dir=str(tmp_path / "reg"),
                                         resolution="1024", flip_aug=True, caption_extension="txt"))
    got = [(Path(s.image_dir).name, s.num_repeats, s.class_tokens, s.is_reg) for s in dataset.subsets]
    assert got == [("10_sks dog", 10, "sks dog", False), ("5_a_b", 5, "a_b", False), ("1_dog", 1, "dog", True)]
    assert all(s.flip_aug and s.caption_extension == ".txt" for s in dataset.subsets)
    assert dataset.resolution == (1024, 1024) and dataset.key_path == ""
    assert dataset.where("bucket_reso_steps") == "--bucket_reso_steps"
    assert dataset.subsets[0].where("num_repeats") == "--train_data_dir folder '10_sks dog': num_repeats"


def test_dreambooth_folders_sd_scripts_leaves_out_are_skipped_with_a_warning(tmp_path, caplog):
    image_folder(tmp_path / "train" / "10_ok")
    image_folder(tmp_path / "train" / "dog", count=3)
    image_folder(tmp_path / "train" / "0_zero", count=1)
    (tmp_path / "train" / "2_empty").mkdir()
    image_folder(tmp_path / "train" / ".ipynb_checkpoints")
    image_folder(tmp_path / "reg" / "reg_images", count=2)
    (dataset,) = load_datasets(None, cli(train_data_dir=str(tmp_path / "train"), reg_data_dir=str(tmp_path / "reg"),
                                         resolution="512"))
    assert [Path(s.image_dir).name for s in dataset.subsets] == ["10_ok"]
    assert dataset.skipped == (
        "--train_data_dir: folder '0_zero' skipped: repeat count 0 is below 1; 1 image not used",
        "--train_data_dir: folder '2_empty' skipped: no images (.png .jpg .jpeg .webp .bmp) directly in it",
        "--train_data_dir: folder 'dog' skipped: no '<repeats>_' prefix (e.g. '10_sks dog'); 3 images not used",
        "--reg_data_dir: folder 'reg_images' skipped: no '<repeats>_' prefix (e.g. '10_sks dog'); 2 images not used",
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 4 and all(line in text for line, text in zip(dataset.skipped, warnings, strict=True))
    assert not any(".ipynb_checkpoints" in text for text in warnings)


def test_dreambooth_error_only_when_no_training_image_is_left(tmp_path):
    image_folder(tmp_path / "train" / "dog", count=2)
    image_folder(tmp_path / "train" / ".hidden")
    image_folder(tmp_path / "reg" / "1_reg")
    with pytest.raises(ConfigError) as e:
        load_datasets(None, cli(train_data_dir=str(tmp_path / "train"), reg_data_dir=str(tmp_path / "reg"),
                                resolution="512"))
    assert e.value.problems == [
        f"--train_data_dir: no training images left in {tmp_path / 'train'} (image folders are named "
        "'<repeats>_<tokens>', e.g. '10_sks dog'); skipped: --train_data_dir: folder 'dog' skipped: "
        "no '<repeats>_' prefix (e.g. '10_sks dog'); 2 images not used"]


def test_dreambooth_errors_without_resolution_or_data(tmp_path):
    image_folder(tmp_path / "train" / "3_x")
    with pytest.raises(ConfigError, match="--resolution: missing"):
        load_datasets(None, cli(train_data_dir=str(tmp_path / "train")))
    with pytest.raises(ConfigError, match="--train_data_dir: folder not found"):
        load_datasets(None, cli(train_data_dir=str(tmp_path / "nope"), resolution="512"))
    with pytest.raises(ConfigError, match="no training data"):
        load_datasets(None, cli())


# validate_datasets ------------------------------------------------------------------------------------------


def load(tmp_path: Path, dataset: str, subset: str = "", **changes):
    folder = image_folder(tmp_path / "img")
    toml = write(tmp_path / "dataset.toml",
                 f'[[datasets]]\n{dataset}\n[[datasets.subsets]]\nimage_dir = "{folder}"\n{subset}\n')
    return toml, load_datasets(toml, cli(**changes))


def test_valid_datasets_have_no_problems(tmp_path):
    _, datasets = load(tmp_path, "resolution = 1024\nenable_bucket = true", "flip_aug = true")
    assert validate_datasets(datasets, cache_latents=True) == []


def test_bucket_reso_steps_must_be_multiple_of_32(tmp_path):
    toml, datasets = load(tmp_path, "resolution = 1024\nenable_bucket = true\nbucket_reso_steps = 20")
    assert validate_datasets(datasets, cache_latents=False) == [
        f"{toml}: datasets[0].bucket_reso_steps=20: must be a multiple of 32 for SDXL"]
    _, off = load(tmp_path, "resolution = 1024\nbucket_reso_steps = 20")  # bucketing off: not checked
    assert validate_datasets(off, cache_latents=False) == []


def test_bucket_limits_checked_after_rounding(tmp_path):
    # min 300 rounds down to 256 (fits 512); max 450 rounds up to 512 (fits); 600 rounds to 576 > 512.
    _, ok = load(tmp_path, "resolution = 512\nenable_bucket = true\nmin_bucket_reso = 300\nmax_bucket_reso = 450")
    assert validate_datasets(ok, cache_latents=False) == []
    toml, bad = load(tmp_path, "resolution = [768, 512]\nenable_bucket = true\nmin_bucket_reso = 600",
                     max_bucket_reso=700)
    assert validate_datasets(bad, cache_latents=False) == [
        f"{toml}: datasets[0].min_bucket_reso=600 (rounded: 576): must not exceed the shorter side of "
        "resolution 768x512",
        "--max_bucket_reso=700 (rounded: 704): must not be below the longer side of resolution 768x512"]
    toml, no_upscale = load(tmp_path, "resolution = 512\nenable_bucket = true\nbucket_no_upscale = true\n"
                                      "min_bucket_reso = 600")
    # Not used by bucket_no_upscale, but still checked against the resolution, as sd-scripts does (spec 1.17).
    assert validate_datasets(no_upscale, cache_latents=False) == [
        f"{toml}: datasets[0].min_bucket_reso=600 (rounded: 576): must not exceed the shorter side of "
        "resolution 512x512"]


def test_subset_problems_name_where_the_value_was_set(tmp_path):
    toml, datasets = load(tmp_path, "resolution = 1000", "num_repeats = 0\nrandom_crop = true\ncolor_aug = true")
    assert validate_datasets(datasets, cache_latents=True) == [
        f"{toml}: datasets[0].resolution=1000,1000: without bucketing both sides must be multiples of 32 for SDXL",
        f"{toml}: datasets[0].subsets[0].num_repeats=0: must be at least 1 for some training subset of datasets[0]; "
        "with none left nothing would train",
        f"{toml}: datasets[0].subsets[0].color_aug=true: cannot be combined with --cache_latents (latents are "
        "encoded once, before any augmentation)",
        f"{toml}: datasets[0].subsets[0].random_crop=true: cannot be combined with --cache_latents (latents are "
        "encoded once, before any augmentation)",
    ]


def test_missing_or_empty_image_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    toml = write(tmp_path / "d.toml", f'[[datasets]]\nresolution = 512\n'
                                      f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "empty"}"\n'
                                      f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "gone"}"\n')
    assert validate_datasets(load_datasets(toml, cli()), cache_latents=False) == [
        f"{toml}: datasets[0].subsets[0].image_dir: no images (.png .jpg .jpeg .webp .bmp) directly in "
        f"{tmp_path / 'empty'}",
        f"{toml}: datasets[0].subsets[1].image_dir: folder not found: {tmp_path / 'gone'}",
    ]


def test_shared_general_value_reported_once(tmp_path):
    """A bad [general] value shared by two datasets is one problem; validation_split must be below 1."""
    folder = image_folder(tmp_path / "img")
    dataset = f'[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "{folder}"\n'
    toml = write(tmp_path / "d.toml", '[general]\nshuffle_caption = true\nvalidation_split = 1.0\n' + dataset * 2)
    assert validate_datasets(load_datasets(toml, cli()), cache_latents=False) == [
        f"{toml}: general.validation_split=1.0: must be at least 0 and below 1 (the fraction of each subset's "
        "training images held out for validation)",
    ]


def test_subset_settings_follow_the_status_of_their_option(tmp_path, monkeypatch):
    """One source of truth: a subset key works exactly when the option of the same name works."""
    from dataclasses import replace

    import sdxl_lora.config.dataset_validate as dataset_validate
    from sdxl_lora.config.options import NOT_YET, OPTIONS_BY_NAME, WORKS

    (tmp_path / "m.json").write_text("{}", encoding="utf-8")
    metadata = (tmp_path / "m.json").as_posix()
    toml, datasets = load(tmp_path, "resolution = 512", f"shuffle_caption = true\nmetadata_file = '{metadata}'")
    assert validate_datasets(datasets, cache_latents=False) == []  # both work now
    not_yet = {name: replace(option, status=NOT_YET) if name in ("shuffle_caption", "in_json") else option
               for name, option in OPTIONS_BY_NAME.items()}
    monkeypatch.setattr(dataset_validate, "OPTIONS_BY_NAME", not_yet)
    assert [p.split(": ", 1)[1] for p in validate_datasets(datasets, cache_latents=False)] == [
        "datasets[0].subsets[0].shuffle_caption=true: not supported yet (roadmap: dataset pipeline)",
        f'datasets[0].subsets[0].metadata_file="{metadata}": not supported yet (roadmap: dataset pipeline)',
    ]
    assert WORKS != NOT_YET


def test_in_json_makes_one_fine_tuning_dataset(tmp_path, caplog):
    import logging

    folder = image_folder(tmp_path / "img")
    meta = write(tmp_path / "meta.json", json.dumps({"0": {"caption": "a dog"}}))
    with caplog.at_level(logging.WARNING):
        (dataset,) = load_datasets(None, cli(in_json=str(meta), train_data_dir=str(folder), resolution="512",
                                             reg_data_dir=str(tmp_path), dataset_repeats=3))
    (subset,) = dataset.subsets
    assert (subset.metadata_file, subset.image_dir, subset.num_repeats) == (str(meta), str(folder), 3)
    assert "--reg_data_dir is ignored with --in_json" in caplog.text
    assert validate_datasets((dataset,), cache_latents=False) == []
    toml = write(tmp_path / "d.toml", f'[[datasets]]\nresolution = 512\n[[datasets.subsets]]\n'
                                      f'metadata_file = "{tmp_path / "gone.json"}"\n')
    assert validate_datasets(load_datasets(toml, cli()), cache_latents=False) == [
        f"{toml}: datasets[0].subsets[0].metadata_file: file not found: {tmp_path / 'gone.json'}"]


def test_masks_need_masked_loss_and_face_crop_is_an_augmentation(tmp_path, caplog):
    import logging

    folder, masks = image_folder(tmp_path / "img"), image_folder(tmp_path / "masks")
    toml = write(tmp_path / "d.toml", f'[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "{folder}"\n'
                                      f'conditioning_data_dir = "{masks}"\nface_crop_aug_range = [0.2, 0.4]\n')
    datasets = load_datasets(toml, cli())
    assert validate_datasets(datasets, cache_latents=True) == [
        f"{toml}: datasets[0].subsets[0].face_crop_aug_range=[0.2, 0.4]: cannot be combined with --cache_latents "
        "(latents are encoded once, before any augmentation)",
        f"{toml}: datasets[0].subsets[0].conditioning_data_dir: masks are used only with --masked_loss; add it or "
        "remove the key"]
    assert validate_datasets(datasets, cache_latents=False, masked_loss=True) == []
    plain = write(tmp_path / "p.toml",
                  f'[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    with caplog.at_level(logging.WARNING):
        assert validate_datasets(load_datasets(plain, cli()), cache_latents=False, masked_loss=True) == []
        load_datasets(plain, cli(conditioning_data_dir=str(masks)))
    assert "--masked_loss: no subset has conditioning_data_dir or alpha_mask" in caplog.text
    assert "--conditioning_data_dir is ignored" in caplog.text


def test_num_repeats_below_one_is_an_error_only_when_no_training_subset_is_left(tmp_path):
    a, b = image_folder(tmp_path / "a"), image_folder(tmp_path / "b")
    toml = write(tmp_path / "d.toml", f'[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "{a}"\n'
                                      f'num_repeats = 0\n[[datasets.subsets]]\nimage_dir = "{b}"\n')
    assert validate_datasets(load_datasets(toml, cli()), cache_latents=False) == []  # b still trains
    toml = write(tmp_path / "d.toml", f'[[datasets]]\nresolution = 512\nnum_repeats = 0\n'
                                      f'[[datasets.subsets]]\nimage_dir = "{a}"\n')
    assert validate_datasets(load_datasets(toml, cli()), cache_latents=False) == [
        f"{toml}: datasets[0].num_repeats=0: must be at least 1 for some training subset of datasets[0]; with none "
        "left nothing would train"]
