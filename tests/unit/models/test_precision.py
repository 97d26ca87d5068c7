"""Placement per precision flag (precision.py's table), fp8 base weights, and LoRA created in the network dtype."""

from __future__ import annotations

import logging

import pytest
import torch

from sdxl_lora.config.schema import ModelConfig, NetworkConfig
from sdxl_lora.models.load import load_sdxl
from sdxl_lora.models.precision import FP8, place_models, plan_placement
from sdxl_lora.models.text import encode, tokenize
from sdxl_lora.network.lora import apply_lora, lora_layers

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.mark.parametrize("flags, unet, te, vae, network", [
    (dict(), F32, F32, F32, F32),
    (dict(mixed_precision="fp16"), F16, F16, F16, F32),
    (dict(mixed_precision="fp16", no_half_vae=True), F16, F16, F32, F32),
    (dict(mixed_precision="bf16", full_bf16=True), BF16, BF16, BF16, BF16),
    (dict(mixed_precision="fp16", full_fp16=True), F16, F16, F16, F16),
    (dict(mixed_precision="bf16", fp8_base_unet=True), FP8, BF16, BF16, F32),
    (dict(mixed_precision="bf16", fp8_base=True), FP8, FP8, BF16, F32),
    (dict(mixed_precision="fp16", fp8_base=True, fp8_base_unet=True), FP8, F16, F16, F32),
])
def test_placement_table(flags, unet, te, vae, network):
    p = plan_placement(ModelConfig(pretrained_model_name_or_path="x", **flags))
    assert (p.unet_dtype, p.text_encoder_dtype, p.vae_dtype, p.network_dtype) == (unet, te, vae, network)
    assert p.weight_dtype == {"no": F32, "fp16": F16, "bf16": BF16}[flags.get("mixed_precision", "no")]


def _load_and_place(tiny_sdxl_dir, **flags):
    cfg = ModelConfig(pretrained_model_name_or_path=str(tiny_sdxl_dir), **flags)
    models = load_sdxl(cfg)
    return models, place_models(models, cfg, "cpu")


def _lora(models, train_text_encoder=True):
    return apply_lora(models.unet, models.text_encoder_1, models.text_encoder_2,
                      NetworkConfig(network_dim=4, network_alpha=2, train_text_encoder=train_text_encoder))


def _lora_dtypes(handles, component):
    return {p.dtype for p in handles.parameters(component)}


@pytest.fixture(scope="module")
def fp8_models(tiny_sdxl_dir):
    models, placement = _load_and_place(tiny_sdxl_dir, mixed_precision="bf16", fp8_base=True)
    return models, placement, _lora(models)


def test_fp8_base_stores_frozen_weights_in_fp8_but_not_norms_or_embeddings(fp8_models):
    models, placement, _ = fp8_models
    assert placement.unet_fp8 and placement.text_encoders_fp8
    block = models.unet.down_blocks[1].attentions[0]
    assert models.unet.conv_out.weight.dtype == models.unet.down_blocks[0].resnets[0].conv1.weight.dtype == FP8
    assert models.unet.conv_in.weight.dtype == BF16 and models.unet.dtype == BF16  # pipelines read unet.dtype
    assert block.transformer_blocks[0].attn1.to_q.base_layer.weight.dtype == FP8
    assert block.transformer_blocks[0].ff.net[2].base_layer.weight.dtype == FP8
    assert block.norm.weight.dtype == BF16
    te2 = models.text_encoder_2.text_model
    assert te2.encoder.layers[0].self_attn.q_proj.base_layer.weight.dtype == FP8
    assert te2.embeddings.token_embedding.weight.dtype == te2.embeddings.position_embedding.weight.dtype == BF16
    assert te2.final_layer_norm.weight.dtype == BF16
    assert models.text_encoder_1.dtype == models.text_encoder_2.dtype == BF16
    assert models.vae.dtype == BF16


def test_lora_injected_after_fp8_placement_is_float32_and_never_rounded(fp8_models):
    _, _, handles = fp8_models
    for component in ("unet", "te1", "te2"):
        assert _lora_dtypes(handles, component) == {F32}, component
    down = torch.cat([p.flatten() for p in handles.parameters("unet")[::2]])
    assert not torch.equal(down, down.to(BF16).float())  # created in float32, not rounded through fp8/bf16


def test_fp8_training_step_runs_with_finite_loss(fp8_models):
    models, placement, handles = fp8_models
    torch.manual_seed(0)
    ids1, ids2 = tokenize(models.tokenizer_1, models.tokenizer_2, ["a photo of a cat"])
    latents, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]])
    with torch.autocast("cpu", dtype=placement.weight_dtype):
        context, pooled = encode(models.text_encoder_1, models.text_encoder_2, ids1, ids2)
        pred = models.unet(latents.to(BF16), torch.tensor([500]), context.to(BF16),
                           added_cond_kwargs={"text_embeds": pooled.to(BF16), "time_ids": time_ids.to(BF16)}).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
    loss.backward()
    assert torch.isfinite(loss)
    for component, model in handles.models.items():
        for name, layer in lora_layers(model):
            grads = [p.grad for ab in (layer.lora_A, layer.lora_B) for p in ab["default"].parameters()]
            if component == "te1" and name.startswith("encoder.layers.2."):  # TE1's last layer is unused (spec 5.6)
                assert grads == [None, None]
            else:
                assert all(g is not None and torch.isfinite(g).all() for g in grads), name
                assert grads[1].abs().sum() > 0, name  # lora_B's grad; lora_A's is 0 while lora_B is 0
    assert models.unet.conv_out.weight.dtype == FP8  # still stored in fp8 after the step


