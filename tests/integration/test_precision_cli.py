"""Precision and text-length flags through the real CLI on the tiny model (CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from helpers import make_images, train_keeping_result, write_toml
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


def test_gradient_checkpointing_gives_the_same_training_and_is_active(base, monkeypatch):
    import torch.utils.checkpoint

    plain = _train([*base, "--max_train_steps=3"], monkeypatch)
    calls = []
    real_checkpoint = torch.utils.checkpoint.checkpoint

    def counting(function, *args, **kwargs):
        calls.append(function)
        return real_checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)  # diffusers looks it up at each call
    checkpointed = _train([*base, "--max_train_steps=3", "--gradient_checkpointing"], monkeypatch)
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-4)
    assert calls, "no U-Net block was checkpointed"
    assert checkpointed.models.unet.is_gradient_checkpointing and not plain.models.unet.is_gradient_checkpointing
    # Text encoders train here (no --network_train_unet_only), so they checkpoint too (transformers' flag).
    assert checkpointed.models.text_encoder_1.is_gradient_checkpointing
    assert checkpointed.models.text_encoder_2.is_gradient_checkpointing


def test_gradient_accumulation_steps_after_every_second_batch_and_at_epoch_end(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    """3 images at batch 1 = 3 batches per epoch; with accumulation 2 an epoch has ceil(3/2) = 2 optimizer steps:
    after batch 2 and after batch 3 (the epoch's end). Without accumulation they would come after batches 1, 2.
    The per-component learning rates given on the command line reach the optimizer."""
    images = make_images(tmp_path / "img3", [(64, 64)] * 3)
    toml = write_toml(tmp_path / "ds3.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = 1\n  [[datasets.subsets]]\n  image_dir = '{images}'\n"
        "  caption_extension = '.txt'\n"))
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen = _record_unet_inputs(monkeypatch)
    steps = []

    def on_step(optimizer, args, kwargs):
        steps.append((len(seen["sample"]), {g.get("name"): g["lr"] for g in optimizer.param_groups}))

    handle = register_optimizer_step_pre_hook(on_step)
    try:
        result = _train([f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={toml}",
                         f"--output_dir={tmp_path / 'out'}", "--output_name=p", "--network_module=networks.lora",
                         "--network_dim=2", "--max_train_steps=2", "--gradient_accumulation_steps=2",
                         "--learning_rate=1e-3", "--unet_lr=3e-4", "--text_encoder_lr", "1e-5", "2e-5", "--seed=0",
                         "--max_data_loader_n_workers=0"], monkeypatch)
    finally:
        handle.remove()
    lrs = {"textencoder1": 1e-5, "textencoder2": 2e-5, "unet": 3e-4}  # group names as sd-scripts logs them
    assert steps == [(2, lrs), (3, lrs)]
    assert (result.steps, result.epochs, len(result.losses)) == (2, 1, 2)
    with safe_open(tmp_path / "out" / "p.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_gradient_accumulation_steps"] == "2" and meta["ss_steps"] == "2"


def test_non_finite_loss_stops_with_a_diagnosis(base, monkeypatch, capsys, tmp_path):
    from sdxl_lora.train import loss as losses

    real_loss = losses.training_loss
    monkeypatch.setattr(losses, "training_loss", lambda *args, **kwargs: real_loss(*args, **kwargs) * float("nan"))
    assert main([*base, "--mixed_precision=no"]) == 1
    err = capsys.readouterr().err
    assert "loss is not finite at step 1 " in err and "img0" in err and "--learning_rate" in err
    assert not (tmp_path / "out" / "p.safetensors").exists()


@pytest.fixture
def odd_size_dataset(tmp_path):
    """One 1365 x 2999 image: sizes that bfloat16 cannot hold (it rounds them to 1368 and 2992)."""
    from PIL import Image

    folder = tmp_path / "odd"
    folder.mkdir()
    Image.new("RGB", (1365, 2999), (120, 60, 30)).save(folder / "tall.png")
    (folder / "tall.txt").write_text("a tall picture", encoding="utf-8")
    return write_toml(tmp_path / "odd.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = 1\n  [[datasets.subsets]]\n  image_dir = '{folder}'\n"
        "  caption_extension = '.txt'\n"))


def _record_unet_inputs(monkeypatch) -> dict:
    """What the U-Net is called with, what its size embedding (add_time_proj) receives, and the loss target."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import Timesteps

    from sdxl_lora.train import loss as losses

    seen = {"time_ids": [], "embedded": [], "sample": [], "target": []}
    real_forward, real_proj, real_loss = UNet2DConditionModel.forward, Timesteps.forward, losses.training_loss

    def forward(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None, **kwargs):
        seen["sample"].append(sample.dtype)
        seen["time_ids"].append(added_cond_kwargs["time_ids"].detach().clone())
        return real_forward(self, sample, timestep, encoder_hidden_states, *args,
                            added_cond_kwargs=added_cond_kwargs, **kwargs)

    def proj(self, timesteps):
        seen["embedded"].append(timesteps.detach().clone())
        return real_proj(self, timesteps)

    def training_loss(pred, target, timesteps, **kwargs):
        seen["target"].append(target.dtype)
        return real_loss(pred, target, timesteps, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)
    monkeypatch.setattr(Timesteps, "forward", proj)
    monkeypatch.setattr(losses, "training_loss", training_loss)
    return seen


def test_size_conditioning_reaches_the_unet_exactly_under_bf16(base, odd_size_dataset, monkeypatch):
    """Spec 5.6: the six integers are embedded; only their embedding is cast. [orig_h, orig_w] = [2999, 1365]."""
    seen = _record_unet_inputs(monkeypatch)
    argv = [a for a in base if not a.startswith("--dataset_config")]
    _train([*argv, f"--dataset_config={odd_size_dataset}", "--mixed_precision=bf16", "--max_train_steps=1"],
           monkeypatch)
    (time_ids,) = seen["time_ids"]
    assert time_ids.dtype == torch.float32 and time_ids[0, :2].tolist() == [2999.0, 1365.0]
    assert seen["sample"] == [torch.bfloat16]
    size_inputs = [t for t in seen["embedded"] if t.numel() == 6]
    assert size_inputs and all(t[:2].tolist() == [2999.0, 1365.0] for t in size_inputs)


def test_no_half_vae_draws_float32_noise_as_the_loss_target(base, monkeypatch):
    """Spec 5.2/5.3: noise is drawn like the float32 latents and is the target; the U-Net gets bf16 input."""
    seen = _record_unet_inputs(monkeypatch)
    _train([*base, "--mixed_precision=bf16", "--no_half_vae"], monkeypatch)
    assert seen["target"] == [torch.float32, torch.float32]
    assert seen["sample"] == [torch.bfloat16, torch.bfloat16]


def test_half_vae_draws_noise_in_the_weight_dtype(base, monkeypatch):
    """Without --no_half_vae the latents are bf16, and the noise drawn like them too (as sd-scripts)."""
    seen = _record_unet_inputs(monkeypatch)
    _train([*base, "--mixed_precision=bf16"], monkeypatch)
    assert seen["target"] == [torch.bfloat16, torch.bfloat16]
