"""Files as they come: formats, EXIF orientation, truncated and unreadable files, masks, fine-tuning metadata,
subsets that do not train, and --skip_bad_files (issue 8 items 1, 5, 6)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.data.dataset import TrainDataset
from sdxl_lora.data.discover import caption_candidates, discover_subset, image_size
from sdxl_lora.data.images import (
    ImageError,
    color_augment,
    face_box,
    face_crop_window,
    prepare_image,
    prepare_mask,
)
from sdxl_lora.data.plan import build_plan


def noise(path: Path, size=(40, 20), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path, **save)
    return path


def one_dataset(*subsets: SubsetConfig, resolution=(64, 64), **settings) -> DatasetConfig:
    base = {"enable_bucket": True, "min_bucket_reso": 32, "max_bucket_reso": 128, "bucket_reso_steps": 32,
            "batch_size": 2, "key_path": "datasets[0]"}
    return DatasetConfig(subsets=subsets, resolution=resolution, **{**base, **settings})


def test_formats_and_grayscale_load_as_rgb(tmp_path):
    for name, mode in (("a.png", "RGBA"), ("b.jpg", "RGB"), ("c.webp", "RGB"), ("d.png", "L"), ("e.jpg", "L")):
        path = noise(tmp_path / name, mode=mode)
        assert image_size(path) == (40, 20)
        image, mask = prepare_image(path, bucket=(32, 16), resized=(40, 20), alpha_mask=True)
        assert image.shape == (3, 16, 32) and mask.shape == (16, 32)
        assert -1.0 <= image.min() and image.max() <= 1.0


def test_exif_orientation_turns_size_and_pixels(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 40x20 stored, 20x40 shown
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white as stored -> top half white as shown
    path = tmp_path / "turned.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    assert image_size(path) == (20, 40)
    image, _ = prepare_image(path, bucket=(20, 40), resized=(20, 40))
    assert image.shape == (3, 40, 20)
    assert image[:, :15].mean() > 0.9 and image[:, 25:].mean() < -0.9


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_image_is_named(tmp_path, name):
    path = noise(tmp_path / name, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    subset = SubsetConfig(str(tmp_path), class_tokens="x", key_path="datasets[0].subsets[0]")
    found, bad = discover_subset(subset)
    assert found == [] and len(bad) == 1
    assert str(path) in bad[0].message and "truncated" in bad[0].message


def test_jpeg_with_trailing_data_and_zero_byte_image(tmp_path):
    path = noise(tmp_path / "tail.jpg")
    path.write_bytes(path.read_bytes() + b"\0" * 6000)  # some cameras append a trailer after the end marker
    assert image_size(path) == (40, 20)
    (tmp_path / "empty.png").write_bytes(b"")
    found, bad = discover_subset(SubsetConfig(str(tmp_path), class_tokens="x"))
    assert [f.path.name for f in found] == ["tail.jpg"]
    assert len(bad) == 1 and f"cannot read image {tmp_path / 'empty.png'}" in bad[0].message


def test_face_crop_caption_fallback_looks_only_at_the_file_name(tmp_path):
    folder = tmp_path / "a_b_c_d_e"
    assert caption_candidates(folder / "img.png", ".txt") == [folder / "img.txt"]
    assert caption_candidates(folder / "cat_1_2_3_4.png", ".txt") == [folder / "cat_1_2_3_4.txt",
                                                                       folder / "cat.txt"]


def test_bad_files_stop_the_plan_or_are_skipped(tmp_path, caplog):
    noise(tmp_path / "ok.png", size=(64, 64))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    noise(tmp_path / "tiny.png", size=(16, 16))  # both sides below min_bucket_reso 32
    (tmp_path / "ok.txt").write_text("", encoding="utf-8")  # zero-byte caption
    config = one_dataset(SubsetConfig(str(tmp_path), class_tokens="x", caption_extension=".txt",
                                      key_path="datasets[0].subsets[0]"))
    with pytest.raises(ConfigError) as err:
        build_plan((config,))
    text = str(err.value)
    assert f"cannot read image {tmp_path / 'broken.png'}" in text
    assert f"caption file {tmp_path / 'ok.txt'} is empty" in text
    assert f"{tmp_path / 'tiny.png'} (16x16) is smaller than the smallest bucket 32x32" in text
    assert "--skip_bad_files" in text
    (tmp_path / "ok.txt").write_text("a caption", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        (plan,) = build_plan((config,), skip_bad_files=True).datasets
    assert [Path(i.path).name for i in plan.images] == ["ok.png"]
    assert "2 unusable files left out" in caplog.text and "broken.png" in caplog.text


def test_a_dataset_without_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no training images"):
        build_plan((one_dataset(SubsetConfig(str(tmp_path / "empty"))),))


def test_subset_with_num_repeats_below_one_is_ignored_with_a_warning(tmp_path, caplog):
    noise(tmp_path / "a" / "x.png", size=(64, 64))
    noise(tmp_path / "b" / "y.png", size=(64, 64))
    config = one_dataset(SubsetConfig(str(tmp_path / "a")),
                         SubsetConfig(str(tmp_path / "b"), num_repeats=0, key_path="datasets[0].subsets[1]"))
    with caplog.at_level(logging.WARNING):
        (plan,) = build_plan((config,)).datasets
    assert [Path(i.path).name for i in plan.images] == ["x.png"]
    assert "datasets[0].subsets[1].num_repeats=0" in caplog.text and "not used" in caplog.text


def test_fine_tuning_subsets_with_the_same_relative_name_keep_their_own_captions(tmp_path):
    for folder, caption in (("a", "first"), ("b", "second")):
        noise(tmp_path / folder / "img.png", size=(64, 64))
        (tmp_path / f"{folder}.json").write_text(json.dumps({"img": {"caption": caption, "tags": "t1, t2"}}),
                                                 encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image_path": str(tmp_path / "a" / "img.png"),
                                                  "tags": "only tags"}) + "\n", encoding="utf-8")
    subsets = [SubsetConfig(str(tmp_path / f), metadata_file=str(tmp_path / f"{f}.json")) for f in "ab"]
    subsets.append(SubsetConfig("", metadata_file=str(tmp_path / "c.jsonl")))
    (plan,) = build_plan((one_dataset(*subsets),)).datasets
    # Tags are appended with caption_separator and no space; without a caption the tags are the caption.
    assert [(Path(i.path).parent.name, i.caption) for i in plan.images] == [
        ("a", "first,t1, t2"), ("b", "second,t1, t2"), ("a", "only tags")]


def test_missing_metadata_image_is_named(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"gone": {"caption": "x"}}), encoding="utf-8")
    subset = SubsetConfig(str(tmp_path), metadata_file=str(tmp_path / "m.json"), key_path="datasets[0].subsets[0]")
    with pytest.raises(ConfigError, match="image 'gone' not found in"):
        build_plan((one_dataset(subset),))


def halves(path: Path, size=(16, 4)) -> Path:
    """Mask: left half black (0), right half white (1)."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:, size[0] // 2:] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_mask_is_cropped_like_its_image(tmp_path):
    mask = halves(tmp_path / "m.png")
    # 16x4 into bucket 8x4: centre window columns 4..11 -> four 0 then four 1; flipped: reversed.
    cropped = prepare_mask(mask, original=(16, 4), bucket=(8, 4), resized=(16, 4))
    assert cropped[0].tolist() == [0.0] * 4 + [1.0] * 4
    flipped = prepare_mask(mask, original=(16, 4), bucket=(8, 4), resized=(16, 4), flip=True)
    assert flipped[0].tolist() == [1.0] * 4 + [0.0] * 4
    with pytest.raises(ImageError, match="is 16x4 but its image is 20x4"):
        prepare_mask(mask, original=(20, 4), bucket=(8, 4), resized=(20, 4))


