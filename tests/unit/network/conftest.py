"""Full-size SDXL base models on the meta device (no memory, no download), shared by the network tests."""

import pytest
import torch

SDXL_BASE_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def meta_sdxl_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_BASE_UNET)


def meta_sdxl_text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                         num_hidden_layers=32, num_attention_heads=20,
                                                         projection_dim=1280))
    return te1, te2


@pytest.fixture(scope="module")
def sdxl_unet():
    """One meta U-Net shared by a module's tests: do not add adapters to it."""
    return meta_sdxl_unet()


@pytest.fixture
def fresh_sdxl_unet():
    """A meta U-Net of one's own, to add adapters to."""
    return meta_sdxl_unet()


@pytest.fixture(scope="module")
def sdxl_text_encoders():
    return meta_sdxl_text_encoders()
