"""Precision and text-length flags through the real CLI on the tiny model (CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from conftest import make_images, train_keeping_result, write_toml
from sdxl_lora.cli import main


@pytest.fixture
def base(tmp_path, tiny_model_dir):
    images = make_images(tmp_path / "img", [(64, 64), (64, 64)])
    toml = write_toml(tmp_path / "ds.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = 2\n  [[datasets.subsets]]\n  image_dir = '{images}'\n"
        "  caption_extension = '.txt'\n"))
    return [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={toml}",
            f"--output_dir={tmp_path / 'out'}", "--output_name=p", "--network_module=networks.lora",
            "--network_dim=2", "--max_train_steps=2", "--learning_rate=1e-3", "--seed=0",
            "--max_data_loader_n_workers=0"]


def _train(argv, monkeypatch):
    code, result = train_keeping_result(argv)
    assert code == 0
    return result


def test_fp8_base_trains_with_float8_frozen_weights(base, monkeypatch):
    result = _train([*base, "--mixed_precision=bf16", "--fp8_base"], monkeypatch)
    unet = result.models.unet
    assert unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.base_layer.weight.dtype \
        == torch.float8_e4m3fn
    lora = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.lora_A["default"].weight
    assert lora.dtype == torch.float32
    te_fc1 = result.models.text_encoder_2.text_model.encoder.layers[0].mlp.fc1.base_layer.weight
    assert te_fc1.dtype == torch.float8_e4m3fn
    assert all(math.isfinite(x) for x in result.losses)


def test_full_bf16_saves_bf16_network(base, monkeypatch, tmp_path):
    result = _train([*base, "--mixed_precision=bf16", "--full_bf16"], monkeypatch)
    assert result.models.unet.dtype == torch.bfloat16
    with safe_open(tmp_path / "out" / "p.safetensors", "pt") as f:
        key = next(k for k in f.keys() if k.endswith("lora_down.weight"))
        assert f.get_tensor(key).dtype == torch.bfloat16
        assert f.metadata()["ss_mixed_precision"] == "bf16"


def test_long_captions_and_clip_skip_recorded(base, monkeypatch, tmp_path):
    result = _train([*base, "--max_token_length=225", "--clip_skip=2", "--save_precision=fp16"], monkeypatch)
    assert all(math.isfinite(x) for x in result.losses)
    with safe_open(tmp_path / "out" / "p.safetensors", "pt") as f:
        meta = f.metadata()
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    assert meta["ss_max_token_length"] == "225" and meta["ss_clip_skip"] == "2"
    assert meta["modelspec.encoder_layer"] == "2"


def test_no_half_vae_keeps_vae_float32(base, monkeypatch):
    result = _train([*base, "--mixed_precision=bf16", "--no_half_vae"], monkeypatch)
    assert result.models.vae.dtype == torch.float32
    assert result.models.unet.dtype == torch.bfloat16


def test_gradient_checkpointing_gives_the_same_training(base, monkeypatch):
    plain = _train([*base, "--max_train_steps=3"], monkeypatch)
    checkpointed = _train([*base, "--max_train_steps=3", "--gradient_checkpointing"], monkeypatch)
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-4)


def test_gradient_accumulation_counts_optimizer_steps(base, monkeypatch, tmp_path):
    result = _train([*base, "--max_train_steps=2", "--gradient_accumulation_steps=2",
                     "--lr_scheduler=cosine", "--lr_warmup_steps=1", "--lr_scheduler=constant_with_warmup"],
                    monkeypatch)
    assert result.steps == 2 and len(result.losses) == 2
    with safe_open(tmp_path / "out" / "p.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_gradient_accumulation_steps"] == "2" and meta["ss_steps"] == "2"


def test_non_finite_loss_stops_with_a_diagnosis(base, monkeypatch, capsys, tmp_path):
    from sdxl_lora.train import loss as losses

    monkeypatch.setattr(losses, "weighted_mean", lambda per_sample, weights: per_sample.mean() * float("nan"))
    assert main([*base, "--mixed_precision=no"]) == 1
    err = capsys.readouterr().err
    assert "loss is not finite at step 1 " in err and "img0" in err and "--learning_rate" in err
    assert not (tmp_path / "out" / "p.safetensors").exists()
