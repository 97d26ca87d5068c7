"""Latent and text-encoder caches through the real CLI on the tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from helpers import make_images, write_toml
from sdxl_lora.cli import main


def _dataset(tmp_path, sizes=((64, 64), (64, 64)), batch_size=2):
    images = make_images(tmp_path / "img", list(sizes))
    return images, write_toml(tmp_path / "ds.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = {batch_size}\n  [[datasets.subsets]]\n"
        f"  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"))


def _argv(model, toml, out, *extra):
    return [f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}", f"--output_dir={out}",
            "--output_name=c", "--network_module=networks.lora", "--network_dim=2", "--max_train_steps=2",
            "--learning_rate=1e-3", "--seed=3", "--max_data_loader_n_workers=0", *extra]


def _nan_vae(monkeypatch, when):
    """Patch the VAE so that images for which when(vae, images) is true encode to NaN."""
    from diffusers import AutoencoderKL

    real = AutoencoderKL.encode

    def encode(self, images, *args, **kwargs):
        out = real(self, images, *args, **kwargs)
        latents = out.latent_dist.sample()
        latents[when(self, images)] = float("nan")
        return SimpleNamespace(latent_dist=SimpleNamespace(sample=lambda generator=None: latents))

    monkeypatch.setattr(AutoencoderKL, "encode", encode)


@pytest.mark.parametrize("cache", [[], ["--cache_latents"]])
def test_latents_never_finite_stop_with_one_line_naming_the_file(cache, tmp_path, tiny_model_dir, capsys,
                                                                   monkeypatch):
    images, toml = _dataset(tmp_path)
    _nan_vae(monkeypatch, lambda vae, x: torch.ones(x.shape[0], dtype=torch.bool))
    code = main(_argv(tiny_model_dir, toml, tmp_path / "out", *cache))
    err = capsys.readouterr().err
    lines = [line.split("sdxl-lora: ", 1)[1] for line in err.splitlines() if "sdxl-lora: " in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {images / 'img0'}")
    assert "non-finite" in lines[0] and not (tmp_path / "out" / "c.safetensors").exists()
