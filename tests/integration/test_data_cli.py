"""The dataset pipeline through the real CLI: processed captions in `check --json`, bad files named before any
weight is read, and a short training run with every caption, augmentation and mask option on."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from helpers import make_images, train_keeping_result, write_toml
from sdxl_lora.cli import main

GENERAL = "[general]\nenable_bucket = true\nmin_bucket_reso = 32\nmax_bucket_reso = 128\nbucket_reso_steps = 32\n"


def _argv(model, toml, out, *extra):
    return [f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}", f"--output_dir={out}",
            "--output_name=data", "--network_module=networks.lora", "--network_dim=4", "--learning_rate=1e-3",
            "--seed=5", "--max_data_loader_n_workers=0", *extra]


def test_check_json_shows_buckets_and_first_epoch_captions(tiny_model_dir, tmp_path, capsys):
    images = make_images(tmp_path / "img", [(64, 64), (96, 64), (64, 96)])  # captions "image N, a test picture"
    toml = write_toml(tmp_path / "d.toml", GENERAL + (
        "[[datasets]]\nresolution = 64\nbatch_size = 2\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"
        "  caption_prefix = 'sks,'\n  keep_tokens = 1\n  shuffle_caption = true\n"))
    assert main(["check", "--json", *_argv(tiny_model_dir, toml, tmp_path / "out")]) == 0
    (dataset,) = json.loads(capsys.readouterr().out)["datasets"]
    # Buckets of area <= 64*64 on a 32 grid: (32,96) (32,128) (64,64) (96,32) (128,32). 96x64 (1.5): 64x64 is
    # closest (|1 - 1.5| = 0.5 vs 1.5); 64x96 (0.667): 32x96 and 64x64 tie at 0.333, the first listed wins.
    assert sorted(tuple(i["bucket"]) for i in dataset["images"]) == [(32, 96), (64, 64), (64, 64)]
    shown = dataset["subsets"][0]["first_epoch_captions"]
    assert len(shown) == 3
    for entry in shown:
        n = entry["path"][-6:-4].lstrip("0") or "0"
        tags = entry["caption"].split(", ")
        assert tags[0] == "sks" and sorted(tags[1:]) == sorted([f"image {n}", "a test picture"])


def test_a_truncated_image_stops_check_naming_it_unless_skipped(tiny_model_dir, tmp_path, capsys):
    images = make_images(tmp_path / "img", [(64, 64), (64, 64)])
    broken = images / "img01.png"
    broken.write_bytes(broken.read_bytes()[:200])
    toml = write_toml(tmp_path / "d.toml", GENERAL + (
        f"[[datasets]]\nresolution = 64\n  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n"))
    argv = _argv(tiny_model_dir, toml, tmp_path / "out")
    assert main(["check", *argv]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "truncated" in err and "--skip_bad_files" in err and "Traceback" not in err
    assert main(["check", "--json", "--skip_bad_files", *argv]) == 0
    (dataset,) = json.loads(capsys.readouterr().out)["datasets"]
    assert [i["path"] for i in dataset["images"]] == [str(images / "img00.png")]


def test_training_with_every_caption_augmentation_and_mask_option(tiny_model_dir, tmp_path):
    faces = make_images(tmp_path / "faces", [(96, 64), (64, 64)])
    (faces / "img00.png").rename(faces / "img00_60_30_20_20.png")  # face-crop name; caption falls back to img00
    alpha = tmp_path / "alpha"
    alpha.mkdir()
    pixels = np.full((64, 64, 4), 200, dtype=np.uint8)
    pixels[:, :32, 3] = 0
    Image.fromarray(pixels, "RGBA").save(alpha / "a.png")
    (alpha / "a.txt").write_text("x ||| y, z ||| w", encoding="utf-8")
    masked = make_images(tmp_path / "masked", [(64, 64), (64, 96)])
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, size in (("img00", (64, 64)), ("img01", (64, 96))):
        Image.new("RGB", size, (255, 255, 255)).save(masks / f"{name}.png")
    toml = write_toml(tmp_path / "d.toml", GENERAL + (
        "[[datasets]]\nresolution = 64\nbatch_size = 2\n"
        f"  [[datasets.subsets]]\n  image_dir = '{faces.as_posix()}'\n  caption_extension = '.txt'\n"
        "  shuffle_caption = true\n  caption_tag_dropout_rate = 0.3\n  token_warmup_step = 2\n"
        "  caption_dropout_every_n_epochs = 2\n  flip_aug = true\n  color_aug = true\n  random_crop = true\n"
        "  face_crop_aug_range = [0.3, 0.5]\n"
        f"  [[datasets.subsets]]\n  image_dir = '{alpha.as_posix()}'\n  caption_extension = '.txt'\n"
        "  alpha_mask = true\n  keep_tokens_separator = '|||'\n  enable_wildcard = true\n"
        "[[datasets]]\nresolution = 64\nbatch_size = 2\n"
        f"  [[datasets.subsets]]\n  image_dir = '{masked.as_posix()}'\n  caption_extension = '.txt'\n"
        f"  conditioning_data_dir = '{masks.as_posix()}'\n"))
    code, result = train_keeping_result(_argv(tiny_model_dir, toml, tmp_path / "out", "--masked_loss",
                                              "--max_train_steps=4", "--network_train_unet_only"))
    assert code == 0 and result.steps == 4
    assert all(np.isfinite(result.losses)) and (tmp_path / "out" / "data.safetensors").is_file()
