"""Hub ids are read from the local Hugging Face cache only; an uncached id is one offline line."""

from __future__ import annotations

import shutil

import pytest
import torch

from sdxl_lora.config.schema import ModelConfig
from sdxl_lora.models.errors import ModelLoadError
from sdxl_lora.models.hub import resolve_cached
from sdxl_lora.models.load import load_sdxl, load_vae

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return home


def _cache(home, repo_id, folder):
    """The hub cache layout: models--owner--name/{refs/main, snapshots/<revision>/...}."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return repo / "snapshots" / REVISION


def test_uncached_hub_id_is_one_offline_line(hf_home):
    with pytest.raises(ModelLoadError) as err:
        load_sdxl(ModelConfig(pretrained_model_name_or_path="someone/sdxl-model"))
    message = str(err.value)
    assert message == (f"--pretrained_model_name_or_path someone/sdxl-model: not in the local Hugging Face cache "
                       f"(HF_HOME={hf_home}, cache {hf_home / 'hub'}) and this machine is offline; download it first "
                       "or give a local path")


def test_cached_hub_id_loads_the_snapshot(hf_home, tiny_sdxl, tiny_sdxl_dir):
    snapshot = _cache(hf_home, "owner/tiny-sdxl", tiny_sdxl_dir)
    assert resolve_cached("owner/tiny-sdxl") == snapshot
    models = load_sdxl(ModelConfig(pretrained_model_name_or_path="owner/tiny-sdxl"))
    ours, theirs = models.unet.state_dict(), tiny_sdxl.unet.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert models.tokenizer_2.pad_token_id == 0


def test_cached_hub_id_works_for_vae(hf_home, tiny_sdxl, tiny_sdxl_dir):
    _cache(hf_home, "owner/tiny-vae", tiny_sdxl_dir / "vae")
    vae = load_vae("owner/tiny-vae", torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), tiny_sdxl.vae.state_dict().values(),
                                                 strict=True))
    with pytest.raises(ModelLoadError, match="^--vae owner/other: not in the local Hugging Face cache"):
        load_vae("owner/other", torch.float32)


def test_cached_repo_without_model_index_is_refused(hf_home, tiny_sdxl_dir):
    _cache(hf_home, "owner/just-vae", tiny_sdxl_dir / "vae")
    with pytest.raises(ModelLoadError, match="has no model_index.json"):
        load_sdxl(ModelConfig(pretrained_model_name_or_path="owner/just-vae"))
