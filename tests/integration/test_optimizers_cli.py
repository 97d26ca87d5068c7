"""The real CLI trains the tiny SDXL with optimizers other than AdamW, their arguments and schedules."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from helpers import make_images, train_keeping_result, write_toml


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("optim_data")
    images = make_images(tmp / "images", [(64, 64), (64, 64)])
    return write_toml(tmp / "dataset.toml", (
        "[[datasets]]\nresolution = 64\nbatch_size = 2\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"))


def _train(tiny_model_dir, dataset, out, *extra):
    argv = [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={dataset}",
            f"--output_dir={out}", "--network_module=networks.lora", "--network_dim=4", "--seed=1",
            "--max_data_loader_n_workers=0", "--max_train_steps=3", "--network_train_unet_only", *extra]
    code, result = train_keeping_result(argv)
    assert code == 0
    with safe_open(result.output_path, "pt") as f:
        meta = f.metadata()
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
    assert all(torch.isfinite(t).all() for t in ups)
    assert any(t.abs().sum() > 0 for t in ups), "LoRA up weights start at zero: some must have been trained"
    return meta


def test_adamw8bit_with_sd_scripts_arguments_and_a_restarting_schedule(tiny_model_dir, dataset, tmp_path):
    meta = _train(tiny_model_dir, dataset, tmp_path, "--optimizer_type=AdamW8Bit", "--learning_rate=1e-3",
                  "--optimizer_args", "betas=0.9,0.99", "weight_decay=0.01", "--lr_scheduler=cosine_with_restarts",
                  "--lr_scheduler_num_cycles=2", "--lr_warmup_steps=1")
    assert meta["ss_optimizer"] == "bitsandbytes.optim.adamw.AdamW8bit(betas=(0.9, 0.99),weight_decay=0.01)"
    assert meta["ss_lr_scheduler"] == "cosine_with_restarts"


def test_adafactor_with_relative_step_uses_the_adafactor_schedule(tiny_model_dir, dataset, tmp_path):
    meta = _train(tiny_model_dir, dataset, tmp_path, "--optimizer_type=Adafactor", "--learning_rate=1e-3",
                  "--optimizer_args", "scale_parameter=False", "warmup_init=False")
    assert meta["ss_optimizer"] == ("transformers.optimization.Adafactor"
                                    "(scale_parameter=False,warmup_init=False,relative_step=True)")
    assert meta["ss_lr_scheduler"] == "adafactor"


def test_noise_and_loss_options_reach_the_training_step(tiny_model_dir, dataset, tmp_path, monkeypatch):
    """The real loop with most step options on: every loss call sees timesteps in [100, 900), the configured
    loss and the v-prediction target; the run trains and the file is finite."""
    from sdxl_lora.train import loss as losses

    seen = []
    real = losses.training_loss

    def spy(pred, target, timesteps, **kwargs):
        seen.append((timesteps.clone(), kwargs["cfg"], float(kwargs["alphas_cumprod"][-1])))
        return real(pred, target, timesteps, **kwargs)

    monkeypatch.setattr(losses, "training_loss", spy)
    _train(tiny_model_dir, dataset, tmp_path, "--learning_rate=1e-3", "--noise_offset=0.05",
           "--adaptive_noise_scale=0.01", "--multires_noise_iterations=3", "--ip_noise_gamma=0.1",
           "--ip_noise_gamma_random_strength", "--min_timestep=100", "--max_timestep=900", "--loss_type=huber",
           "--huber_schedule=snr", "--min_snr_gamma=5", "--v_parameterization", "--zero_terminal_snr",
           "--debiased_estimation_loss")
    assert len(seen) == 3
    for timesteps, cfg, last_alpha in seen:
        assert ((timesteps >= 100) & (timesteps < 900)).all()
        assert cfg.loss_type == "huber" and cfg.v_parameterization and cfg.min_snr_gamma == 5
        assert last_alpha == 0.0  # zero terminal SNR


@pytest.mark.parametrize("optimizer", [
    # AdamW with a warmup schedule; no clipping (the fused pass clips per tensor).
    ["--learning_rate=1e-3", "--max_grad_norm=0", "--lr_scheduler=linear", "--lr_warmup_steps=1"],
    # Adafactor as sd-scripts' documentation pairs it with --fused_backward_pass (fixed LR, Adafactor's
    # own update clipping, no --max_grad_norm).
    ["--learning_rate=1e-3", "--max_grad_norm=0", "--optimizer_type=Adafactor", "--optimizer_args",
     "scale_parameter=False", "relative_step=False", "warmup_init=False"],
], ids=["AdamW", "Adafactor"])
def test_fused_backward_pass_trains_the_same_lora_as_the_plain_loop(tiny_model_dir, dataset, tmp_path, optimizer):
    """U-Net and text-encoder LoRA for 3 steps; every saved tensor is close to the plain loop's."""
    files = []
    for name, extra in (("plain", []), ("fused", ["--fused_backward_pass"])):
        argv = [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={dataset}",
                f"--output_dir={tmp_path / name}", "--network_module=networks.lora", "--network_dim=4", "--seed=1",
                "--max_data_loader_n_workers=0", "--max_train_steps=3", *optimizer, *extra]
        code, result = train_keeping_result(argv)
        assert code == 0
        files.append(result.output_path)
    with safe_open(files[0], "pt") as plain, safe_open(files[1], "pt") as fused:
        assert set(plain.keys()) == set(fused.keys())
        moved = 0
        for key in plain.keys():
            torch.testing.assert_close(fused.get_tensor(key), plain.get_tensor(key), rtol=1e-4, atol=1e-6)
            moved += key.endswith("lora_up.weight") and bool(plain.get_tensor(key).abs().sum() > 0)
        assert moved > 0