def test_conditioning_masks_reach_the_batch_and_are_checked(tmp_path):
    noise(tmp_path / "img" / "a.png", size=(64, 64))
    noise(tmp_path / "img" / "b.png", size=(64, 64))
    halves(tmp_path / "mask" / "a.png", size=(64, 64))
    halves(tmp_path / "mask" / "b.png", size=(32, 32))  # wrong size
    subset = SubsetConfig(str(tmp_path / "img"), conditioning_data_dir=str(tmp_path / "mask"), class_tokens="x",
                          key_path="datasets[0].subsets[0]")
    with pytest.raises(ConfigError, match=r"mask .*b.png is 32x32 but its image .*b.png is 64x64"):
        build_plan((one_dataset(subset),))
    halves(tmp_path / "mask" / "b.png", size=(64, 64))
    (plan,) = build_plan((one_dataset(subset),)).datasets
    batch = TrainDataset(plan, seed=1)[0]
    expected = torch.zeros(64, 64)
    expected[:, 32:] = 1.0
    assert batch.masks.shape == (2, 64, 64) and all(torch.equal(m, expected) for m in batch.masks)


class Draws:
    def __init__(self, values, uniform):
        self.values, self.uniform_value = list(values), uniform

    def random(self) -> float:
        return self.values.pop(0)

    def uniform(self, low, high) -> float:
        return self.uniform_value


