"""LoRA files as input (spec 3.8, 3.10): --network_weights in every layout, --dim_from_weights, --base_weights
merging and --scale_weight_norms, against hand-computed values and the in-memory network."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from sdxl_lora.config.network_args import parse_lora_args
from sdxl_lora.config.schema import NetworkConfig
from sdxl_lora.network.build import build_network, merge_base_weights
from sdxl_lora.network.kohya import kohya_state_dict, save_lora_file
from sdxl_lora.network.lora import ModuleSpec, inject, lora_layers
from sdxl_lora.network.weights import delta_weight, max_norm_regularize, read_kohya


@pytest.fixture(scope="module")
def tiny():
    from sdxl_lora.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


def _copies(tiny):
    return tuple(copy.deepcopy(m) for m in (tiny.unet, tiny.text_encoder, tiny.text_encoder_2))


def _cfg(*network_args, **kw):
    return NetworkConfig(**({"network_dim": 4, "network_alpha": 2.0} | kw), lora=parse_lora_args(list(network_args))[0])


def _randomize(handles, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for component in handles.models:
            for _, layer in handles.layers(component):
                for part in (layer.lora_A["default"], layer.lora_B["default"]):
                    part.weight.copy_(torch.randn(part.weight.shape, generator=g) * 0.1)
    return handles


@pytest.fixture(scope="module")
def trained(tiny):
    """A conv + block-rank network with non-zero weights, as after training."""
    dims = ["4"] * 23
    dims[5] = "2"
    return _randomize(build_network(*_copies(tiny), _cfg("conv_dim=3", f"block_dims={','.join(dims)}")))


def _same(a, b):
    sa, sb = kohya_state_dict(a), kohya_state_dict(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt", "pt"])
def test_network_weights_round_trip_bit_exactly(tiny, trained, tmp_path, fmt):
    path = save_lora_file(tmp_path / f"lora.{fmt}", kohya_state_dict(trained))  # the writer --save_model_as uses
    dims = ["4"] * 23
    dims[5] = "2"
    loaded = build_network(*_copies(tiny), _cfg("conv_dim=3", f"block_dims={','.join(dims)}",
                                                network_weights=str(path)))
    _same(trained, loaded)


def test_dim_from_weights_rebuilds_modules_ranks_and_alphas(tiny, trained, tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file(kohya_state_dict(trained), path)
    # options say rank 8, alpha 1, no conv: the file's modules, ranks and alphas win
    loaded = build_network(*_copies(tiny), _cfg(network_dim=8, network_alpha=1.0, network_weights=str(path),
                                                dim_from_weights=True))
    _same(trained, loaded)


def test_diffusers_named_kohya_file_and_file_alpha(tiny, trained, tmp_path):
    state = kohya_state_dict(trained)
    renamed = {}
    for k, v in state.items():
        k = k.replace("lora_unet_input_blocks_4_1_", "lora_unet_down_blocks_1_attentions_0_")
        renamed[k] = torch.tensor(8.0) if k == "lora_unet_down_blocks_1_attentions_0_proj_in.alpha" else v
    path = tmp_path / "diffusers_names.safetensors"
    save_file(renamed, path)
    dims = ["4"] * 23
    dims[5] = "2"
    loaded = build_network(*_copies(tiny), _cfg("conv_dim=3", f"block_dims={','.join(dims)}",
                                                network_weights=str(path)))
    out = kohya_state_dict(loaded)
    assert out["lora_unet_input_blocks_4_1_proj_in.alpha"].item() == 8.0
    layer = dict(lora_layers(loaded.models["unet"]))["down_blocks.1.attentions.0.proj_in"]
    assert layer.scaling["default"] == 8.0 / 2  # trains at the file's scale, rank 2 from block_dims
    assert torch.equal(out["lora_unet_input_blocks_4_1_proj_in.lora_up.weight"],
                       state["lora_unet_input_blocks_4_1_proj_in.lora_up.weight"])


def test_diffusers_peft_file_with_adapter_metadata(tiny, tmp_path):
    """A file as diffusers' own scripts write it: peft adapters on the models, their state dicts and LoraConfigs."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    source = _randomize(build_network(*_copies(tiny), _cfg(network_alpha=2.0)))
    saved = {}
    for component, model in zip(("unet", "te1", "te2"), _copies(tiny), strict=True):
        layers = dict(lora_layers(source.models[component]))
        model.add_adapter(LoraConfig(r=4, lora_alpha=2.0, target_modules=list(layers)), adapter_name="default")
        with torch.no_grad():
            for path, layer in layers.items():
                peft_layer = model.get_submodule(path)
                for part in ("lora_A", "lora_B"):
                    getattr(peft_layer, part)["default"].weight.copy_(getattr(layer, part)["default"].weight)
        saved[component] = (get_peft_model_state_dict(model), model.peft_config["default"].to_dict())
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=saved["unet"][0], text_encoder_lora_layers=saved["te1"][0],
        text_encoder_2_lora_layers=saved["te2"][0], unet_lora_adapter_metadata=saved["unet"][1],
        text_encoder_lora_adapter_metadata=saved["te1"][1], text_encoder_2_lora_adapter_metadata=saved["te2"][1])
    loaded = build_network(*_copies(tiny), _cfg(network_alpha=1.0, network_weights=str(tmp_path)))
    _same(source, loaded)


