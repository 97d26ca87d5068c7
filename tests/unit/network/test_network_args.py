"""networks.lora's --network_args applied to the full-size SDXL (meta device) and the tiny model: conv targets,
per-block ranks, block LR weights, dropouts, LoRA+ groups (spec 3.1, 3.5, 3.6, 3.9)."""

import copy
import re
from collections import Counter

import pytest
import torch
from torch import nn

from sdxl_lora.config.network_args import parse_lora_args
from sdxl_lora.config.schema import NetworkConfig, OptimConfig
from sdxl_lora.network.groups import param_groups
from sdxl_lora.network.kohya import kohya_state_dict
from sdxl_lora.network.layer import Dropouts
from sdxl_lora.network.lora import apply_lora, lora_layers, plan_modules


def _cfg(*network_args, **kw) -> NetworkConfig:
    lora, problems = parse_lora_args(list(network_args))
    assert problems == []
    return NetworkConfig(**({"network_dim": 4, "network_alpha": 1.0} | kw), lora=lora)


def _kind(name: str) -> str:
    for suffix in ("in_layers_2", "out_layers_3", "emb_layers_1", "skip_connection", "_op", "_conv"):
        if name.endswith(suffix):
            return suffix.lstrip("_")
    return "linear"


def test_conv_dim_adds_spec_counts_with_their_ranks(sdxl_unet):
    specs = plan_modules({"unet": sdxl_unet}, _cfg("conv_dim=8", "conv_alpha=2", network_dim=16))
    counts = Counter(_kind(s.name) for s in specs)
    # spec 3.1: 722 + 34 ResNet 3x3 convs + 4 sampler convs (conv rank) + 17 emb_layers + 11 skips (linear rank)
    assert counts == {"linear": 722, "in_layers_2": 17, "out_layers_3": 17, "op": 2, "conv": 2,
                      "emb_layers_1": 17, "skip_connection": 11}
    ranks = {(_kind(s.name), s.rank, s.alpha) for s in specs}
    assert ranks == {("linear", 16, 1.0), ("emb_layers_1", 16, 1.0), ("skip_connection", 16, 1.0),
                     ("in_layers_2", 8, 2.0), ("out_layers_3", 8, 2.0), ("op", 8, 2.0), ("conv", 8, 2.0)}
    names = {s.name for s in specs}
    for name in ("lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_7_0_skip_connection",
                 "lora_unet_input_blocks_7_0_emb_layers_1", "lora_unet_input_blocks_3_0_op",
                 "lora_unet_output_blocks_2_2_conv", "lora_unet_output_blocks_5_2_conv",
                 "lora_unet_middle_block_2_out_layers_3"):
        assert name in names
    assert "lora_unet_input_blocks_1_0_skip_connection" not in names  # 320 -> 320: no skip conv


def test_default_network_on_full_sdxl_is_sd_scripts_module_set(sdxl_unet, sdxl_text_encoders):
    te1, te2 = sdxl_text_encoders
    specs = plan_modules({"unet": sdxl_unet, "te1": te1, "te2": te2}, _cfg())
    assert Counter(s.component for s in specs) == {"unet": 722, "te1": 72, "te2": 192}


def test_block_dims_give_per_block_ranks(sdxl_unet):
    # blocks 5, 6 (input_blocks 4, 5: depth-2 transformers) rank 2; block 11 (middle transformer) rank 0 = none
    dims = ["8"] * 23
    dims[5], dims[6], dims[11] = "2", "2", "0"
    alphas = ["4"] * 23
    alphas[5] = "1"
    specs = plan_modules({"unet": sdxl_unet}, _cfg(f"block_dims={','.join(dims)}",
                                                   f"block_alphas={','.join(alphas)}"))
    by_block = {}
    for s in specs:
        block = re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)", s.name)
        by_block.setdefault(block.group(0), set()).add((s.rank, s.alpha))
    assert by_block["lora_unet_input_blocks_4"] == {(2, 1.0)}
    assert by_block["lora_unet_input_blocks_5"] == {(2, 4.0)}
    assert by_block["lora_unet_input_blocks_7"] == {(8, 4.0)}
    assert "lora_unet_middle_block_1" not in by_block
    assert len(specs) == 722 - 102


