"""A tiny SDXL: the real block structure and module names, random seeded weights, a few MB.

Used by the test suite and `sdxl-lora tiny-model OUT_DIR` to smoke-test an install without downloading SDXL.
Widths and depths are small; everything that shapes names (3 down blocks, 2 resnets per block, cross-attention
in blocks 1 and 2, text_time addition embedding, two CLIP encoders, 4-channel VAE) is as in SDXL base.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdxl_lora.common.files import atomic_folder

TE1_HIDDEN, TE2_HIDDEN, TE2_PROJECTION, TIME_DIM = 32, 64, 64, 8
SDXL_VAE_SCALE = 0.13025
_CLIP_IDS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                 layer_norm_eps=1e-5)


def tiny_unet_config() -> dict:
    """UNet2DConditionModel kwargs: SDXL's layout at a fraction of the width and depth."""
    return dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(2, 4, 8),
        cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=TE2_PROJECTION + 6 * TIME_DIM,
        norm_num_groups=32,
    )


def build_tiny_pipeline(seed: int = 0):
    """A StableDiffusionXLPipeline with random weights; bit-identical for the same seed."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdxl_lora.models.tokenizers import clip_tokenizers

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config())
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32), norm_num_groups=8, sample_size=128,
        scaling_factor=SDXL_VAE_SCALE, force_upcast=True,
    )
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=TE1_HIDDEN, intermediate_size=128, num_hidden_layers=3,
                                       num_attention_heads=4, hidden_act="quick_gelu", projection_dim=32, **_CLIP_IDS))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=TE2_HIDDEN, intermediate_size=256,
                                                     num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu",
                                                     projection_dim=TE2_PROJECTION, **_CLIP_IDS))
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
        use_karras_sigmas=False,
    )
    tok1, tok2 = clip_tokenizers()
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2, unet=unet,
        scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def save_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny model as a diffusers folder; written beside the target and renamed into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    with atomic_folder(out_dir) as tmp:
        build_tiny_pipeline(seed).save_pretrained(tmp, safe_serialization=True)
    return out_dir
