"""The real CLI trains the tiny SDXL and writes a kohya-format LoRA that diffusers loads."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open

from helpers import make_images, train_keeping_result, write_toml
from sdxl_lora.cli import main

SGM_PREFIXES = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_",
                "lora_te1_text_model_encoder_layers_", "lora_te2_text_model_encoder_layers_")


def _dataset(tmp_path, sizes, batch_size=2, **subset):
    images = make_images(tmp_path / "images", sizes)
    extra = "".join(f"  {k} = {v}\n" for k, v in subset.items())
    return write_toml(tmp_path / "dataset.toml", (
        "[general]\nenable_bucket = true\nmin_bucket_reso = 32\nmax_bucket_reso = 128\nbucket_reso_steps = 32\n"
        f"[[datasets]]\nresolution = 64\nbatch_size = {batch_size}\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n{extra}"))


def _args(model, toml, out, *extra):
    return [f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}", f"--output_dir={out}",
            "--output_name=tiny_lora", "--network_module=networks.lora", "--network_dim", "4",
            "--network_alpha=2", "--learning_rate=1e-3", "--optimizer_type=AdamW", "--seed=1",
            "--max_data_loader_n_workers=0", *extra]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One short in-process run of the real CLI path, keeping the trained models for comparison."""
    tmp = tmp_path_factory.mktemp("train")
    toml = _dataset(tmp, [(64, 64), (96, 64), (64, 96), (64, 64)])
    code, result = train_keeping_result(_args(tiny_model_dir, toml, tmp / "out", "--max_train_steps=4",
                                              "--lr_scheduler=cosine"))
    assert code == 0
    return result


def test_writes_kohya_file_with_sgm_names(trained):
    path = trained.output_path
    assert path.name == "tiny_lora.safetensors"
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        alpha = f.get_tensor(next(k for k in keys if k.endswith(".alpha")))
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    for m in modules:
        assert m.startswith(SGM_PREFIXES), m
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= keys
    assert not any("down_blocks" in k or "up_blocks" in k or "mid_block" in k for k in keys)
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert alpha.dtype == torch.float32 and alpha.ndim == 0 and alpha.item() == 2.0
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_steps"] == "4" and re.fullmatch(r"[0-9a-f]{64}", meta["sshs_model_hash"])


def test_diffusers_loads_the_file_and_reproduces_the_trained_unet(trained, tiny_model_dir, caplog):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir, local_files_only=True)
    with caplog.at_level("WARNING"):
        pipe.load_lora_weights(str(trained.output_path))
    assert not [r for r in caplog.records if "unexpected" in r.getMessage().lower()
                or "missing" in r.getMessage().lower()]
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 12)
    t = torch.tensor([10, 700])
    ctx = torch.randn(2, 77, 96)
    cond = {"text_embeds": torch.randn(2, 64), "time_ids": torch.tensor([[64.0, 96, 0, 0, 64, 96]] * 2)}
    trained_unet = trained.models.unet.eval()
    with torch.no_grad():
        ours = trained_unet(x, t, ctx, added_cond_kwargs=cond).sample
        theirs = pipe.unet(x, t, ctx, added_cond_kwargs=cond).sample
        base = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir, local_files_only=True).unet(
            x, t, ctx, added_cond_kwargs=cond).sample
    assert not torch.allclose(ours, base, atol=1e-6), "the LoRA should change the output"
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    ids = pipe.tokenizer(["a test"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        te_ours = trained.models.text_encoder_1(ids, output_hidden_states=True).hidden_states[-2]
        te_theirs = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(te_theirs, te_ours, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_loss_falls_on_one_image(tiny_model_dir, tmp_path, capsys):
    """A random tiny U-Net starts with an error of about 0.13 above the noise variance; the LoRA removes it.
    (Seeded, so the numbers are the same on every run: about 1.13 -> 1.00.)"""
    toml = _dataset(tmp_path, [(64, 64)], batch_size=4, num_repeats=4)
    code = main(_args(tiny_model_dir, toml, tmp_path / "out", "--max_train_steps=60", "--network_train_unet_only",
                      "--cache_latents", "--learning_rate=1e-2", "--network_dim=8", "--network_alpha=8"))
    assert code == 0
    out = capsys.readouterr().out
    first, last = map(float, re.search(r"first ([\d.]+) -> last ([\d.]+)", out).groups())
    assert last < 0.93 * first, out


def test_text_encoder_only_writes_only_text_encoder_modules(tiny_model_dir, tmp_path):
    toml = _dataset(tmp_path, [(64, 64), (64, 64)])
    code = main(_args(tiny_model_dir, toml, tmp_path / "out", "--max_train_steps=2",
                      "--network_train_text_encoder_only"))
    assert code == 0
    with safe_open(tmp_path / "out" / "tiny_lora.safetensors", "pt") as f:
        prefixes = {k.split("_text_model")[0] if k.startswith("lora_te") else "unet" for k in f.keys()}
    assert prefixes == {"lora_te1", "lora_te2"}
