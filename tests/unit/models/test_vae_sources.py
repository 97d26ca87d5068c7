"""--vae: a full SDXL file, a VAE-only file in LDM or diffusers names, or a diffusers folder with or without vae/."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sdxl_lora.config.schema import ModelConfig
from sdxl_lora.models.errors import ModelLoadError
from sdxl_lora.models.load import load_sdxl, load_vae
from sdxl_lora.models.single_file import write_single_file


@pytest.fixture(scope="module")
def sources(tiny_sdxl_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    full = write_single_file(tiny_sdxl_dir, out / "full.safetensors")
    with safe_open(full, "pt") as f:
        vae = {k.removeprefix("first_stage_model."): f.get_tensor(k) for k in f.keys()
               if k.startswith("first_stage_model.")}
        metadata = f.metadata()  # the tiny VAE's 8 norm groups are in the recorded configs, not in any shape
    save_file(vae, out / "ldm_vae.safetensors", metadata=metadata)
    torch.save({"state_dict": vae, **metadata}, out / "ldm_vae.ckpt")
    return {"full checkpoint": full, "LDM VAE-only": out / "ldm_vae.safetensors",
            "LDM VAE-only ckpt": out / "ldm_vae.ckpt",
            "diffusers weights file": tiny_sdxl_dir / "vae" / "diffusion_pytorch_model.safetensors",
            "diffusers folder": tiny_sdxl_dir, "vae subfolder": tiny_sdxl_dir / "vae"}


@pytest.mark.parametrize("kind", ["full checkpoint", "LDM VAE-only", "LDM VAE-only ckpt", "diffusers weights file",
                                  "diffusers folder", "vae subfolder"])
def test_every_vae_source_gives_the_same_vae(tiny_sdxl, sources, kind):
    vae = load_vae(str(sources[kind]), torch.float16)
    theirs = tiny_sdxl.vae.state_dict()
    assert vae.state_dict().keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k].half()) for k, v in vae.state_dict().items())
    assert vae.config.norm_num_groups == 8


def test_vae_flag_replaces_the_vae_in_the_vae_dtype(tiny_sdxl_dir, sources):
    models = load_sdxl(ModelConfig(pretrained_model_name_or_path=str(tiny_sdxl_dir), vae=str(sources["LDM VAE-only"]),
                                   mixed_precision="fp16", no_half_vae=True))
    assert models.vae.dtype == torch.float32 and models.unet.dtype == torch.float16


@pytest.mark.parametrize("spec, words", [("missing.safetensors", "no such file or folder"),
                                         ("notes.txt", "not a checkpoint")])
def test_bad_vae_is_one_line_naming_the_flag(tmp_path, monkeypatch, spec, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError) as err:
        load_vae(spec, torch.float32)
    assert str(err.value).startswith(f"--vae {spec}: ") and words in str(err.value) and "\n" not in str(err.value)


def test_vae_only_file_without_configs_names_the_file(sources, tmp_path):
    with safe_open(sources["LDM VAE-only"], "pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys()}, tmp_path / "plain.safetensors")
    with pytest.raises(ModelLoadError) as err:
        load_vae(str(tmp_path / "plain.safetensors"), torch.float32)
    assert str(err.value).startswith(f"--vae {tmp_path / 'plain.safetensors'}: VAE widths [8, 16, 32, 32]")


def test_folder_without_vae_config_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="neither config.json nor vae/config.json"):
        load_vae(str(tmp_path), torch.float32)
