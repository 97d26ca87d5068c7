"""A real run on the tiny model with the Hub options, then what the loop will do with its output: the card from the
run's own ss_datasets, the LoRA and card uploaded to the fake Hub and downloaded back unchanged, and the token
nowhere in the saved file, the logs or the console."""

from __future__ import annotations

import json
import logging

from helpers import make_images, train_keeping_result, write_toml
from sdxl_lora.config.build import build_run_config
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.publish.hub import Uploader, download_resume
from sdxl_lora.publish.model_card import card_for_run

TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"


def test_a_trained_lora_and_its_card_reach_the_hub_without_the_token(tiny_model_dir, tmp_path, fake_hub, caplog,
                                                                      capsys):
    from safetensors import safe_open

    caplog.set_level(logging.DEBUG)
    images = make_images(tmp_path / "img", [(64, 64)] * 2, caption_ext="")
    toml = write_toml(tmp_path / "dataset.toml", (
        "[[datasets]]\nresolution = 64\n  [[datasets.subsets]]\n"
        f"  image_dir = '{images.as_posix()}'\n  class_tokens = 'ohwx dog'\n"))
    argv = [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={toml}",
            f"--output_dir={tmp_path / 'out'}", "--output_name=tiny_lora",
            "--network_module=networks.lora", "--network_dim=4", "--network_alpha=2", "--learning_rate=1e-3",
            "--max_train_steps=2", "--seed=1", "--max_data_loader_n_workers=0", "--network_train_unet_only",
            "--huggingface_repo_id=me/tiny", "--huggingface_path_in_repo=runs/1", f"--huggingface_token={TOKEN}"]
    code, result = train_keeping_result(argv)
    assert code == 0
    lora = result.output_path
    with safe_open(str(lora), "pt") as f:
        metadata = f.metadata()
    assert TOKEN not in json.dumps(metadata)

    parsed = parse_command_line(argv)
    cfg = build_run_config(parsed.values, parsed.given)
    card = card_for_run(cfg, lora, steps=result.steps, epochs=result.epochs,
                        datasets=json.loads(metadata["ss_datasets"]))
    assert "instance_prompt: ohwx dog" in card.read_text(encoding="utf-8")

    with Uploader(cfg.hub, endpoint=fake_hub.endpoint) as uploader:
        uploader.upload_file(lora, wait=True)
        uploader.upload_card(card)
    assert fake_hub.repo("me/tiny").files == {"runs/1/tiny_lora.safetensors": lora.read_bytes(),
                                              "runs/1/README.md": card.read_bytes()}
    back = download_resume("me/tiny/runs/1", TOKEN, cache_dir=tmp_path / "cache", endpoint=fake_hub.endpoint)
    assert (back / "tiny_lora.safetensors").read_bytes() == lora.read_bytes()

    console = capsys.readouterr()
    assert TOKEN not in caplog.text and TOKEN not in console.out + console.err
    assert TOKEN not in card.read_text(encoding="utf-8")
