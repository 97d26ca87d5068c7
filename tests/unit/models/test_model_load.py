from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdxl_lora.config.errors import UserInputError
from sdxl_lora.config.schema import ModelConfig
from sdxl_lora.models.load import ModelLoadError, detect_source, load_sdxl


def test_load_diffusers_dir_gives_frozen_sdxl_parts(tiny_sdxl):
    m = tiny_sdxl
    assert isinstance(m.unet, UNet2DConditionModel)
    assert isinstance(m.vae, AutoencoderKL)
    assert isinstance(m.text_encoder_1, CLIPTextModel)
    assert isinstance(m.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(m.tokenizer_1, CLIPTokenizer) and isinstance(m.tokenizer_2, CLIPTokenizer)
    for model in (m.unet, m.vae, m.text_encoder_1, m.text_encoder_2):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert m.text_encoder_1.dtype == m.text_encoder_2.dtype == torch.float32
    assert m.unet.dtype == m.vae.dtype == torch.float32


def test_tokenizer_pads(tiny_sdxl):
    assert (m := tiny_sdxl).tokenizer_1.pad_token_id == m.tokenizer_1.eos_token_id == 49407
    assert m.tokenizer_2.pad_token == "!" and m.tokenizer_2.pad_token_id == 0


def test_training_noise_scheduler_is_sd_scripts_ddpm(tiny_sdxl):
    sched = tiny_sdxl.noise_scheduler
    assert isinstance(sched, DDPMScheduler)
    assert sched.config.num_train_timesteps == 1000
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.clip_sample is False
    expected = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(sched.betas.double(), expected, rtol=1e-6, atol=0)


def test_full_bf16_loads_every_part_straight_in_its_placement_dtype(tiny_sdxl_dir):
    m = load_sdxl(ModelConfig(pretrained_model_name_or_path=str(tiny_sdxl_dir), mixed_precision="bf16",
                              full_bf16=True, no_half_vae=True))
    assert m.unet.dtype == m.text_encoder_1.dtype == m.text_encoder_2.dtype == torch.bfloat16
    assert m.vae.dtype == torch.float32


def test_detect_source(tiny_sdxl_dir, tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    assert detect_source(str(tiny_sdxl_dir)) == "diffusers_dir"
    assert detect_source(str(ckpt)) == "single_file"
    assert detect_source("stabilityai/stable-diffusion-xl-base-1.0") == "hub_id"


@pytest.mark.parametrize("make_path, words", [
    (lambda tmp: tmp / "missing", "no such file or folder"),
    (lambda tmp: tmp, "no model_index.json"),
    (lambda tmp: tmp / "notes.txt", "not a checkpoint"),
])
def test_bad_source_is_one_line_naming_flag_and_path(tmp_path, make_path, words):
    (tmp_path / "notes.txt").write_text("hello")
    path = str(make_path(tmp_path))
    with pytest.raises(UserInputError) as err:
        load_sdxl(ModelConfig(pretrained_model_name_or_path=path))
    message = str(err.value)
    assert "\n" not in message and words in message
    assert message.startswith(f"--pretrained_model_name_or_path {path}:")


@pytest.mark.parametrize("source, words", [("model.safetensors", "truncated or corrupt"),
                                            ("owner/name", "not in the local Hugging Face cache")])
def test_empty_single_file_and_uncached_hub_id_are_one_line(tmp_path, monkeypatch, source, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=words) as err:
        load_sdxl(ModelConfig(pretrained_model_name_or_path=source))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"--pretrained_model_name_or_path {source}:")


def test_missing_component_names_its_subfolder(tiny_sdxl_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sdxl_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError) as err:
        load_sdxl(ModelConfig(pretrained_model_name_or_path=str(broken)))
    assert "cannot load vae/" in str(err.value) and "\n" not in str(err.value)