def test_color_aug_gamma_and_hue_by_hand():
    grey = Image.new("RGB", (2, 2), (64, 64, 64))
    assert color_augment(grey, Draws([0.5], 1.0)) is grey  # 0.5 >= 1/3: untouched
    # Gamma 1.05 on 64/255: 255 * 0.25098^1.05 = 59.73 -> 60 (sd-scripts would compute 64^1.05 = 78.5).
    assert color_augment(grey, Draws([0.1, 0.7], 1.05)).getpixel((0, 0)) == (60, 60, 60)
    # Hue +8 on OpenCV's 0-180 scale = 16 degrees: pure red becomes red with some green (G = 255 * 16/60 = 68).
    red, green, blue = color_augment(Image.new("RGB", (1, 1), (255, 0, 0)), Draws([0.1, 0.2], 8.0)).getpixel((0, 0))
    assert red == 255 and blue == 0 and 60 <= green <= 72


class Middle:
    """uniform(a, b) returns the middle of the range."""

    def uniform(self, low, high) -> float:
        return (low + high) / 2


def test_face_crop_window_by_hand():
    assert face_box("x/dog_300_100_40_40.png") == (300, 100, 40, 40)
    assert face_box("x/a_b_c_d_e.png") is None and face_box("x/dog.png") is None
    # 400x200, bucket 64x64, face 40 px: scale 0.5 * 64 / 40 = 0.8 (cover needs 0.32) -> 320x160; the window is
    # centred on the face at (240, 80): left 240 - 32 = 208, top 80 - 32 = 48.
    assert face_crop_window((400, 200), (64, 64), (300, 100, 40, 40), (0.4, 0.6), Middle()) == ((320, 160),
                                                                                                 (208, 48))
    # A face wanted at 4x the bucket would need scale 6.4: clamped to 1 (no enlarging); window 268, 68.
    assert face_crop_window((400, 200), (64, 64), (300, 100, 40, 40), (4.0, 4.0), Middle()) == ((400, 200),
                                                                                                 (268, 68))
    # Face at the right edge: 390 * 0.8 - 32 = 280 is clamped to 320 - 64 = 256.
    assert face_crop_window((400, 200), (64, 64), (390, 100, 40, 40), (0.4, 0.6), Middle())[1] == (256, 48)


