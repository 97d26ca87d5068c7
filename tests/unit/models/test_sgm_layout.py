"""The single-file key tables: every tensor of the tiny and of the real-size SDXL maps there and back."""

from __future__ import annotations

import json

import pytest
import torch

from sdxl_lora.models.configs import build_empty, infer_configs, shipped_config
from sdxl_lora.models.sgm_layout import COMPONENTS, layout_for, to_file_tensors, to_model_tensors

PIPE_ATTR = {"unet": "unet", "vae": "vae", "te1": "text_encoder", "te2": "text_encoder_2"}
# Names as the original SDXL release spells them (Stability's sd_xl_base_1.0 layout).
KNOWN = {
    "unet": ("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight",
             "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"),
    "vae": ("decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
            "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight"),
    "te1": ("encoder.layers.2.self_attn.q_proj.bias",
            "conditioner.embedders.0.transformer.text_model.encoder.layers.2.self_attn.q_proj.bias"),
    "te2": ("text_model.encoder.layers.1.mlp.fc2.weight",
            "conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_proj.weight"),
}


@pytest.fixture(scope="module")
def real_sdxl_shapes():
    """SDXL base's four models on the meta device (no memory): their state dicts hold shapes only."""
    return {c: build_empty(c, shipped_config(c)).state_dict() for c in COMPONENTS}


def _round_trip(component, state):
    layout = layout_for(component, state)
    file = dict(to_file_tensors(layout, state))
    back = {}
    for key, tensor in file.items():
        assert key.startswith(layout.prefix)
        back.update(to_model_tensors(layout, key[len(layout.prefix):], tensor))
    return file, back


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_tiny_tensor_round_trips_bit_exact(tiny_sdxl, component):
    model = {"unet": tiny_sdxl.unet, "vae": tiny_sdxl.vae, "te1": tiny_sdxl.text_encoder_1,
             "te2": tiny_sdxl.text_encoder_2}[component]
    state = model.state_dict()
    file, back = _round_trip(component, state)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    name, file_name = KNOWN[component]
    assert torch.equal(file[file_name], state[name])


@pytest.mark.parametrize("component, n_file_keys", [("unet", 1680), ("vae", 248), ("te1", 196), ("te2", 389)])
def test_every_real_sdxl_name_round_trips(real_sdxl_shapes, component, n_file_keys):
    state = real_sdxl_shapes[component]
    file, back = _round_trip(component, state)
    assert len(file) == n_file_keys  # TE2: 517 tensors, q/k/v fused in 32 layers -> 517 - 4 * 32
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in state.items()}


def test_real_sdxl_file_names_and_shapes(real_sdxl_shapes):
    te2 = dict(to_file_tensors(layout_for("te2", real_sdxl_shapes["te2"]), real_sdxl_shapes["te2"]))
    vae = dict(to_file_tensors(layout_for("vae", real_sdxl_shapes["vae"]), real_sdxl_shapes["vae"]))
    p = "conditioner.embedders.1.model."
    assert te2[p + "transformer.resblocks.31.attn.in_proj_weight"].shape == (3 * 1280, 1280)
    assert te2[p + "transformer.resblocks.0.attn.in_proj_bias"].shape == (3 * 1280,)
    assert te2[p + "positional_embedding"].shape == (77, 1280)
    assert te2[p + "text_projection"].shape == (1280, 1280)
    assert vae["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert vae["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)
    assert "first_stage_model.decoder.up.0.block.2.conv1.weight" in vae  # LDM decoder counts from the bottom


def test_te2_fuses_qkv_in_order_and_transposes_the_projection(tiny_sdxl):
    state = tiny_sdxl.text_encoder_2.state_dict()
    file = dict(to_file_tensors(layout_for("te2", state), state))
    layer = "text_model.encoder.layers.0.self_attn."
    fused = file["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    expected = torch.cat([state[layer + f"{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(fused, expected)
    # OpenCLIP computes pooled @ P; the Linear stores P.T (diffusers' from_single_file transposes alike)
    assert torch.equal(file["conditioner.embedders.1.model.text_projection"], state["text_projection.weight"].T)


def test_file_side_ignores_position_ids_and_logit_scale():
    te1, te2 = layout_for("te1", []), layout_for("te2", ["transformer.resblocks.0.ln_1.weight"])
    assert to_model_tensors(te1, "text_model.embeddings.position_ids", torch.arange(77)[None]) == []
    assert to_model_tensors(te2, "logit_scale", torch.tensor(4.6)) == []


def test_shapes_of_real_sdxl_infer_the_shipped_configs(real_sdxl_shapes):
    shapes = {c: {k: v.shape for k, v in s.items()} for c, s in real_sdxl_shapes.items()}
    inferred = infer_configs(shapes)
    for component in COMPONENTS:
        shipped = json.loads(json.dumps(shipped_config(component)))
        assert json.loads(json.dumps(inferred[component])) == shipped, component


def test_shipped_configs_have_sdxl_base_parameter_counts(real_sdxl_shapes):
    counts = {c: sum(t.numel() for t in s.values()) for c, s in real_sdxl_shapes.items()}
    assert counts == {"unet": 2_567_463_684, "vae": 83_653_863, "te1": 123_060_480, "te2": 694_659_840}
