"""The real CLI with networks.lora's --network_args: the file carries what was asked; bad keys stop at once."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from helpers import train_keeping_result, two_image_dataset
from sdxl_lora.cli import main

NETWORK_ARGS = ("conv_dim=2", "conv_alpha=1", "loraplus_lr_ratio=4", "rank_dropout=0.1", "module_dropout=0.1",
                "down_lr_weight=1,1,1,1,1,1,1,1,0")


def _args(model, tmp, *extra):
    toml = two_image_dataset(tmp)
    return [f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}", f"--output_dir={tmp / 'out'}",
            "--output_name=net", "--network_module=networks.lora", "--network_dim=4", "--network_alpha=2",
            "--learning_rate=1e-3", "--seed=1", "--max_data_loader_n_workers=0", "--max_train_steps=2", *extra]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("net")
    code, result = train_keeping_result(_args(tiny_model_dir, tmp, "--network_dropout=0.1",
                                              "--training_comment=first try", "--metadata_author=me",
                                              "--network_args", *NETWORK_ARGS))
    assert code == 0
    return result


def test_file_has_conv_modules_at_conv_rank_and_no_zero_weight_block(run):
    with safe_open(run.output_path, "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        conv_down = f.get_tensor("lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight")
        emb_down = f.get_tensor("lora_unet_input_blocks_1_0_emb_layers_1.lora_down.weight")
    assert conv_down.shape[0] == 2 and conv_down.shape[2:] == (3, 3)
    assert emb_down.shape[0] == 4
    # down_lr_weight's last value is input_blocks 8 (block 9): weight 0 -> no modules there
    assert not any(k.startswith("lora_unet_input_blocks_8_") for k in keys)
    assert any(k.startswith("lora_unet_input_blocks_7_") for k in keys)
    assert json.loads(meta["ss_network_args"]) == dict(a.split("=", 1) for a in NETWORK_ARGS) | {"dropout": 0.1}
    assert meta["ss_network_dropout"] == "0.1"
    assert meta["ss_training_comment"] == "first try" and meta["modelspec.author"] == "me"


def test_diffusers_folder_continues_from_the_kohya_file(run, tiny_model_dir, tmp_path, capsys):
    """--network_weights takes the first run's file; the diffusers folder in fp16 holds the same modules."""
    code, result = train_keeping_result(_args(tiny_model_dir, tmp_path, f"--network_weights={run.output_path}",
                                              "--dim_from_weights", "--save_model_as=diffusers_safetensors",
                                              "--save_precision=fp16", "--max_train_steps=1"))
    assert code == 0
    folder = result.output_path
    assert folder.name == "net" and [p.name for p in folder.iterdir()] == ["pytorch_lora_weights.safetensors"]
    with safe_open(folder / "pytorch_lora_weights.safetensors", "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in keys}
    with safe_open(run.output_path, "pt") as f:
        kohya_modules = {k.rsplit(".", 2)[0] for k in f.keys() if k.endswith(".lora_down.weight")}
    assert len(keys) == 2 * len(kohya_modules) and dtypes == {torch.float16}
    assert json.loads(meta["lora_adapter_metadata"])["unet.lora_alpha"] == 2.0
    assert meta["ss_network_dim"] == "4" and meta["format"] == "pt" and len(meta["sshs_model_hash"]) == 64
    assert "net: every key maps onto an SDXL module" in capsys.readouterr().err  # the after-save self-check


def test_unknown_network_arg_stops_before_loading(tiny_model_dir, tmp_path, capsys):
    code = main(_args(tiny_model_dir, tmp_path, "--network_args", "conv_dims=4", "block_dims=1,2"))
    err = capsys.readouterr().err
    assert code == 2
    assert "--network_args conv_dims: unknown key for networks.lora (did you mean conv_dim?)" in err
    assert "--network_args block_dims=1,2: needs 23 comma-separated values" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_weight_file_options_are_checked_before_loading(tiny_model_dir, tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    code = main(_args(tiny_model_dir, tmp_path, "--dim_from_weights", "--base_weights", str(missing),
                      "--scale_weight_norms=-1"))
    err = capsys.readouterr().err
    assert code == 2
    assert "--dim_from_weights needs --network_weights" in err
    assert f"--base_weights {missing}: file not found" in err
    assert "--scale_weight_norms=-1.0: must be a finite number, not negative" in err
