"""GPU tier: the same CLI runs on CUDA with the precision flags that matter there. Skipped without CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import make_images, train_keeping_result, write_toml

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("flags", [
    ["--mixed_precision=bf16", "--fp8_base", "--lowram"],
    ["--mixed_precision=fp16", "--no_half_vae", "--gradient_checkpointing"],
    ["--mixed_precision=bf16", "--full_bf16", "--cache_latents", "--highvram"],
])
def test_trains_on_cuda(flags, tmp_path, tiny_model_dir):
    images = make_images(tmp_path / "img", [(64, 64), (96, 64)])
    toml = write_toml(tmp_path / "ds.toml", (
        "[[datasets]]\nresolution = 64\nbatch_size = 1\nenable_bucket = true\nbucket_reso_steps = 32\n"
        f"min_bucket_reso = 32\nmax_bucket_reso = 128\n  [[datasets.subsets]]\n  image_dir = '{images}'\n"
        "  caption_extension = '.txt'\n"))
    code, result = train_keeping_result([
        f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={toml}",
        f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora", "--network_dim=4",
        "--max_train_steps=4", "--learning_rate=1e-3", "--seed=0", "--max_data_loader_n_workers=0", *flags])
    assert code == 0
    assert all(math.isfinite(x) for x in result.losses)
    assert next(result.models.unet.parameters()).is_cuda
