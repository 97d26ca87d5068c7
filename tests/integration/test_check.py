"""`sdxl-lora check`: the plan for a mixed-aspect dataset, checked against a hand calculation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import make_images, write_toml
from sdxl_lora.cli import main

# Resolution 1024, bucket_reso_steps 64, min 256, max 1024 (sd-scripts defaults), max_area = 1024*1024.
# Bucket widths w = 256..1024: h = min(1024, floor((max_area // w) / 64) * 64), e.g. w=704 -> 1489 -> 1472 -> 1024,
# so the list holds (w, 1024) and (1024, w) for every w, plus (1024, 1024).
# 1536x1024 (aspect 1.5): nearest bucket aspect is 1024/704 = 1.4545 (1024/640 = 1.6 is further) -> 1024x704;
#   it is wider than the bucket, so scale = 704/1024 and resized = (1056, 704).
#   crop conditioning: the centre crop actually applied cuts (1056 - 1024) // 2 = 16 columns on the left, 0 rows.
# 768x1344 (0.5714): 576/1024 = 0.5625 beats 640/1024 = 0.625 -> 576x1024.
# 1024x1536 (0.6667): 704/1024 = 0.6875 beats 640/1024 = 0.625 -> 704x1024.
# 1024x1024 is itself a bucket.
SIZES = [(1536, 1024), (1024, 1024), (768, 1344), (1024, 1536)]
EXPECTED_BUCKETS = {(1024, 704): 3, (1024, 1024): 3, (576, 1024): 3, (704, 1024): 3}  # 3 repeats each


@pytest.fixture
def argv(tmp_path, tiny_model_dir):
    images = make_images(tmp_path / "img", SIZES)
    toml = write_toml(tmp_path / "ds.toml", (
        "[general]\nenable_bucket = true\n[[datasets]]\nresolution = 1024\nbatch_size = 2\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"
        "  num_repeats = 3\n"))
    return [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={toml}",
            f"--output_dir={tmp_path / 'out'}", "--output_name=mix", "--network_module=networks.lora",
            "--max_train_epochs=2", "--network_train_unet_only", "--seed=3"]


def test_check_json_matches_hand_calculation(argv, capsys, monkeypatch):
    import sdxl_lora.models.load as load

    monkeypatch.setattr(load, "load_sdxl", lambda *_: pytest.fail("check must not load the model"))
    assert main(["check", "--json", *argv]) == 0
    doc = json.loads(capsys.readouterr().out)
    (ds,) = doc["datasets"]
    assert {(b["width"], b["height"]): b["count"] for b in ds["buckets"]} == EXPECTED_BUCKETS
    # 4 buckets x ceil(3 / 2) batches = 8 per epoch; 2 epochs -> 16 steps.
    assert ds["batches_per_epoch"] == 8 and doc["steps_per_epoch"] == 8
    assert doc["max_train_steps"] == 16 and doc["num_epochs"] == 2
    assert doc["num_train_images"] == 12 and doc["num_reg_images"] == 0
    assert ds["subsets"][0]["images"] == 4 and ds["subsets"][0]["repeats"] == 3
    assert doc["trains"] == {"unet": True, "te1": False, "te2": False}
    wide = next(i for i in ds["images"] if i["path"].endswith("img00.png"))
    assert wide["original_size"] == [1536, 1024] and wide["bucket"] == [1024, 704]
    assert wide["resized_size"] == [1056, 704] and wide["crop_top_left"] == [0, 16]  # (1056 - 1024) // 2
    assert wide["target_size"] == [1024, 704]
    assert doc["saves"][0]["path"].endswith("mix.safetensors")


def test_check_text_report(argv, capsys):
    assert main(["check", *argv]) == 0
    out = capsys.readouterr().out
    assert "1024x704: 3" in out and "576x1024: 3" in out
    assert "steps: 16 (8 per epoch, 2 epochs)" in out
    assert "4 training images x 3 repeats" in out


def test_check_lists_the_dreambooth_folders_it_skipped(tmp_path, tiny_model_dir, capsys):
    root = tmp_path / "train"
    make_images(root / "10_sks dog", [(64, 64)])
    make_images(root / "sks_dog", [(64, 64), (64, 64)])
    make_images(root / ".ipynb_checkpoints", [(64, 64)])
    argv = [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--train_data_dir={root}", "--resolution=64",
            f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora", "--max_train_steps=2"]
    line = "--train_data_dir: folder 'sks_dog' skipped: no '<repeats>_' prefix (e.g. '10_sks dog'); 2 images not used"
    assert main(["check", *argv]) == 0
    captured = capsys.readouterr()
    assert f"skipped: {line}" in captured.out.splitlines()
    assert line in captured.err and ".ipynb_checkpoints" not in captured.err + captured.out
    assert main(["check", "--json", *argv]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["skipped"] == [line]
    assert doc["num_train_images"] == 10


def test_check_estimates_peak_gpu_memory_from_the_models_configs(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """The memory section, with no weight read: the U-Net's weights are its parameter count (read here from its
    safetensors header) x 2 bytes in bf16; the LoRA count is worked out per transformer block of the tiny U-Net
    (widths 64 and 128, transformer_layers_per_block (1, 2, 2), reversed for the up blocks, cross-attention 96):
    28C + 2 x 96 per unit rank per block, 4C per proj_in/out pair. Width 64: 2 x 2 down + 3 x 2 up blocks in 5
    models: 10 x 1,984 + 5 x 256 = 21,120; width 128: 2 x 2 down + 2 mid + 3 x 2 up blocks in 6 models:
    12 x 3,776 + 6 x 512 = 48,384; sum 69,504 x rank 4 = 278,016."""
    import math

    from safetensors import safe_open

    import sdxl_lora.models.load as load

    monkeypatch.setattr(load, "load_sdxl", lambda *_: pytest.fail("check must not load the model"))
    with safe_open(str(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        unet_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    make_images(tmp_path / "train" / "1_cat", [(64, 64)])
    argv = [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--train_data_dir={tmp_path / 'train'}",
            "--resolution=64", f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora",
            "--network_dim=4", "--network_train_unet_only", "--mixed_precision=bf16", "--max_train_steps=2"]
    assert main(["check", "--json", *argv]) == 0
    memory = json.loads(capsys.readouterr().out)["memory"]
    parts = memory["training_bytes"]
    assert parts["U-Net weights"] == 2 * unet_params
    assert memory["lora_parameters"] == 278_016 and parts["LoRA weights"] == 4 * 278_016
    assert parts["optimizer state"] == 2 * 4 * 278_016  # AdamW: two float32 moments
    assert memory["peak_bytes"] == max(sum(parts.values()), memory["caching_bytes"])
    assert memory["resolution"] == [64, 64] and memory["batch_size"] == 1

    # Caching holds the VAE and the text encoders; the U-Net is loaded after it, even with --lowram, unless
    # --base_weights are merged into it first: then --lowram loads it onto the device before caching.
    assert main(["check", "--json", *argv, "--cache_latents"]) == 0
    cached = json.loads(capsys.readouterr().out)["memory"]["caching_bytes"]
    assert main(["check", "--json", *argv, "--cache_latents", "--lowram"]) == 0
    assert json.loads(capsys.readouterr().out)["memory"]["caching_bytes"] == cached
    base = tmp_path / "base.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(1, 4, 3, 3)}, base)
    assert main(["check", "--json", *argv, "--cache_latents", "--lowram", "--base_weights", str(base)]) == 0
    assert json.loads(capsys.readouterr().out)["memory"]["caching_bytes"] == cached + 2 * unet_params

    assert main(["check", "--json", *argv, "--fp8_base"]) == 0
    fp8 = json.loads(capsys.readouterr().out)["memory"]["training_bytes"]["U-Net weights"]
    assert unet_params < fp8 < 2 * unet_params

    assert main(["check", *argv, "--gradient_checkpointing"]) == 0
    out = capsys.readouterr().out
    assert "estimated peak GPU memory: " in out and "gradient checkpointing, AdamW; 0.3M LoRA parameters" in out
    assert "    U-Net weights: " in out and "  training steps: " in out
