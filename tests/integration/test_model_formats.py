"""The real CLI trains from every model format a user may have: the same tiny SDXL as a diffusers folder, a
single .safetensors file and a cached hub id gives the same losses; a file that is not SDXL is one line."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from helpers import train_keeping_result
from sdxl_lora.cli import main
from sdxl_lora.models.single_file import write_single_file

REVISION = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One random 64x64 image with a caption, and a dataset TOML naming it."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("formats")
    images = tmp / "images"
    images.mkdir()
    pixels = torch.randint(0, 255, (64, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(images / "img.png")
    (images / "img.txt").write_text("a test picture\n", encoding="utf-8")
    toml = tmp / "dataset.toml"
    toml.write_text("[general]\nenable_bucket = false\n[[datasets]]\nresolution = 64\nbatch_size = 1\n"
                    f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n",
                    encoding="utf-8")
    return toml


def _train(model, dataset, out):
    """Two steps of the real CLI (the second one after an update); returns the run's per-step losses."""
    code, result = train_keeping_result([
        f"--pretrained_model_name_or_path={model}", f"--dataset_config={dataset}", f"--output_dir={out}",
        "--output_name=lora", "--network_module=networks.lora", "--network_dim=4", "--network_alpha=2",
        "--learning_rate=1e-3", "--optimizer_type=AdamW", "--seed=3", "--max_train_steps=2",
        "--max_data_loader_n_workers=0", "--network_train_unet_only"])
    assert code == 0
    assert (out / "lora.safetensors").is_file()
    return result.losses


@pytest.fixture(scope="module")
def folder_losses(tiny_model_dir, dataset, tmp_path_factory):
    losses = _train(tiny_model_dir, dataset, tmp_path_factory.mktemp("out_folder"))
    assert len(losses) == 2
    return losses


def test_single_file_trains_exactly_like_the_folder(tiny_model_dir, dataset, folder_losses, tmp_path, monkeypatch):
    model = write_single_file(tiny_model_dir, tmp_path / "tiny.safetensors")
    assert _train(model, dataset, tmp_path / "out") == folder_losses


def test_cached_hub_id_trains_exactly_like_the_folder(tiny_model_dir, dataset, folder_losses, tmp_path, monkeypatch):
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-sdxl"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    assert _train("someone/tiny-sdxl", dataset, tmp_path / "out") == folder_losses


@pytest.mark.parametrize("keys, words", [
    (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"], "a LoRA file"),
    (["cond_stage_model.transformer.text_model.final_layer_norm.weight", "model.diffusion_model.out.2.weight"],
     "an SD 1.x checkpoint"),
])
def test_cli_names_a_wrong_file_in_one_line(tmp_path, dataset, capsys, keys, words):
    path = tmp_path / "wrong.safetensors"
    save_file({k: torch.zeros(1) for k in keys}, path)
    code = main([f"--pretrained_model_name_or_path={path}", f"--dataset_config={dataset}",
                 f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora", "--seed=1"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert "--pretrained_model_name_or_path" in lines[0] and str(path) in lines[0] and words in lines[0]
