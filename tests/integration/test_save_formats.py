"""--save_model_as ckpt|pt writes what sd-scripts writes (spec 1.10, 4.4): a pickled state dict of the same kohya
keys and tensors as the .safetensors file of the same run, with no metadata, loadable with weights_only=True."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import make_images, write_toml
from sdxl_lora.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("save_formats")
    images = make_images(tmp / "images", [(64, 64)])
    return write_toml(tmp / "dataset.toml", "[general]\nenable_bucket = false\n[[datasets]]\nresolution = 64\n"
                      f"batch_size = 1\n  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n"
                      "  caption_extension = '.txt'\n")


def _train(model, dataset, out, fmt: str):
    code = main([
        f"--pretrained_model_name_or_path={model}", f"--dataset_config={dataset}", f"--output_dir={out}",
        "--output_name=lora", "--network_module=networks.lora", "--network_dim=4", "--network_alpha=2",
        "--learning_rate=1e-3", "--optimizer_type=AdamW", "--seed=5", "--max_train_steps=1",
        "--max_data_loader_n_workers=0", "--network_train_unet_only", f"--save_model_as={fmt}"])
    assert code == 0
    assert sorted(os.listdir(out)) == ["README.md", "lora-status.json", f"lora.{fmt}"]  # no temporary left beside it
    return out / f"lora.{fmt}"


@pytest.fixture(scope="module")
def reference(tiny_model_dir, dataset, tmp_path_factory):
    path = _train(tiny_model_dir, dataset, tmp_path_factory.mktemp("out_safetensors"), "safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["ss_network_dim"] == "4"  # the safetensors file carries metadata
    return load_file(path)


@pytest.mark.parametrize("fmt", ["ckpt", "pt"])
def test_pickled_formats_hold_the_same_state_dict_without_metadata(tiny_model_dir, dataset, reference, tmp_path, fmt):
    path = _train(tiny_model_dir, dataset, tmp_path / "out", fmt)
    with open(path, "rb") as f:
        assert f.read(4) == b"PK\x03\x04"  # torch.save's zip format, not a safetensors header
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert type(loaded) is dict
    assert all(isinstance(v, torch.Tensor) for v in loaded.values())  # no metadata entries, no "state_dict" nesting
    assert sorted(loaded) == sorted(reference)
    assert any(k.endswith(".alpha") for k in loaded) and all(k.startswith("lora_unet_") for k in loaded)
    for key, tensor in reference.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
