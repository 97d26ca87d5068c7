"""--huggingface_token and --wandb_api_key never reach a saved file's ss_* / modelspec.* metadata, even if a key
list someday names them (the options table marks them secret; metadata drops secret options first)."""

from __future__ import annotations

import pytest

from sdxl_lora.config.options import OPTIONS, without_secrets
from sdxl_lora.network import metadata as md

HF_TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"
WANDB_KEY = "0123456789abcdef0123456789abcdefWANDB"
ARGS = dict(output_name="mychar", learning_rate=1e-4, network_module="networks.lora", network_dim=8,
            network_alpha=4.0, max_train_steps=60, seed=42, pretrained_model_name_or_path="sdxl.safetensors",
            huggingface_token=HF_TOKEN, wandb_api_key=WANDB_KEY, huggingface_repo_id="me/my-lora")
FACTS = md.RunFacts(session_id=1, training_started_at=1.0, num_train_images=1, num_reg_images=0,
                    num_batches_per_epoch=1, num_epochs=1, optimizer="AdamW", text_encoder_lr=None)


def test_the_secret_options_are_the_token_and_the_api_key():
    assert {o.name for o in OPTIONS if o.secret} == {"huggingface_token", "wandb_api_key"}
    assert without_secrets(ARGS).keys() == ARGS.keys() - {"huggingface_token", "wandb_api_key"}


@pytest.mark.parametrize("no_metadata", [False, True])
def test_no_metadata_value_holds_a_secret_even_when_a_key_list_names_it(monkeypatch, no_metadata):
    monkeypatch.setattr(md, "_ARG_KEYS", (*md._ARG_KEYS, "huggingface_token", "wandb_api_key"))
    args = dict(ARGS, no_metadata=no_metadata)
    meta = md.at_save(md.training_metadata(args, FACTS), args, steps=1, epoch=1, now=2.0)
    assert meta["ss_network_module"] == "networks.lora"  # the rest is still written
    text = repr(meta)
    assert HF_TOKEN not in text and WANDB_KEY not in text