def test_block_lr_weight_zero_removes_the_blocks_modules(sdxl_unet):
    # down weights for input_blocks 0-8: zero the depth-10 blocks 7 and 8 (block indices 8, 9)
    specs = plan_modules({"unet": sdxl_unet}, _cfg("down_lr_weight=1,1,1,1,1,1,1,0,0"))
    names = [s.name for s in specs]
    assert len(names) == 722 - 2 * 102
    assert not any(n.startswith(("lora_unet_input_blocks_7_", "lora_unet_input_blocks_8_")) for n in names)


def test_file_carries_per_block_ranks_and_int_alpha_for_a_default_alpha(tiny):
    dims = ["4"] * 23
    dims[5] = "2"  # input_blocks 4 (down_blocks 1 attentions 0 in the tiny model)
    handles = _apply(tiny, _cfg(f"block_dims={','.join(dims)}", network_alpha=0.0))
    state = kohya_state_dict(handles)
    down = state["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"]
    assert down.shape[0] == 2 and state["lora_unet_input_blocks_5_1_proj_in.lora_down.weight"].shape[0] == 4
    alpha = state["lora_unet_input_blocks_4_1_proj_in.alpha"]
    assert alpha.dtype == torch.int64 and alpha.item() == 2  # alpha 0 -> rank, an int (spec 3.4)
    layer = dict(lora_layers(handles.models["unet"]))["down_blocks.1.attentions.0.proj_in"]
    assert layer.scaling["default"] == 1.0


@pytest.fixture(scope="module")
def tiny():
    from sdxl_lora.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


def _apply(tiny, cfg):
    unet, te1, te2 = (copy.deepcopy(m) for m in (tiny.unet, tiny.text_encoder, tiny.text_encoder_2))
    return apply_lora(unet, te1, te2, cfg)


def test_conv_lora_on_the_tiny_model_has_kohya_conv_shapes(tiny):
    handles = _apply(tiny, _cfg("conv_dim=3", network_dim=4))
    state = kohya_state_dict(handles)
    down = state["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"]
    up = state["lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight"]
    assert down.shape[0] == 3 and down.shape[2:] == (3, 3) and up.shape[2:] == (1, 1)
    assert state["lora_unet_input_blocks_1_0_emb_layers_1.lora_down.weight"].shape[0] == 4


def _groups(handles, cfg, **optim):
    return [(g["name"], len(g["params"]), g["lr"])
            for g in param_groups(handles, cfg, OptimConfig(**({"learning_rate": 1e-4} | optim)))]


def test_groups_names_lrs_and_loraplus(tiny):
    cfg = _cfg("loraplus_lr_ratio=16", "loraplus_text_encoder_lr_ratio=4")
    handles = _apply(tiny, cfg)
    n_unet, n_te = len(handles.layers("unet")), len(handles.layers("te1")) + len(handles.layers("te2"))
    groups = _groups(handles, cfg, unet_lr=2e-4, text_encoder_lr=(5e-5, 5e-5))
    assert groups == [("textencoder", n_te, 5e-5), ("textencoder plus", n_te, 5e-5 * 4),
                      ("unet", n_unet, 2e-4), ("unet plus", n_unet, 2e-4 * 16)]
    plus = param_groups(handles, cfg, OptimConfig(learning_rate=1e-4))[3]["params"]
    ups = {id(layer.lora_B["default"].weight) for _, layer in handles.layers("unet")}
    assert {id(p) for p in plus} == ups


def test_groups_per_encoder_rates_and_zero_lr_dropped(tiny):
    cfg = _cfg()
    handles = _apply(tiny, cfg)
    n1, n2, nu = (2 * len(handles.layers(c)) for c in ("te1", "te2", "unet"))
    assert _groups(handles, cfg, text_encoder_lr=(1e-5, 0.0)) == [("textencoder1", n1, 1e-5), ("unet", nu, 1e-4)]
    assert _groups(handles, cfg) == [("textencoder", n1 + n2, 1e-4), ("unet", nu, 1e-4)]