def test_a_file_without_sdxl_keys_is_refused(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8)}, path)
    with pytest.raises(ValueError, match="no SDXL LoRA module found"):
        read_kohya(path)


def test_delta_and_merge_by_hand(tiny, tmp_path):
    # Linear: down (1, 3) = [1, 0, 0], up (2, 1) = [2, 0]^T, alpha 0.5, rank 1, multiplier 2:
    # W += 2 * 0.5 / 1 * [[2, 0, 0], [0, 0, 0]]
    assert torch.equal(delta_weight(torch.tensor([[1.0, 0, 0]]), torch.tensor([[2.0], [0]])),
                       torch.tensor([[2.0, 0, 0], [0, 0, 0]]))
    unet, te1, te2 = _copies(tiny)
    name = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    fc1 = te1.get_submodule("encoder.layers.0.mlp.fc1")
    before = fc1.weight.detach().clone()
    down = torch.zeros(1, fc1.in_features)
    down[0, 0] = 1.0
    up = torch.zeros(fc1.out_features, 1)
    up[0, 0] = 2.0
    path = tmp_path / "base.safetensors"
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(0.5)},
              path)
    merge_base_weights(unet, te1, te2, _cfg(base_weights=(str(path),), base_weights_multiplier=(2.0,)))
    expected = before.clone()
    expected[0, 0] += 2.0
    assert torch.equal(fc1.weight, expected)


def test_merged_conv_equals_base_plus_lora(tiny, trained, tmp_path):
    path = tmp_path / "conv.safetensors"
    save_file(kohya_state_dict(trained), path)
    unet, te1, te2 = _copies(tiny)
    merge_base_weights(unet, te1, te2, _cfg(base_weights=(str(path),)))
    layer = dict(lora_layers(trained.models["unet"]))["down_blocks.0.resnets.0.conv1"]
    x = torch.randn(2, layer.base_layer.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    trained.train(False)
    with torch.no_grad():
        expected = layer(x)  # base conv + up(down(x)) * scale, through peft
        merged = unet.get_submodule("down_blocks.0.resnets.0.conv1")(x)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_max_norm_by_hand(tiny):
    te1 = copy.deepcopy(tiny.text_encoder)
    specs = [ModuleSpec("te1", "encoder.layers.0.mlp.fc1", 1, 1.0),
             ModuleSpec("te1", "encoder.layers.0.mlp.fc2", 1, 2.0)]
    handles = inject({"te1": te1}, specs, NetworkConfig())
    (_, a), (_, b) = handles.layers("te1")
    with torch.no_grad():
        for layer, value in ((a, 3.0), (b, 0.1)):
            down, up = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            down.zero_()
            up.zero_()
            down[0, 0], up[0, 0] = value, 1.0
    # a: delta norm 3, scale 1: n = max(3, 0.5) = 3, ratio 1/3, both factors x sqrt(1/3) -> norm 1
    # b: delta norm 0.1, scale 2 -> 0.2: n = max(0.2, 0.5) = 0.5, ratio = min(0.5, 1) / 0.5 = 1 -> unchanged
    scaled, mean, top = max_norm_regularize(handles, 1.0)
    assert scaled == 1
    assert math.isclose(mean, (1.0 + 0.2) / 2, rel_tol=1e-6) and math.isclose(top, 1.0, rel_tol=1e-6)
    assert math.isclose(a.lora_A["default"].weight[0, 0].item(), 3.0 / math.sqrt(3), rel_tol=1e-6)
    assert math.isclose(a.lora_B["default"].weight[0, 0].item(), 1.0 / math.sqrt(3), rel_tol=1e-6)
    assert b.lora_A["default"].weight[0, 0].item() == pytest.approx(0.1)


def test_peft_alpha_metadata_is_read(tmp_path):
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 3, "unet.r": 4, "unet.alpha_pattern": {}})}
    state = {"unet.down_blocks.1.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 8),
             "unet.down_blocks.1.attentions.0.proj_in.lora_B.weight": torch.zeros(8, 4)}
    path = tmp_path / "peft.safetensors"
    save_file(state, path, metadata=meta)
    kohya = read_kohya(path)
    assert kohya["lora_unet_input_blocks_4_1_proj_in.alpha"].item() == 3.0
    assert set(kohya) == {f"lora_unet_input_blocks_4_1_proj_in{s}"
                          for s in (".lora_down.weight", ".lora_up.weight", ".alpha")}
