"""The diffusers <-> SGM name table on the full-size SDXL base U-Net (on the meta device), and kohya names."""

import re
from collections import Counter

import pytest
from torch import nn

from sdxl_lora.config.schema import NetworkConfig
from sdxl_lora.network.keys import diffusers_to_sgm, kohya_name, parse_kohya_name, sgm_to_diffusers
from sdxl_lora.network.lora import (
    TE_TARGET_CLASSES,
    UNET_TARGET_CLASSES,
    apply_lora,
    lora_layers,
    target_module_names,
)


@pytest.fixture(scope="module")
def unet_lora_names(sdxl_unet):
    return [kohya_name("unet", n) for n in target_module_names(sdxl_unet, UNET_TARGET_CLASSES)]


def test_default_targets_get_722_unique_sgm_names(unet_lora_names):
    assert len(unet_lora_names) == 722
    assert len(set(unet_lora_names)) == 722
    for expected in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                     "lora_unet_input_blocks_4_1_proj_in",
                     "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k",
                     "lora_unet_output_blocks_5_1_transformer_blocks_1_attn1_to_out_0",
                     "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_0_proj",
                     "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_2"):
        assert expected in unet_lora_names


def test_peft_adds_exactly_these_722_adapters(fresh_sdxl_unet):
    unet = fresh_sdxl_unet
    expected = target_module_names(unet, UNET_TARGET_CLASSES)
    apply_lora(unet, nn.Identity(), nn.Identity(), NetworkConfig(network_dim=4, train_text_encoder=False))
    assert [path for path, _ in lora_layers(unet)] == expected


def test_modules_per_sgm_block_match_spec(unet_lora_names):
    # spec 3.6: 22 linear modules per depth-2 transformer, 102 per depth-10 transformer.
    counts = Counter(re.match(r"lora_unet_([a-z_]+?_\d+)_", n).group(1) for n in unet_lora_names)
    assert counts == {
        "input_blocks_4": 22, "input_blocks_5": 22, "input_blocks_7": 102, "input_blocks_8": 102,
        "middle_block_1": 102,
        "output_blocks_0": 102, "output_blocks_1": 102, "output_blocks_2": 102,
        "output_blocks_3": 22, "output_blocks_4": 22, "output_blocks_5": 22,
    }


def test_every_unet_key_round_trips_and_sgm_names_are_unique(sdxl_unet):
    keys = list(sdxl_unet.state_dict())
    sgm = [diffusers_to_sgm(k) for k in keys]
    assert len(set(sgm)) == len(keys)
    assert [sgm_to_diffusers(k) for k in sgm] == keys


@pytest.mark.parametrize(("diffusers", "sgm"), [
    ("conv_in.weight", "input_blocks.0.0.weight"),
    ("time_embedding.linear_2.bias", "time_embed.2.bias"),
    ("add_embedding.linear_1.weight", "label_emb.0.0.weight"),
    ("down_blocks.0.resnets.0.conv1.weight", "input_blocks.1.0.in_layers.2.weight"),
    ("down_blocks.0.resnets.1.norm1.weight", "input_blocks.2.0.in_layers.0.weight"),
    ("down_blocks.0.downsamplers.0.conv.weight", "input_blocks.3.0.op.weight"),
    ("down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight"),
    ("down_blocks.1.resnets.0.time_emb_proj.weight", "input_blocks.4.0.emb_layers.1.weight"),
    ("down_blocks.1.downsamplers.0.conv.bias", "input_blocks.6.0.op.bias"),
    ("down_blocks.2.attentions.1.proj_out.weight", "input_blocks.8.1.proj_out.weight"),
    ("mid_block.resnets.0.norm2.weight", "middle_block.0.out_layers.0.weight"),
    ("mid_block.attentions.0.norm.weight", "middle_block.1.norm.weight"),
    ("mid_block.resnets.1.conv2.weight", "middle_block.2.out_layers.3.weight"),
    ("up_blocks.0.attentions.2.proj_in.weight", "output_blocks.2.1.proj_in.weight"),
    ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.2.conv.weight"),
    ("up_blocks.1.resnets.0.conv1.weight", "output_blocks.3.0.in_layers.2.weight"),
    ("up_blocks.1.upsamplers.0.conv.weight", "output_blocks.5.2.conv.weight"),
    ("up_blocks.2.resnets.2.conv_shortcut.bias", "output_blocks.8.0.skip_connection.bias"),
    ("conv_norm_out.weight", "out.0.weight"),
    ("conv_out.bias", "out.2.bias"),
])
def test_spec_table_entries(diffusers, sgm):
    assert diffusers_to_sgm(diffusers) == sgm
    assert sgm_to_diffusers(sgm) == diffusers


def test_unknown_names_raise():
    with pytest.raises(KeyError, match="not a diffusers U-Net name"):
        diffusers_to_sgm("down_blocks.0.attentions.0.proj_in.weight")  # level 0 has no attention in SDXL
    with pytest.raises(KeyError, match="not a SGM U-Net name"):
        sgm_to_diffusers("input_blocks.9.0.in_layers.2.weight")


def test_kohya_names_parse_back_for_every_unet_target(sdxl_unet):
    for path in target_module_names(sdxl_unet, UNET_TARGET_CLASSES):
        assert parse_kohya_name(kohya_name("unet", path)) == ("unet", path)


@pytest.mark.parametrize(("component", "path", "name"), [
    ("unet", "down_blocks.0.resnets.0.conv1", "lora_unet_input_blocks_1_0_in_layers_2"),
    ("unet", "down_blocks.2.resnets.0.conv_shortcut", "lora_unet_input_blocks_7_0_skip_connection"),
    ("unet", "down_blocks.2.resnets.0.time_emb_proj", "lora_unet_input_blocks_7_0_emb_layers_1"),
    ("unet", "down_blocks.0.downsamplers.0.conv", "lora_unet_input_blocks_3_0_op"),
    ("unet", "up_blocks.0.upsamplers.0.conv", "lora_unet_output_blocks_2_2_conv"),
    # transformers 5: TE1 (CLIPTextModel) has no `text_model.` in its module names, TE2 still has it.
    ("te1", "encoder.layers.0.self_attn.q_proj", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"),
    ("te2", "text_model.encoder.layers.31.mlp.fc2", "lora_te2_text_model_encoder_layers_31_mlp_fc2"),
])
def test_kohya_name_and_back(component, path, name):
    assert kohya_name(component, path) == name
    assert parse_kohya_name(name) == (component, path)


def test_diffusers_layout_kohya_names_parse_too():
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert parse_kohya_name(name) == ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    assert kohya_name(*parse_kohya_name(name)) == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"


def test_other_prefixes_are_refused():
    with pytest.raises(KeyError, match="does not start with"):
        parse_kohya_name("lora_te_text_model_encoder_layers_0_mlp_fc1")


def test_sdxl_text_encoder_target_counts(sdxl_text_encoders):
    # spec 3.1: 12 x 6 + 32 x 6 = 264 text-encoder modules on SDXL base.
    te1, te2 = sdxl_text_encoders
    names = [kohya_name("te1", n) for n in target_module_names(te1, TE_TARGET_CLASSES)]
    names += [kohya_name("te2", n) for n in target_module_names(te2, TE_TARGET_CLASSES)]
    assert len(names) == len(set(names)) == 264
    assert "lora_te2_text_model_encoder_layers_31_self_attn_out_proj" in names
    assert all(kohya_name(*parse_kohya_name(n)) == n for n in names)
