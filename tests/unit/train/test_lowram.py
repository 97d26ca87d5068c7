"""--lowram loads every model straight onto the training device (spec 1.2); without it weights load on the CPU.

The device here is a CUDA device that need not exist: the component loaders are replaced by recorders, so what
is checked is the target each one is asked for, which a CPU-only run cannot tell apart from the default.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sdxl_lora.config.schema import ModelConfig
from sdxl_lora.models import load

ACCELERATOR = torch.device("cuda", 1)


@pytest.fixture
def targets(monkeypatch):
    seen = {}

    def from_folder(root, component, dtype, device=None, **kwargs):
        seen[component] = torch.device(device or "cpu")
        return SimpleNamespace(component=component)

    def from_file(path, dtypes, device, mmap, components):
        seen.update(dict.fromkeys(components, torch.device(device)))
        return {c: SimpleNamespace(component=c) for c in components}

    monkeypatch.setattr(load, "load_component", from_folder)
    monkeypatch.setattr(load, "read_single_file", from_file)
    return seen


@pytest.mark.parametrize("lowram, expected", [(True, ACCELERATOR), (False, torch.device("cpu"))])
def test_diffusers_folder_components_load_on_the_device_only_with_lowram(targets, tiny_model_dir, lowram,
                                                                         expected):
    load.load_sdxl(ModelConfig(pretrained_model_name_or_path=str(tiny_model_dir), lowram=lowram), ACCELERATOR)
    assert set(targets) == {"unet", "vae", "te1", "te2"} and set(targets.values()) == {expected}


@pytest.mark.parametrize("lowram, expected", [(True, ACCELERATOR), (False, torch.device("cpu"))])
def test_single_file_loads_on_the_device_only_with_lowram(targets, tmp_path, lowram, expected):
    checkpoint = tmp_path / "sdxl.safetensors"
    checkpoint.write_bytes(b"")
    load.load_sdxl(ModelConfig(pretrained_model_name_or_path=str(checkpoint), lowram=lowram), ACCELERATOR)
    assert set(targets) == {"unet", "vae", "te1", "te2"} and set(targets.values()) == {expected}
