"""The LyCORIS network on the tiny SDXL: sd-scripts' target set, DoRA saved and reloaded, LoRA+ groups."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lycoris")

ATTN = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"


def _network(*network_args, alpha=2.0, **kw):
    from sdxl_lora.config.lycoris_args import parse_lycoris_args
    from sdxl_lora.config.schema import NetworkConfig
    from sdxl_lora.models.tiny import build_tiny_pipeline
    from sdxl_lora.network.lycoris_net import build_lycoris

    pipe = build_tiny_pipeline()
    args, problems = parse_lycoris_args(network_args)
    assert problems == []
    cfg = NetworkConfig(network_module="lycoris.kohya", network_dim=4, network_alpha=alpha, lycoris=args, **kw)
    return pipe, build_lycoris(pipe.unet, pipe.text_encoder, pipe.text_encoder_2, cfg)


def _unet_out(unet):
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 96, generator=g)
    cond = {"text_embeds": torch.randn(1, 64, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(x, torch.tensor([500]), ctx, added_cond_kwargs=cond).sample


def test_dora_is_saved_as_dora_scale_and_reloads_to_the_same_outputs():
    pipe, handles = _network("algo=locon", "dora_wd=true", "conv_dim=2")
    with torch.no_grad():
        for p in handles.parameters("unet"):
            p.add_(torch.randn_like(p) * 0.05)
    state = handles.kohya_state_dict()
    assert f"{ATTN}.dora_scale" in state and f"{ATTN}.lora_up.weight" in state
    trained = _unet_out(pipe.unet)
    pipe2, fresh = _network("algo=locon", "dora_wd=true", "conv_dim=2")
    assert not torch.allclose(_unet_out(pipe2.unet), trained)
    fresh.load_kohya(state, "memory")
    torch.testing.assert_close(_unet_out(pipe2.unet), trained)


def test_targets_are_sd_scripts_sdxl_classes_only_and_live_in_the_models():
    pipe, handles = _network("algo=loha")
    modules = {k.split(".")[0] for k in handles.kohya_state_dict()}
    unet = {m for m in modules if m.startswith("lora_unet_")}
    # SGM names of what sd-scripts' SDXL U-Net has outside the four target classes: never adapted
    for outside in ("lora_unet_time_embed_", "lora_unet_label_emb_", "lora_unet_input_blocks_0_0", "lora_unet_out_"):
        assert not any(m.startswith(outside) for m in unet), outside
    assert {m.split("_")[2] for m in unet} == {"input", "middle", "output"}
    own = {id(p) for p in pipe.unet.parameters()}
    assert all(id(p) in own for p in handles.parameters("unet"))  # so DDP on the U-Net syncs them


def test_loraplus_puts_lora_up_in_plus_groups_at_lr_times_ratio():
    from sdxl_lora.config.schema import OptimConfig

    _, handles = _network("algo=locon", "loraplus_unet_lr_ratio=16")
    optim = OptimConfig(learning_rate=1e-4, unet_lr=2e-4, text_encoder_lr=(1e-5, 1e-5))
    from sdxl_lora.config.lycoris_args import parse_lycoris_args
    from sdxl_lora.config.schema import NetworkConfig

    cfg = NetworkConfig(network_module="lycoris.kohya", lycoris=parse_lycoris_args(["loraplus_unet_lr_ratio=16"])[0])
    groups = {g["name"]: g for g in handles.param_groups(cfg, optim)}
    assert set(groups) == {"textencoder", "unet", "unet plus"}
    assert groups["unet plus"]["lr"] == pytest.approx(2e-4 * 16) and groups["unet"]["lr"] == 2e-4
    assert groups["textencoder"]["lr"] == 1e-5
    ups = sum(1 for m in handles.network.unet_loras for n, _ in m.named_parameters() if "lora_up" in n)
    assert len(groups["unet plus"]["params"]) == ups > 0
