"""Saved formats read by a real consumer: kohya and diffusers files with conv modules, per-block ranks and
alpha != rank load through diffusers' load_lora_weights to the in-memory network's outputs, round-trip through
--network_weights bit-exactly, and pass the after-save self-check (which finds what a loader would ignore)."""

import copy

import pytest
import torch
from safetensors.torch import save_file

from sdxl_lora.config.network_args import parse_lora_args
from sdxl_lora.config.schema import NetworkConfig
from sdxl_lora.models.tiny import TE1_HIDDEN, TE2_HIDDEN, TE2_PROJECTION, build_tiny_pipeline
from sdxl_lora.network.build import build_network
from sdxl_lora.network.diffusers_format import save_diffusers_folder
from sdxl_lora.network.kohya import kohya_state_dict
from sdxl_lora.network.selfcheck import check_saved

DIMS = ",".join("2" if i == 5 else "4" for i in range(23))  # input_blocks 4 at rank 2, the rest at rank 4


@pytest.fixture(scope="module")
def base():
    return build_tiny_pipeline(seed=0)


def _cfg(**kw):
    lora = parse_lora_args(["conv_dim=3", "conv_alpha=1.5", f"block_dims={DIMS}"])[0]
    return NetworkConfig(**({"network_dim": 4, "network_alpha": 2.0} | kw), lora=lora)


@pytest.fixture(scope="module")
def trained(base):
    models = (copy.deepcopy(m) for m in (base.unet, base.text_encoder, base.text_encoder_2))
    handles = build_network(*models, _cfg())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for component in handles.models:
            for _, layer in handles.layers(component):
                for part in (layer.lora_A["default"], layer.lora_B["default"]):
                    part.weight.copy_(torch.randn(part.weight.shape, generator=g) * 0.05)
    handles.train(False)
    return handles


def _outputs(unet, te1, te2):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 49000, (2, 77), generator=g)
    kwargs = dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor([10, 700]),
                  encoder_hidden_states=torch.randn(2, 77, TE1_HIDDEN + TE2_HIDDEN, generator=g),
                  added_cond_kwargs=dict(text_embeds=torch.randn(2, TE2_PROJECTION, generator=g),
                                         time_ids=torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)))
    with torch.no_grad():
        out2 = te2(ids, output_hidden_states=True)
        return [unet(**kwargs).sample, te1(ids).last_hidden_state, out2.text_embeds, out2.hidden_states[-2]]


def _diffusers_folder(trained, folder):
    return save_diffusers_folder(folder, trained, save_dtype=None, metadata={"ss_network_dim": "4"})


def _kohya_file(trained, path):
    save_file(kohya_state_dict(trained), path)
    return path


@pytest.mark.parametrize("fmt", ["kohya", "diffusers_safetensors"])
def test_diffusers_reproduces_the_in_memory_network(base, trained, tmp_path, fmt):
    target = (_kohya_file(trained, tmp_path / "lora.safetensors") if fmt == "kohya"
              else _diffusers_folder(trained, tmp_path / "lora"))
    pipe = copy.deepcopy(base)
    pipe.load_lora_weights(str(target))
    ours = _outputs(trained.models["unet"], trained.models["te1"], trained.models["te2"])
    theirs = _outputs(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    plain = _outputs(base.unet, base.text_encoder, base.text_encoder_2)
    for a, b, c in zip(ours, theirs, plain, strict=True):
        assert not torch.allclose(a, c, atol=1e-4)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers_safetensors"])
def test_round_trip_through_network_weights(base, trained, tmp_path, fmt):
    target = (_kohya_file(trained, tmp_path / "lora.safetensors") if fmt == "kohya"
              else _diffusers_folder(trained, tmp_path / "lora"))
    models = (copy.deepcopy(m) for m in (base.unet, base.text_encoder, base.text_encoder_2))
    loaded = build_network(*models, _cfg(network_alpha=1.0, network_weights=str(target), dim_from_weights=True))
    a, b = kohya_state_dict(trained), kohya_state_dict(loaded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_self_check_passes_a_good_file_and_names_what_a_loader_ignores(trained, tmp_path):
    good = _kohya_file(trained, tmp_path / "good.safetensors")
    assert check_saved(good, trained.models) == []
    assert check_saved(_diffusers_folder(trained, tmp_path / "folder"), trained.models) == []
    state = kohya_state_dict(trained)
    state["lora_unet_input_blocks_4_1_norm.lora_down.weight"] = torch.zeros(4, 8)  # a norm: not LoRA-able
    state["lora_unet_input_blocks_4_1_norm.lora_up.weight"] = torch.zeros(8, 4)
    state["lora_unet_input_blocks_4_1_norm.alpha"] = torch.tensor(1.0)
    del state["lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha"]
    state["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 3)  # wrong in-features
    state["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 3)  # SD1 key
    bad = tmp_path / "bad.safetensors"
    save_file(state, bad)
    assert check_saved(bad, trained.models) == [
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight: not a LoRA key of SDXL (a loader ignores it)",
        "lora_te1_text_model_encoder_layers_0_mlp_fc1: no alpha",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1: no te2 module of this shape at "
        "text_model.encoder.layers.0.mlp.fc1 (a loader ignores it)",
        "lora_unet_input_blocks_4_1_norm: no unet module of this shape at down_blocks.1.attentions.0.norm "
        "(a loader ignores it)",
    ]


def test_diffusers_folder_replaces_a_previous_save_and_keeps_other_folders(trained, tmp_path):
    folder = _diffusers_folder(trained, tmp_path / "lora")
    assert _diffusers_folder(trained, folder) == folder
    assert [p.name for p in folder.iterdir()] == ["pytorch_lora_weights.safetensors"]
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        _diffusers_folder(trained, folder)


def test_adapter_header_is_what_peft_add_adapter_records(base):
    """The diffusers header as diffusers' / transformers' add_adapter (peft) record it for the same modules, rank
    and alpha: unet target names condensed to suffixes, the text encoders' name_or_path."""
    import json

    from peft import LoraConfig

    from sdxl_lora.network.diffusers_format import PREFIX, adapter_metadata
    from sdxl_lora.network.lora import lora_layers

    handles = build_network(*(copy.deepcopy(m) for m in (base.unet, base.text_encoder, base.text_encoder_2)),
                            NetworkConfig(network_dim=4, network_alpha=2.0))
    expected = {}
    for component, model in handles.models.items():
        fresh = copy.deepcopy({"unet": base.unet, "te1": base.text_encoder, "te2": base.text_encoder_2}[component])
        paths = [path for path, _ in lora_layers(model)]
        fresh.add_adapter(LoraConfig(r=4, lora_alpha=2.0, lora_dropout=0.0, target_modules=paths))
        for key, value in fresh.peft_config["default"].to_dict().items():
            expected[f"{PREFIX[component]}.{key}"] = sorted(value) if isinstance(value, set) else value
    assert json.loads(adapter_metadata(handles)) == json.loads(json.dumps(expected, default=str))