def test_scanning_decodes_no_image(tmp_path, monkeypatch):
    from PIL import ImageFile

    for name in ("a.png", "b.jpg", "c.webp", "d.bmp"):
        noise(tmp_path / name, size=(64, 48))

    def no_decoding(self):
        raise AssertionError("an image was decoded during the scan")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    (plan,) = build_plan((one_dataset(SubsetConfig(str(tmp_path), class_tokens="x")),)).datasets
    assert sorted(i.original_size for i in plan.images) == [(64, 48)] * 4


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[0, 32896, 65535, 65535]], dtype=np.uint16)  # 32896 / 65535 * 255 = 128.0
    Image.fromarray(pixels).save(tmp_path / "g.png")
    image, _ = prepare_image(tmp_path / "g.png", bucket=(4, 1), resized=(4, 1))
    # x / 255 * 2 - 1: 0 -> -1, 128 -> 0.00392, 255 -> 1 (PIL's own conversion would give 255 for all but 0).
    assert image[0, 0].tolist() == pytest.approx([-1.0, 128 / 255 * 2 - 1, 1.0, 1.0], abs=1e-6)


def test_cache_info_is_written_reused_and_refreshed(tmp_path, monkeypatch):
    import os

    from sdxl_lora.data import discover

    noise(tmp_path / "a.png", size=(64, 48))
    noise(tmp_path / "b.png", size=(48, 64))
    (tmp_path / "a.txt").write_text("first caption", encoding="utf-8")
    subset = SubsetConfig(str(tmp_path), class_tokens="sks", caption_extension=".txt", cache_info=True)
    found, _ = discover_subset(subset)
    cache = json.loads((tmp_path / "metadata_cache.json").read_text(encoding="utf-8"))
    assert {Path(k).name: (v["caption"], v["resolution"]) for k, v in cache.items()} == {
        "a.png": ("first caption", [64, 48]), "b.png": ("", [48, 64])}
    # Second scan: nothing is read from the images.
    monkeypatch.setattr(discover, "image_size", lambda path: pytest.fail(f"{path} was read"))
    assert [(f.caption, f.size) for f in discover_subset(subset)[0]] == [("first caption", (64, 48)),
                                                                       ("sks", (48, 64))]
    # An edited caption (newer mtime) is read again; a new image is scanned.
    (tmp_path / "a.txt").write_text("second caption", encoding="utf-8")
    stat = (tmp_path / "a.txt").stat()
    os.utime(tmp_path / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    monkeypatch.undo()
    noise(tmp_path / "c.png", size=(32, 32))
    assert [f.caption for f in discover_subset(subset)[0]] == ["second caption", "sks", "sks"]
    cache = json.loads((tmp_path / "metadata_cache.json").read_text(encoding="utf-8"))
    assert len(cache) == 3 and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_cache_info_entries_without_a_stamp_are_rescanned(tmp_path):
    noise(tmp_path / "a.png", size=(64, 48))
    (tmp_path / "metadata_cache.json").write_text(json.dumps(  # as sd-scripts writes it
        {str(tmp_path / "a.png"): {"caption": "stale", "resolution": [1, 1]}}), encoding="utf-8")
    (found,), _ = discover_subset(SubsetConfig(str(tmp_path), class_tokens="sks", cache_info=True))
    assert (found.caption, found.size) == ("sks", (64, 48))


def test_an_image_corrupt_inside_stops_the_loader_with_one_line_naming_it(tmp_path):
    from torch.utils.data import DataLoader

    from sdxl_lora.data.dataset import collate_first

    path = noise(tmp_path / "bad.png", size=(64, 64))
    data = bytearray(path.read_bytes())
    data[200:260] = b"\0" * 60  # inside the image data: header and end marker intact, so the scan passes
    path.write_bytes(bytes(data))
    (plan,) = build_plan((one_dataset(SubsetConfig(str(tmp_path), class_tokens="x")),)).datasets
    loader = DataLoader(TrainDataset(plan, seed=1), batch_size=1, collate_fn=collate_first, num_workers=1)
    with pytest.raises(ImageError) as err:
        next(iter(loader))
    (problem,) = err.value.problems
    assert problem.startswith(f"cannot read image {path}: ") and "\n" not in problem and "Traceback" not in problem