def test_fp8_base_unet_keeps_text_encoders_in_the_weight_dtype(tiny_sdxl_dir):
    models, placement = _load_and_place(tiny_sdxl_dir, mixed_precision="fp16", fp8_base_unet=True)
    assert placement.unet_fp8 and not placement.text_encoders_fp8
    assert models.unet.conv_out.weight.dtype == FP8
    assert {p.dtype for p in models.text_encoder_1.parameters()} == {F16}


@pytest.mark.parametrize("flags, network", [(dict(mixed_precision="bf16"), F32),
                                            (dict(mixed_precision="bf16", full_bf16=True), BF16)])
def test_lora_on_a_half_precision_base_is_created_in_the_network_dtype(tiny_sdxl_dir, flags, network):
    models, _ = _load_and_place(tiny_sdxl_dir, **flags)
    handles = _lora(models, train_text_encoder=False)
    assert {p.dtype for p in models.unet.conv_in.parameters()} == {BF16}
    assert _lora_dtypes(handles, "unet") == {network}


def test_no_half_vae_keeps_the_vae_in_float32(tiny_sdxl_dir):
    models, placement = _load_and_place(tiny_sdxl_dir, mixed_precision="fp16", no_half_vae=True)
    assert placement.vae_dtype == models.vae.dtype == F32
    assert models.unet.dtype == F16


def test_clip_skip_is_a_warning_and_changes_nothing(tiny_sdxl, tiny_sdxl_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="sdxl_lora.models.load"):
        models = load_sdxl(ModelConfig(pretrained_model_name_or_path=str(tiny_sdxl_dir), clip_skip=2))
    warnings = [r for r in caplog.records if "--clip_skip" in r.getMessage()]
    assert len(warnings) == 1 and "ignores it" in warnings[0].getMessage()
    ids = tokenize(models.tokenizer_1, models.tokenizer_2, ["a photo of a cat"])
    with torch.no_grad():
        ours, theirs = encode(models.text_encoder_1, models.text_encoder_2, *ids), encode(
            tiny_sdxl.text_encoder_1, tiny_sdxl.text_encoder_2, *ids)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_highvram_is_carried_for_the_loop():
    assert plan_placement(ModelConfig(pretrained_model_name_or_path="x", highvram=True)).highvram


def test_a_deferred_unet_gets_its_fp8_dtype_where_it_was_loaded_and_moves_only_with_place_unet(tiny_sdxl_dir):
    """The "meta" device stands in for a GPU: what place_models moves there is what a GPU would hold while
    latents and text outputs are cached; place_unet stores the U-Net in fp8 on the host, then moves it."""
    from sdxl_lora.models.precision import place_unet

    cfg = ModelConfig(pretrained_model_name_or_path=str(tiny_sdxl_dir), mixed_precision="bf16", fp8_base_unet=True)
    models = load_sdxl(cfg)
    placement = place_models(models, cfg, "meta", defer_unet=True)

    def devices(model):
        return {p.device.type for p in model.parameters()}

    assert devices(models.vae) == devices(models.text_encoder_1) == devices(models.text_encoder_2) == {"meta"}
    assert devices(models.unet) == {"cpu"} and models.unet.conv_out.weight.dtype == BF16  # untouched
    moved, real_to = [], models.unet.to

    def to(*args, **kwargs):
        moved.append((models.unet.conv_out.weight.dtype, models.unet.conv_out.weight.device.type, args, kwargs))
        return real_to(*args, **kwargs)

    models.unet.to = to
    place_unet(models.unet, placement)
    assert moved[-1][:2] == (FP8, "cpu") and torch.device(*moved[-1][2]).type == "meta"  # fp8 before the move
    assert devices(models.unet) == {"meta"}
    assert models.unet.conv_out.weight.dtype == FP8 and models.unet.conv_in.weight.dtype == BF16


def test_load_sdxl_without_the_unet_and_load_unet_later_give_the_same_models(tiny_sdxl_dir):
    from sdxl_lora.models.load import load_unet

    cfg = ModelConfig(pretrained_model_name_or_path=str(tiny_sdxl_dir), mixed_precision="bf16")
    whole, parts = load_sdxl(cfg), load_sdxl(cfg, unet=False)
    assert parts.unet is None and parts.tokenizer_1 is not None and parts.text_encoder_2 is not None
    later = load_unet(cfg)
    want = whole.unet.state_dict()
    assert later.state_dict().keys() == want.keys()
    assert all(t.dtype == BF16 and torch.equal(t, want[k]) for k, t in later.state_dict().items())


def test_without_defer_every_model_goes_to_the_device(tiny_sdxl_dir):
    cfg = ModelConfig(pretrained_model_name_or_path=str(tiny_sdxl_dir))
    models = load_sdxl(cfg)
    place_models(models, cfg, "meta")
    assert {p.device.type for m in (models.unet, models.vae, models.text_encoder_1) for p in m.parameters()} \
        == {"meta"}
