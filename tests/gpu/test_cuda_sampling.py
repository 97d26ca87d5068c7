"""GPU tier: sampling on CUDA puts back the VAE and text encoders the loop parked on the CPU after caching, in
their dtypes, and leaves the CUDA RNG as it was. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from sdxl_lora.config.schema import ModelConfig, NetworkConfig
from sdxl_lora.sample.generate import SampleSettings, generate_samples
from sdxl_lora.sample.prompts import SamplePrompt

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("flags", [dict(mixed_precision="fp16"), dict(mixed_precision="bf16", fp8_base=True),
                                   dict(mixed_precision="fp16", no_half_vae=True)])
def test_samples_on_cuda_with_the_vae_and_encoders_parked_on_the_cpu(flags, tiny_model_dir, tmp_path):
    from sdxl_lora.models.load import load_sdxl
    from sdxl_lora.models.precision import place_models
    from sdxl_lora.network.build import build_network

    cfg = ModelConfig(str(tiny_model_dir), **flags)
    models = load_sdxl(cfg, "cuda")
    placement = place_models(models, cfg, "cuda")
    build_network(models.unet, models.text_encoder_1, models.text_encoder_2, NetworkConfig(network_dim=4))
    parked = (models.vae, models.text_encoder_1, models.text_encoder_2)
    for model in parked:  # as after --cache_latents and --cache_text_encoder_outputs
        model.to("cpu")
    cuda_rng = torch.cuda.get_rng_state_all()
    settings = SampleSettings(tmp_path, device=placement.device, weight_dtype=placement.weight_dtype)
    prompts = [SamplePrompt("a cat", width=64, height=64, seed=3, steps=2, index=0),
               SamplePrompt("a dog", width=128, height=64, steps=2, sampler="dpmsolver++", index=1)]
    paths = generate_samples(models, prompts, settings, step=1)
    assert [p.is_file() for p in paths] == [True, True]
    assert [next(m.parameters()).device.type for m in parked] == ["cpu"] * 3
    assert next(models.unet.parameters()).is_cuda
    assert models.vae.dtype == placement.vae_dtype
    assert all(torch.equal(a, b) for a, b in zip(cuda_rng, torch.cuda.get_rng_state_all(), strict=True))
