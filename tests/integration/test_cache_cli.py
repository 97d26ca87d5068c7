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
        dist = real(self, images, *args, **kwargs).latent_dist
        mean = dist.mean.clone()
        mean[when(self, images)] = float("nan")
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, std=dist.std))

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


def _record_latents(monkeypatch):
    """Record what the latent source hands the step loop."""
    from sdxl_lora.data import sources

    seen = []
    for cls in (sources.VaeLatents, sources.CachedLatents):
        def latents(self, batch, real=cls.latents):
            out = real(self, batch)
            seen.append((list(batch.latent_keys), out.clone()))
            return out
        monkeypatch.setattr(cls, "latents", latents)
    return seen


def test_cached_and_uncached_runs_train_the_same_first_step(tmp_path, tiny_model_dir, monkeypatch):
    from helpers import train_keeping_result

    images = make_images(tmp_path / "img", [(64, 64), (64, 64), (64, 64), (64, 64)])
    toml = write_toml(tmp_path / "ds.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = 2\n  [[datasets.subsets]]\n"
        f"  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n  flip_aug = true\n"))
    runs = {}
    for name, extra in {"live": [], "memory": ["--cache_latents", "--vae_batch_size=1"],
                        "disk": ["--cache_latents_to_disk", "--vae_batch_size=3"]}.items():
        seen = _record_latents(monkeypatch)
        code, result = train_keeping_result(_argv(tiny_model_dir, toml, tmp_path / name, "--max_train_steps=1",
                                                  *extra))
        assert code == 0 and len(seen) == 1
        runs[name] = (seen[0][0], seen[0][1], result.losses[0])
        monkeypatch.undo()
    keys, latents, loss = runs["live"]

    for name in ("memory", "disk"):
        assert runs[name][0] == keys
        torch.testing.assert_close(runs[name][1], latents, rtol=1e-5, atol=1e-6)
        assert runs[name][2] == pytest.approx(loss, rel=1e-5)
    assert len(list((images / ".sdxl-lora-cache" / "latents").rglob("*.safetensors"))) == 8  # 4 images x 2 flips


SLOW_CLI = """
import sys, time
from diffusers import AutoencoderKL
real = AutoencoderKL.encode
def slow(self, *args, **kwargs):
    time.sleep(0.5)
    return real(self, *args, **kwargs)
AutoencoderKL.encode = slow
from sdxl_lora.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_caching_killed_halfway_resumes_without_redoing_or_corrupt_files(tmp_path, tiny_model_dir, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from diffusers import AutoencoderKL

    from sdxl_lora.data.cache_files import read_entry

    images, toml = _dataset(tmp_path, sizes=[(64, 64)] * 12)
    argv = _argv(tiny_model_dir, toml, tmp_path / "out", "--cache_latents_to_disk", "--vae_batch_size=1",
                 "--max_train_steps=1")
    cache = images / ".sdxl-lora-cache" / "latents"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list(cache.rglob("*.safetensors"))) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(list(cache.rglob("*.safetensors")))
    assert 4 <= done < 12, done

    encoded = []
    real = AutoencoderKL.encode

    def counting(self, x, *args, **kwargs):
        encoded.append(x.shape[0])
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counting)
    assert main(argv) == 0
    assert sum(encoded) == 12 - done
    entries = list(cache.rglob("*.safetensors"))
    assert len(entries) == 12  # a write cut by the kill can only leave a hidden .tmp file, never an entry
    for entry in entries:
        assert read_entry(entry)["latents"].shape == (4, 8, 8)


def _record_conditioning(monkeypatch):
    from sdxl_lora.data import sources

    seen = []
    for cls in (sources.EncoderText, sources.CachedText):
        def conditioning(self, batch, real=cls.conditioning):
            context, pooled = real(self, batch)
            seen.append((list(batch.captions), context.detach().float().clone(), pooled.detach().float().clone()))
            return context, pooled
        monkeypatch.setattr(cls, "conditioning", conditioning)
    return seen


def test_cached_text_encoder_outputs_train_like_the_live_encoders(tmp_path, tiny_model_dir, monkeypatch):
    from helpers import train_keeping_result

    images, toml = _dataset(tmp_path, sizes=[(64, 64)] * 4)
    runs = {}
    for name, extra in {"live": [], "memory": ["--cache_text_encoder_outputs"],
                        "disk": ["--cache_text_encoder_outputs_to_disk", "--cache_latents_to_disk"]}.items():
        seen = _record_conditioning(monkeypatch)
        code, result = train_keeping_result(_argv(tiny_model_dir, toml, tmp_path / name, "--max_train_steps=1",
                                                  "--network_train_unet_only", *extra))
        assert code == 0 and len(seen) == 1
        runs[name] = (*seen[0], result.losses[0])
        monkeypatch.undo()
    captions, context, pooled, loss = runs["live"]
    for name in ("memory", "disk"):
        assert runs[name][0] == captions
        torch.testing.assert_close(runs[name][1], context, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(runs[name][2], pooled, rtol=1e-5, atol=1e-6)
        assert runs[name][3] == pytest.approx(loss, rel=1e-5)
    assert len(list((images / ".sdxl-lora-cache" / "text").rglob("*.safetensors"))) == 4


def test_text_cache_with_caption_shuffling_trains_with_cached_variants(tmp_path, tiny_model_dir, monkeypatch):
    from helpers import train_keeping_result

    images = make_images(tmp_path / "img", [(64, 64)] * 3)
    for i in range(3):
        (images / f"img{i:02d}.txt").write_text(f"sks, photo {i}, red, round, shiny, toy", encoding="utf-8")
    toml = write_toml(tmp_path / "ds.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = 1\n  [[datasets.subsets]]\n"
        f"  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n  shuffle_caption = true\n"
        "  keep_tokens = 1\n  caption_dropout_rate = 0.1\n  caption_tag_dropout_rate = 0.1\n"))
    seen = _record_conditioning(monkeypatch)
    code, _ = train_keeping_result(_argv(tiny_model_dir, toml, tmp_path / "out", "--max_train_steps=9",
                                         "--network_train_unet_only", "--cache_text_encoder_outputs_to_disk"))
    assert code == 0 and len(seen) == 9
    entries = list((images / ".sdxl-lora-cache" / "text").rglob("*.safetensors"))
    assert 3 < len(entries) <= 3 * 4  # up to 4 variants per image, each cached once
    trained = {c for captions, _, _ in seen for c in captions}
    assert len(trained) > 3 and all(c == "" or c.startswith("sks, ") for c in trained)


def test_text_cache_refuses_token_warmup_and_trained_text_encoders(tmp_path, tiny_model_dir, capsys):
    images = make_images(tmp_path / "img", [(64, 64)])
    toml = write_toml(tmp_path / "ds.toml", (
        f"[[datasets]]\nresolution = 64\n  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n"
        "  caption_extension = '.txt'\n  token_warmup_step = 5\n"))
    code = main(_argv(tiny_model_dir, toml, tmp_path / "out", "--cache_text_encoder_outputs"))
    err = capsys.readouterr().err
    assert code == 2
    assert "--cache_text_encoder_outputs needs --network_train_unet_only" in err
    assert "subsets[0].token_warmup_step" in err and "--cache_text_encoder_outputs" in err
