"""Image and caption discovery (spec 2.4)."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from sdxl_lora.config.dataset_toml import SubsetConfig
from sdxl_lora.data.discover import caption_candidates, discover_subset, image_size, list_images


def png(path: Path, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def subset(folder: Path, **settings) -> SubsetConfig:
    return SubsetConfig(image_dir=str(folder), key_path="datasets[0].subsets[0]", **settings)


def test_list_images_is_sorted_non_recursive_and_filters_extensions(tmp_path):
    for name in ("b.png", "a.JPG", "c.webp", "d.bmp", "e.jpeg"):
        (tmp_path / name).write_bytes(b"x")  # listing looks at names only
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "f.Png").write_bytes(b"x")  # mixed case is not an image extension (as sd-scripts)
    png(tmp_path / "sub" / "z.png")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp", "d.bmp", "e.jpeg"]


def test_caption_candidates_include_face_crop_name():
    assert caption_candidates(Path("/d/cat.png"), ".txt") == [Path("/d/cat.txt")]
    assert caption_candidates(Path("/d/my_cat_10_20_30_40.png"), ".txt") == [
        Path("/d/my_cat_10_20_30_40.txt"), Path("/d/my_cat.txt")]
    assert caption_candidates(Path("/d/a_1_2_3.png"), ".txt") == [Path("/d/a_1_2_3.txt")]  # only 4 parts


def test_captions_from_files_face_crop_fallback_and_class_tokens(tmp_path):
    png(tmp_path / "a.png", (64, 48))
    (tmp_path / "a.txt").write_text("first line \nsecond line\n", encoding="utf-8")
    png(tmp_path / "face_1_2_3_4.png")
    (tmp_path / "face.txt").write_text("a face", encoding="utf-8")
    png(tmp_path / "z.png", (30, 40))
    found, problems = discover_subset(subset(tmp_path, caption_extension=".txt", class_tokens="sks dog"))
    assert problems == []
    assert [(f.path.name, f.caption, f.size) for f in found] == [
        ("a.png", "first line", (64, 48)), ("face_1_2_3_4.png", "a face", (64, 48)), ("z.png", "sks dog", (30, 40))]


def test_wildcard_keeps_every_non_empty_line(tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "a.caption").write_text("one\n\n  two {x|y}\n", encoding="utf-8")
    found, _ = discover_subset(subset(tmp_path, enable_wildcard=True))
    assert found[0].caption == "one\ntwo {x|y}"


def test_missing_caption_without_class_tokens_warns_once(tmp_path, caplog):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    with caplog.at_level(logging.WARNING):
        found, problems = discover_subset(subset(tmp_path))
    assert [f.caption for f in found] == ["", ""] and problems == []
    assert len(caplog.records) == 1 and "2 of 2 images" in caplog.records[0].getMessage()


def test_empty_and_non_utf8_caption_files_are_problems(tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "a.caption").write_text(" \n", encoding="utf-8")
    png(tmp_path / "b.png")
    (tmp_path / "b.caption").write_bytes(b"\xff\xfe\xfa")
    png(tmp_path / "c.png")
    found, problems = discover_subset(subset(tmp_path))
    assert [f.path.name for f in found] == ["c.png"]
    assert [b.message for b in problems] == [
        f"datasets[0].subsets[0]: caption file {tmp_path / 'a.caption'} is empty; delete it to use class_tokens "
        "or fill it in",
        f"datasets[0].subsets[0]: caption file {tmp_path / 'b.caption'} is not UTF-8 text",
    ]


def test_unreadable_image_is_a_problem(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    found, problems = discover_subset(subset(tmp_path, class_tokens="x"))
    assert found == [] and problems[0].message.startswith(f"datasets[0].subsets[0]: cannot read image {tmp_path}")


def test_image_size_reads_header_of_every_format(tmp_path):
    for ext in ("png", "jpg", "webp", "bmp"):
        path = tmp_path / f"i.{ext}"
        Image.new("RGB", (37, 21)).save(path)
        assert image_size(path) == (37, 21)
