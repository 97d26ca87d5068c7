"""Sampling from the in-memory tiny SDXL with a LoRA in it (spec 8.3): files named as sd-scripts names them, the
requested sizes, the LoRA visible in the pixels, fixed seeds reproducible, and training state left untouched."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_lora.config.schema import ModelConfig, NetworkConfig, SampleConfig
from sdxl_lora.sample import generate
from sdxl_lora.sample.generate import SampleSettings, generate_samples, own_prompts, sample_file_name
from sdxl_lora.sample.prompts import SamplePrompt

PROMPTS = [
    SamplePrompt("a photo of a cat", width=64, height=64, seed=1, steps=2, scale=1.0, sampler="euler_a", index=0),
    SamplePrompt("a drawing of a dog", negative_prompt="blurry", width=96, height=64, seed=2, steps=2, scale=5.0,
                 sampler="ddim", index=1),
]
TIMESTAMP = r"\d{14}"


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _modes(*models) -> list[bool]:
    return [m.training for model in models for m in model.modules()]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """The same two prompts sampled without LoRA, then twice with a LoRA whose up weights are non-zero, the
    models left as the training loop leaves them (U-Net in train mode, LoRA layers training)."""
    from sdxl_lora.models.load import load_sdxl
    from sdxl_lora.models.precision import place_models
    from sdxl_lora.network.build import build_network

    out = tmp_path_factory.mktemp("samples")
    model_cfg = ModelConfig(str(tiny_model_dir))
    models = load_sdxl(model_cfg, "cpu")
    place_models(models, model_cfg, "cpu")
    base = generate_samples(models, PROMPTS, SampleSettings(out / "base", "base"), epoch=0)

    handles = build_network(models.unet, models.text_encoder_1, models.text_encoder_2, NetworkConfig(network_dim=4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for component in ("unet", "te1", "te2"):
            for _, layer in handles.layers(component):
                up = layer.lora_B["default"].weight
                up.copy_(torch.randn(up.shape, generator=generator) * 0.5)
    models.unet.train()
    handles.train(True)
    modes_before = _modes(models.unet, models.text_encoder_1, models.text_encoder_2, models.vae)
    rng_before = torch.get_rng_state()
    settings = SampleSettings(out / "lora", "my_lora")
    real_build = generate.build_sampler

    def drawing_build(name, v_parameterization):  # stands in for any pipeline code drawing from the global RNG
        torch.rand(3)
        return real_build(name, v_parameterization)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generate, "build_sampler", drawing_build)
        started = time.perf_counter()
        lora = generate_samples(models, PROMPTS, settings, step=12)
        seconds = time.perf_counter() - started
    rng_after = torch.get_rng_state()
    again = generate_samples(models, PROMPTS, SampleSettings(out / "again"), epoch=3)
    return SimpleNamespace(models=models, base=base, lora=lora, again=again, rng=(rng_before, rng_after),
                           seconds=seconds,
                           modes=(modes_before, _modes(models.unet, models.text_encoder_1, models.text_encoder_2,
                                                       models.vae)))


def test_files_are_named_as_sd_scripts_names_them(runs, tmp_path_factory):
    assert [p.parent.name for p in runs.lora] == ["sample", "sample"]
    assert re.fullmatch(rf"base_e000000_00_{TIMESTAMP}_1\.png", runs.base[0].name)
    assert re.fullmatch(rf"my_lora_000012_00_{TIMESTAMP}_1\.png", runs.lora[0].name)
    assert re.fullmatch(rf"my_lora_000012_01_{TIMESTAMP}_2\.png", runs.lora[1].name)
    assert re.fullmatch(rf"e000003_01_{TIMESTAMP}_2\.png", runs.again[1].name)  # no --output_name: no prefix
    assert not list(runs.lora[0].parent.glob(".*"))  # no temporary file left behind


def test_images_are_pngs_of_the_requested_size_with_their_settings(runs):
    for path, prompt in zip(runs.lora, PROMPTS, strict=True):
        with Image.open(path) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (prompt.width, prompt.height), "RGB")
            assert f"Seed: {prompt.seed}" in image.text["parameters"]


def test_the_lora_changes_the_pixels(runs):
    for base, lora in zip(runs.base, runs.lora, strict=True):
        assert np.abs(_pixels(base) - _pixels(lora)).mean() > 1.0


def test_the_same_seed_gives_the_same_pixels(runs):
    for first, second in zip(runs.lora, runs.again, strict=True):
        assert np.array_equal(_pixels(first), _pixels(second))


def test_training_state_is_left_as_it_was(runs):
    before, after = runs.rng
    assert torch.equal(before, after)
    assert runs.modes[0] == runs.modes[1]
    assert any(runs.modes[0]) and not all(runs.modes[0])  # a real mix of train and eval flags was restored
    print(f"two 64-pixel samples, 2 steps each, on the tiny model: {runs.seconds:.2f} s")


def test_a_half_precision_vae_decodes_in_float32_and_stays_half(runs, tmp_path, monkeypatch):
    vae = runs.models.vae
    torch.nn.Module.to(vae, dtype=torch.float16)
    seen = []
    decode = vae.decode
    monkeypatch.setattr(vae, "decode", lambda z, *a, **k: (seen.append((z.dtype, vae.dtype)), decode(z, *a, **k))[1])
    prompt = SamplePrompt("x", width=64, height=64, seed=0, steps=1, scale=1.0)
    try:
        (path,) = generate_samples(runs.models, [prompt], SampleSettings(tmp_path), step=1)
        assert seen == [(torch.float32, torch.float32)]
        assert vae.dtype == torch.float16
        assert path.is_file()
    finally:
        torch.nn.Module.to(vae, dtype=torch.float32)


def test_prompts_are_shared_round_robin_between_processes():
    prompts = [SamplePrompt(str(i), index=i) for i in range(5)]
    assert [p.index for p in own_prompts(prompts, 0, 2)] == [0, 2, 4]
    assert [p.index for p in own_prompts(prompts, 1, 2)] == [1, 3]
    assert own_prompts(prompts[:1], 1, 2) == []
    assert generate_samples(None, prompts[:1], SampleSettings("unused", process_index=1, num_processes=2)) == []


def test_file_names_pinned():
    when = time.struct_time((2026, 12, 1, 13, 5, 9, 1, 335, 0))
    assert sample_file_name("my", 3, epoch=0, step=0, seed=None, when=when) == "my_e000000_03_20261201130509.png"
    assert sample_file_name(None, 12, epoch=None, step=250, seed=7, when=when) == "000250_12_20261201130509_7.png"
    assert sample_file_name("x", 0, epoch=15, step=99, seed=0, when=when) == "x_e000015_00_20261201130509_0.png"


def test_check_reads_the_prompts_only_when_sampling_is_scheduled(tmp_path, caplog):
    from sdxl_lora.config.errors import ConfigError
    from sdxl_lora.train.check import check_sample_prompts

    path = tmp_path / "p.txt"
    path.write_text("a cat --w 64 --q 1\n")
    scheduled = SimpleNamespace(sample=SampleConfig(prompts=path, at_first=True, sampler="heun"))
    assert check_sample_prompts(scheduled) == [SamplePrompt("a cat", width=64, sampler="heun")]
    assert "unknown option --q" in caplog.text
    assert check_sample_prompts(SimpleNamespace(sample=SampleConfig(prompts=path))) == []
    path.write_text("a cat --w big\n")
    with pytest.raises(ConfigError, match="p.txt:1: --w: expected an integer"):
        check_sample_prompts(scheduled)
