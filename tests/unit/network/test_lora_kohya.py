"""LoRA on sd-scripts' targets, kohya export/import, and diffusers' kohya loader as the consumer."""

import copy
import logging
import math
import warnings
from contextlib import contextmanager

import pytest
import torch
from safetensors import safe_open

from sdxl_lora.config.schema import NetworkConfig
from sdxl_lora.models.tiny import TE1_HIDDEN, TE2_HIDDEN, TE2_PROJECTION, build_tiny_pipeline
from sdxl_lora.network.kohya import kohya_state_dict, load_kohya_into, save_lora_file
from sdxl_lora.network.lora import LoraHandles, apply_lora, lora_layers

RANK, ALPHA = 4, 2.0  # alpha != rank, so a loader that ignored alpha would give other outputs
UNET_SUFFIXES = ("proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
TE_SUFFIXES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@pytest.fixture(scope="module")
def base():
    """The untouched tiny pipeline; tests work on deep copies of it."""
    return build_tiny_pipeline(seed=0)


def _lora_models(base, **kwargs) -> LoraHandles:
    unet, te1, te2 = (copy.deepcopy(m) for m in (base.unet, base.text_encoder, base.text_encoder_2))
    options = dict(network_dim=RANK, network_alpha=ALPHA) | kwargs
    return apply_lora(unet, te1, te2, NetworkConfig(**options))


@pytest.fixture(scope="module")
def trained(base) -> LoraHandles:
    """LoRA on all three models with random (non-zero) up weights, as after some training."""
    handles = _lora_models(base)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in handles.models.values():
            for _, layer in lora_layers(model):
                weight = layer.lora_B["default"].weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.1)
    return handles


def _unet_inputs():
    g = torch.Generator().manual_seed(2)
    return dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor([10, 700]),
                encoder_hidden_states=torch.randn(2, 77, TE1_HIDDEN + TE2_HIDDEN, generator=g),
                added_cond_kwargs=dict(text_embeds=torch.randn(2, TE2_PROJECTION, generator=g),
                                       time_ids=torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)))


