"""SDXL U-Net facts shared by models/ and network/: block indices of SGM names (spec 3.6) and the prefix table."""

import pytest

from sdxl_lora.common.sdxl_layout import block_index, diffusers_to_sgm, rename_by_prefix, sgm_to_diffusers


@pytest.mark.parametrize(("name", "index"), [
    ("time_embed.0", 0), ("label_emb.0.2", 0), ("input_blocks.0.0", 1),
    ("input_blocks.1.0.in_layers.2", 2), ("input_blocks.3.0.op", 4),
    ("input_blocks_4_1_transformer_blocks_0_attn1_to_q", 5), ("input_blocks.8.1.proj_out", 9),
    ("middle_block.0.emb_layers.1", 10), ("middle_block_1_proj_in", 11), ("middle_block.2.skip_connection", 12),
    ("output_blocks.0.1.proj_in", 13), ("output_blocks.2.2.conv", 15), ("output_blocks_5_1_proj_out", 18),
    ("output_blocks.8.0.out_layers.3", 21), ("out.2", 22),
])
def test_block_index_follows_spec_3_6(name, index):
    assert block_index(name) == index


def test_block_index_of_a_diffusers_name_is_refused():
    with pytest.raises(KeyError, match="spec 3.6"):
        block_index("down_blocks.1.attentions.0.proj_in")


@pytest.mark.parametrize(("diffusers", "sgm"), [
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.2.resnets.0.conv_shortcut", "input_blocks.7.0.skip_connection"),
    ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.2.resnets.2.conv1", "output_blocks.8.0.in_layers.2"),
    ("add_embedding.linear_2.weight", "label_emb.0.2.weight"),
])
def test_table_maps_both_ways_as_spec_3_3(diffusers, sgm):
    assert diffusers_to_sgm(diffusers) == sgm
    assert sgm_to_diffusers(sgm) == diffusers


def test_rename_by_prefix_takes_the_longest_whole_part_prefix_and_a_root_rule():
    rules = {"a": "x", "a.b": "y", "": "root"}
    assert rename_by_prefix("a.b.c", rules) == "y.c"
    assert rename_by_prefix("a.bc", rules) == "x.bc"
    assert rename_by_prefix("z", rules) == "root.z"
    with pytest.raises(KeyError):
        rename_by_prefix("z", {"a": "x"})
