"""Diffusers folders holding fp16 weight variants (`*.fp16.safetensors`), as hub snapshots often do."""

from __future__ import annotations

import shutil

import pytest
import torch

from sdxl_lora.config.schema import ModelConfig
from sdxl_lora.models.folder import load_component
from sdxl_lora.models.load import load_sdxl


@pytest.fixture(scope="module")
def with_fp16_unet(tiny_sdxl_dir, tmp_path_factory):
    """The tiny folder plus a U-Net fp16 variant whose values differ (scaled by 2), so we can tell which loaded."""
    root = tmp_path_factory.mktemp("variants") / "tiny"
    shutil.copytree(tiny_sdxl_dir, root)
    unet = load_component(root, "unet", torch.float32)
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(2)
    unet.half().save_pretrained(root / "unet", variant="fp16")
    return root


def test_fp16_variant_is_used_for_fp16_training(with_fp16_unet, tiny_sdxl):
    models = load_sdxl(ModelConfig(pretrained_model_name_or_path=str(with_fp16_unet), mixed_precision="fp16"))
    assert torch.equal(models.unet.conv_in.weight, (tiny_sdxl.unet.conv_in.weight * 2).half())


def test_plain_weights_are_used_otherwise(with_fp16_unet, tiny_sdxl):
    models = load_sdxl(ModelConfig(pretrained_model_name_or_path=str(with_fp16_unet), mixed_precision="bf16"))
    assert torch.equal(models.unet.conv_in.weight, tiny_sdxl.unet.conv_in.weight.to(torch.bfloat16))


def test_a_folder_with_only_fp16_weights_loads_and_keeps_fp16_when_asked(with_fp16_unet, tiny_sdxl, tmp_path):
    root = tmp_path / "only_fp16"
    shutil.copytree(with_fp16_unet, root)
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet = load_component(root, "unet", None)
    assert unet.dtype == torch.float16
    assert torch.equal(unet.conv_in.weight, (tiny_sdxl.unet.conv_in.weight * 2).half())
