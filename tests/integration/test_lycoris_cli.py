"""The real CLI with --network_module lycoris.kohya: files in LyCORIS' kohya key format (SGM module names, per-module
.alpha, the algorithm's tensor names), lycoris.kohya metadata, and a file that reloads to the same outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from helpers import train_keeping_result, two_image_dataset
from sdxl_lora.cli import main

pytest.importorskip("lycoris")

# Module names written out by hand from the SGM layout (spec 3.2): the first attention's to_q of input block 4,
# a 3x3 conv of the first ResNet of input block 1, and TE1's first q_proj.
ATTN = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_input_blocks_1_0_in_layers_2"
TE1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"


def _args(model, tmp, *network_args, extra=()):
    toml = two_image_dataset(tmp)
    return [f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}", f"--output_dir={tmp / 'out'}",
            "--output_name=lyco", "--network_module=lycoris.kohya", "--network_dim=4", "--network_alpha=2",
            "--learning_rate=1e-2", "--seed=1", "--max_data_loader_n_workers=0", "--max_train_steps=2", *extra,
            "--network_args", *network_args]


def _read(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def locon(tiny_model_dir, tmp_path_factory):
    code, result = train_keeping_result(_args(tiny_model_dir, tmp_path_factory.mktemp("locon"),
                                              "algo=locon", "conv_dim=4", "conv_alpha=1"))
    assert code == 0
    return result


def test_locon_file_has_lycoris_keys_sgm_names_alphas_and_metadata(locon):
    state, meta = _read(locon.output_path)
    assert state[f"{ATTN}.lora_down.weight"].shape == (4, 32 * 2)  # rank 4 x the 64-wide attention
    assert state[f"{CONV}.lora_down.weight"].shape == (4, 32, 3, 3)  # conv_dim 4 on a 3x3 conv of 32 channels
    assert float(state[f"{ATTN}.alpha"]) == 2.0 and float(state[f"{CONV}.alpha"]) == 1.0
    assert f"{TE1}.lora_up.weight" in state
    modules = {k.split(".")[0] for k in state}
    assert all(f"{m}.alpha" in state for m in modules)
    assert not any(k.startswith("lora_unet_down_blocks") for k in state)  # no diffusers names
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == "locon"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"


def test_self_check_finds_every_locon_module_in_sdxl_and_flags_a_stray_key(locon, tmp_path):
    from safetensors.torch import save_file

    from sdxl_lora.network.selfcheck import check_saved

    models = {"unet": locon.models.unet, "te1": locon.models.text_encoder_1, "te2": locon.models.text_encoder_2}
    assert check_saved(locon.output_path, models) == []
    state, meta = _read(locon.output_path)
    state["lora_unet_input_blocks_99_1_proj_in.hada_w1_a"] = torch.zeros(1)
    save_file(state, tmp_path / "stray.safetensors", metadata=meta)
    problems = check_saved(tmp_path / "stray.safetensors", models)
    assert len(problems) == 1 and problems[0].startswith("lora_unet_input_blocks_99_1_proj_in")


def _outputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, 96, generator=g)
    cond = {"text_embeds": torch.randn(1, 64, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), context, added_cond_kwargs=cond).sample


@pytest.mark.parametrize("algo_args", [("algo=loha", "conv_dim=4", "conv_alpha=1"), ("algo=lokr", "factor=4")])
def test_loha_lokr_files_reload_into_a_fresh_lycoris_network(algo_args, tiny_model_dir, tmp_path):
    from sdxl_lora.config.lycoris_args import parse_lycoris_args
    from sdxl_lora.config.schema import NetworkConfig
    from sdxl_lora.models.tiny import build_tiny_pipeline
    from sdxl_lora.network.lycoris_net import build_lycoris

    code, result = train_keeping_result(_args(tiny_model_dir, tmp_path, *algo_args))
    assert code == 0
    state, meta = _read(result.output_path)
    algo = algo_args[0].split("=")[1]
    assert json.loads(meta["ss_network_args"])["algo"] == algo and meta["ss_network_module"] == "lycoris.kohya"
    names = {"loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), "lokr": ("lokr_w1",)}[algo]
    assert all(f"{ATTN}.{n}" in state for n in names) and f"{ATTN}.alpha" in state
    trained = _outputs(result.models.unet)

    pipe = build_tiny_pipeline()  # same seed as the tiny model on disk: same frozen weights
    cfg = NetworkConfig(network_module="lycoris.kohya", network_dim=4, network_alpha=2,
                        lycoris=parse_lycoris_args(algo_args)[0])
    fresh = build_lycoris(pipe.unet, pipe.text_encoder, pipe.text_encoder_2, cfg)
    before = _outputs(pipe.unet)
    fresh.load_kohya(state, str(result.output_path))
    after = _outputs(pipe.unet)
    assert not torch.equal(before, after)  # the file changes the model (trained up weights are not zero)
    torch.testing.assert_close(after, trained.to(after.dtype), rtol=1e-5, atol=1e-5)


def test_unknown_lycoris_arg_is_named_before_any_model_loads(tiny_model_dir, tmp_path, capsys, monkeypatch):
    def no_load(*_args, **_kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("sdxl_lora.models.load.load_sdxl", no_load)
    code = main(_args(tiny_model_dir, tmp_path, "algo=loha", "conv_dims=4"))
    err = capsys.readouterr().err
    assert code == 2
    assert "conv_dims" in err and "conv_dim" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "conv_dims" in line]) == 1


def test_network_weights_continue_a_lycoris_file_and_a_mismatch_is_named(locon, tiny_model_dir, tmp_path, capsys):
    code, result = train_keeping_result(_args(tiny_model_dir, tmp_path, "algo=locon", "conv_dim=4", "conv_alpha=1",
                                              extra=(f"--network_weights={locon.output_path}", "--learning_rate=1e-6",
                                                     "--max_train_steps=1")))
    assert code == 0
    before, after = _read(locon.output_path)[0], _read(result.output_path)[0]
    up = f"{ATTN}.lora_up.weight"
    assert before[up].abs().max() > 1e-3  # trained, so a fresh network (up = 0) would not match
    assert before.keys() == after.keys()
    for key in before:  # one AdamW step at lr 1e-6 moves each weight by about 1e-6
        torch.testing.assert_close(after[key].float(), before[key].float(), rtol=0, atol=1e-5)
    code = main(_args(tiny_model_dir, tmp_path / "bad", "algo=loha",
                      extra=(f"--network_weights={locon.output_path}", "--max_train_steps=1")))
    err = capsys.readouterr().err
    assert code == 2 and "--network_weights" in err and "does not fit" in err and "Traceback" not in err
