"""The U-Net is loaded and reaches the training device only after latents and text outputs are cached and the
frozen VAE and text encoders are released (issue 12): caching holds only the VAE and the text encoders, the host
never holds all four models, and LoRA is built on the placed U-Net."""

from __future__ import annotations

from helpers import make_images, train_keeping_result, write_toml
from sdxl_lora.models import load, precision
from sdxl_lora.network import build
from sdxl_lora.train import loop, setup


def test_caching_runs_before_the_unet_is_placed_and_lora_after(tiny_model_dir, tmp_path, monkeypatch):
    images = make_images(tmp_path / "images", [(64, 64)] * 2)
    toml = write_toml(tmp_path / "dataset.toml", (
        "[[datasets]]\nresolution = 64\nbatch_size = 1\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"))
    events = []

    def recorded(name, real):
        def call(*args, **kwargs):
            events.append(name)
            return real(*args, **kwargs)
        return call

    deferred = []
    real_place = precision.place_models

    def place(*args, **kwargs):
        deferred.append(kwargs.get("defer_unet", False))
        return real_place(*args, **kwargs)

    monkeypatch.setattr(precision, "place_models", place)
    monkeypatch.setattr(precision, "place_unet", recorded("place_unet", precision.place_unet))
    monkeypatch.setattr(loop, "latent_source_for", recorded("latents", loop.latent_source_for))
    monkeypatch.setattr(loop, "text_cache_for", recorded("text", loop.text_cache_for))
    monkeypatch.setattr(build, "build_network", recorded("lora", build.build_network))
    monkeypatch.setattr(load, "load_unet", recorded("load_unet", load.load_unet))
    monkeypatch.setattr(setup, "release", recorded("release", setup.release))
    code, result = train_keeping_result([
        f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={toml}",
        f"--output_dir={tmp_path / 'out'}", "--output_name=lora", "--network_module=networks.lora",
        "--network_dim=4", "--max_train_steps=1", "--max_data_loader_n_workers=0", "--network_train_unet_only",
        "--cache_latents", "--cache_text_encoder_outputs"])
    assert code == 0
    assert deferred == [True]
    # the VAE is released in latent caching, the encoders after text caching; then the U-Net is loaded
    assert events == ["latents", "release", "text", "release", "load_unet", "place_unet", "lora"]