def _outputs(unet, te1, te2) -> list[torch.Tensor]:
    ids = torch.randint(3, 49000, (2, 77), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out2 = te2(ids, output_hidden_states=True)
        return [unet(**_unet_inputs()).sample, te1(ids).last_hidden_state, out2.text_embeds,
                out2.hidden_states[-2]]


@contextmanager
def _recorded_warnings():
    """Warnings from Python's warnings module and from the (non-propagating) library loggers."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
        records += [str(w.message) for w in caught]
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_targets_freezing_and_init(base):
    handles = _lora_models(base)
    assert set(handles.models) == {"unet", "te1", "te2"}
    for component, model in handles.models.items():
        suffixes = UNET_SUFFIXES if component == "unet" else TE_SUFFIXES
        layers = list(lora_layers(model))
        assert layers and all(name.endswith(suffixes) for name, _ in layers)
        lora = set(handles.parameters(component))
        assert len(lora) == 2 * len(layers)
        assert all(p.requires_grad == (p in lora) for p in model.parameters())
        for _, layer in layers:
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            assert layer.scaling["default"] == ALPHA / RANK
            assert torch.all(b == 0)
            # kaiming-uniform(a=sqrt 5) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert a.abs().max() <= 1 / math.sqrt(a.shape[1])
    assert sum(1 for _ in lora_layers(handles.models["unet"])) == 242  # tiny depths (1, 2, 2): 11 x 22
    assert sum(1 for _ in lora_layers(handles.models["te1"])) == 3 * 6
    assert handles.parameter_counts()["te1"] == sum(p.numel() for p in handles.parameters("te1"))


def test_unet_only_leaves_text_encoders_frozen_and_bare(base):
    handles = _lora_models(base, train_text_encoder=False)
    assert set(handles.models) == {"unet"}
    assert handles.parameters("te1") == []
    assert all(k.startswith("lora_unet_") for k in kohya_state_dict(handles))


def test_kohya_dict_layout(trained):
    state = kohya_state_dict(trained)
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in state}
    assert len(state) == 3 * len(names)
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_te2_text_model_encoder_layers_2_mlp_fc2" in names
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    for name in names:
        down, up, alpha = (state[name + s] for s in (".lora_down.weight", ".lora_up.weight", ".alpha"))
        assert alpha.dtype == torch.float32 and alpha.dim() == 0 and alpha.item() == ALPHA
        assert down.shape[0] == RANK and up.shape[1] == RANK and down.dim() == up.dim() == 2
    half = kohya_state_dict(trained, save_dtype=torch.float16)
    assert {v.dtype for v in half.values()} == {torch.float16}


def test_diffusers_loads_the_file_and_reproduces_outputs(base, trained, tmp_path):
    path = save_lora_file(tmp_path / "lora.safetensors", kohya_state_dict(trained), {"ss_network_dim": "4"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"ss_network_dim": "4"}
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]  # no temporary file left behind

    pipe = copy.deepcopy(base)
    with _recorded_warnings() as records:
        pipe.load_lora_weights(str(path))
    assert records == []
    models = trained.models
    ours = _outputs(models["unet"].eval(), models["te1"].eval(), models["te2"].eval())
    theirs = _outputs(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    plain = _outputs(base.unet, base.text_encoder, base.text_encoder_2)
    for a, b, c in zip(ours, theirs, plain, strict=True):
        assert not torch.allclose(a, c, atol=1e-3)  # the LoRA changes every output...
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)  # ...and diffusers reproduces it


def test_load_kohya_into_round_trip(base, trained):
    state = kohya_state_dict(trained)
    fresh = _lora_models(base)
    load_kohya_into(fresh, state)
    for component in trained.models:
        for p, q in zip(trained.parameters(component), fresh.parameters(component), strict=True):
            assert torch.equal(p, q)


def test_load_kohya_into_lists_every_problem(base, trained):
    state = kohya_state_dict(trained)
    del state["lora_unet_input_blocks_4_1_proj_in.lora_up.weight"]
    state["lora_unet_input_blocks_4_1_proj_in.alpha"] = torch.tensor(8.0)
    state["lora_unet_input_blocks_4_1_norm.lora_up.weight"] = torch.zeros(1)
    state["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(RANK + 1, TE1_HIDDEN)
    with pytest.raises(ValueError) as error:
        load_kohya_into(_lora_models(base), state)
    message = str(error.value)
    assert "(4 problems)" in message
    assert "missing key lora_unet_input_blocks_4_1_proj_in.lora_up.weight" in message
    assert "unknown key lora_unet_input_blocks_4_1_norm.lora_up.weight" in message
    assert "lora_unet_input_blocks_4_1_proj_in.alpha: file has [8.0], the network has 2.0" in message
    assert "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight: shape (5, 32)" in message


def test_save_lora_file_refuses_non_string_metadata(tmp_path):
    with pytest.raises(TypeError, match="ss_steps"):
        save_lora_file(tmp_path / "x.safetensors", {"a": torch.zeros(1)}, {"ss_steps": 3})
    assert list(tmp_path.iterdir()) == []


def test_network_dropout_acts_on_down_output_in_training_only(base):
    handles = _lora_models(base, network_dropout=0.5, train_text_encoder=False)
    name, layer = next(lora_layers(handles.models["unet"]))
    up = layer.lora_B["default"].weight
    with torch.no_grad():  # up = [I; 0]: the first RANK outputs of the LoRA part are scale x down(x), dropped
        up.zero_()
        up[:RANK].copy_(torch.eye(RANK))
    x = torch.randn(64, layer.in_features)
    plain = x @ layer.lora_A["default"].weight.T
    with torch.no_grad():
        dropped = ((layer(x) - layer.base_layer(x)) / layer.scaling["default"])[:, :RANK]
        handles.train(False)
        kept_all = ((layer(x) - layer.base_layer(x)) / layer.scaling["default"])[:, :RANK]
    kept = dropped.abs() > 1e-6
    assert 0.3 < kept.float().mean() < 0.7
    torch.testing.assert_close(dropped[kept], 2 * plain[kept], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kept_all, plain, rtol=1e-4, atol=1e-5)