def test_block_lr_weights_split_the_unet_per_block(tiny):
    # tiny U-Net: transformers in input_blocks 4, 5, 7, 8 (blocks 5, 6, 8, 9), middle (11), output 0-5 (13-18)
    cfg = _cfg("down_lr_weight=1,1,1,1,0.5,1,1,1,0.25", "up_lr_weight=2,1,1,1,1,1,1,1,1",
               train_text_encoder=False)
    handles = _apply(tiny, cfg)
    groups = {name: lr for name, _, lr in _groups(handles, cfg)}
    assert groups == {"unet_block5": 0.5e-4, "unet_block6": 1e-4, "unet_block8": 1e-4, "unet_block9": 0.25e-4,
                      "unet_block11": 1e-4, "unet_block13": 2e-4, "unet_block14": 1e-4, "unet_block15": 1e-4,
                      "unet_block16": 1e-4, "unet_block17": 1e-4, "unet_block18": 1e-4}


def test_dropouts_reach_every_layer_and_act_in_training_only(tiny):
    cfg = _cfg("rank_dropout=0.5", "module_dropout=0.25", network_dropout=0.1, train_text_encoder=False)
    handles = _apply(tiny, cfg)
    layers = [layer for _, layer in handles.layers("unet")]
    assert all(layer.dropouts == Dropouts(neuron=0.1, rank=0.5, module=0.25) and layer.training for layer in layers)
    handles.train(False)
    assert not any(layer.training for layer in layers)
    layer = layers[0]
    nn.init.ones_(layer.lora_B["default"].weight)
    x = torch.randn(2, 3, layer.in_features)
    lora = x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
    torch.testing.assert_close(layer(x), layer.base_layer(x) + lora / 4)  # alpha 1 / rank 4, nothing dropped
    handles.train(True)
    assert not torch.allclose(layer(x), layer.base_layer(x) + lora / 4)


def _sd_scripts_names(conv: bool) -> set[str]:
    """sd-scripts' SDXL module names, written out from spec 3.1/3.2/3.6 (not from our tables)."""
    attn = [f"{a}_{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out_0")]
    per_layer = attn + ["ff_net_0_proj", "ff_net_2"]
    depths = {"input_blocks_4_1": 2, "input_blocks_5_1": 2, "input_blocks_7_1": 10, "input_blocks_8_1": 10,
              "middle_block_1": 10, **{f"output_blocks_{n}_1": 10 for n in (0, 1, 2)},
              **{f"output_blocks_{n}_1": 2 for n in (3, 4, 5)}}
    names = set()
    for block, depth in depths.items():
        names |= {f"lora_unet_{block}_proj_in", f"lora_unet_{block}_proj_out"}
        names |= {f"lora_unet_{block}_transformer_blocks_{i}_{p}" for i in range(depth) for p in per_layer}
    for te, layers in (("te1", 12), ("te2", 32)):
        mods = [f"self_attn_{p}_proj" for p in ("q", "k", "v", "out")] + ["mlp_fc1", "mlp_fc2"]
        names |= {f"lora_{te}_text_model_encoder_layers_{i}_{m}" for i in range(layers) for m in mods}
    if conv:
        resnets = ([f"input_blocks_{n}_0" for n in (1, 2, 4, 5, 7, 8)] + ["middle_block_0", "middle_block_2"]
                   + [f"output_blocks_{n}_0" for n in range(9)])
        names |= {f"lora_unet_{r}_{c}" for r in resnets for c in ("in_layers_2", "out_layers_3", "emb_layers_1")}
        skips = ["input_blocks_4_0", "input_blocks_7_0"] + [f"output_blocks_{n}_0" for n in range(9)]
        names |= {f"lora_unet_{s}_skip_connection" for s in skips}
        names |= {"lora_unet_input_blocks_3_0_op", "lora_unet_input_blocks_6_0_op",
                  "lora_unet_output_blocks_2_2_conv", "lora_unet_output_blocks_5_2_conv"}
    return names


@pytest.mark.parametrize("conv", [False, True])
def test_full_sdxl_module_names_are_exactly_sd_scripts(sdxl_unet, sdxl_text_encoders, conv):
    te1, te2 = sdxl_text_encoders
    args = ("conv_dim=4",) if conv else ()
    specs = plan_modules({"unet": sdxl_unet, "te1": te1, "te2": te2}, _cfg(*args))
    names = [s.name for s in specs]
    expected = _sd_scripts_names(conv)
    assert len(names) == len(set(names)) == len(expected) == (722 + 66 if conv else 722) + 264
    assert set(names) == expected
