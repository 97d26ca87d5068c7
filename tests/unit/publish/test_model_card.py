"""README.md model card beside the LoRA (issue 11 item 5): front matter that huggingface_hub's ModelCard parses,
trigger words from what the run knows, the settings table, relative sample links, and no token anywhere."""

from __future__ import annotations

import pytest

from helpers import make_images
from sdxl_lora.config.build import build_run_config
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.config.schema import HubConfig
from sdxl_lora.publish.hub import Uploader
from sdxl_lora.publish.model_card import card_for_run, trigger_words, write_model_card

TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


def _load(path):
    from huggingface_hub import ModelCard

    return ModelCard.load(path)


@pytest.fixture
def out(tmp_path):
    out = tmp_path / "out"
    (out / "sample").mkdir(parents=True)
    for name in ("my_lora_000002_00_20260101000000_42.png", "my_lora_000002_01_20260101000000_43.png"):
        (out / "sample" / name).write_bytes(b"png")
    (out / "my_lora.safetensors").write_bytes(b"lora")
    return out


def test_the_front_matter_parses_with_the_fields_the_hub_reads(out):
    samples = [(out / "sample" / "my_lora_000002_00_20260101000000_42.png", "ohwx dog on a beach"),
               ("sample/my_lora_000002_01_20260101000000_43.png", 'ohwx dog, "studio" | portrait')]
    path = write_model_card(out, lora_file="my_lora.safetensors", base_model=SDXL, trigger_words=["ohwx dog"],
                            settings={"steps": "400", "rank / alpha": "16 / 8"}, samples=samples,
                            license="openrail++", tags=["dog"])
    assert path == out / "README.md"
    data = _load(path).data.to_dict()
    assert data == {
        "base_model": SDXL, "library_name": "diffusers", "license": "openrail++", "instance_prompt": "ohwx dog",
        "tags": ["lora", "stable-diffusion-xl", "text-to-image", "sdxl-lora", "dog"],
        "widget": [{"text": "ohwx dog on a beach",
                    "output": {"url": "sample/my_lora_000002_00_20260101000000_42.png"}},
                   {"text": 'ohwx dog, "studio" | portrait',
                    "output": {"url": "sample/my_lora_000002_01_20260101000000_43.png"}}],
    }
    text = _load(path).text
    assert "Use `ohwx dog` in the prompt." in text
    assert "| steps | 400 |" in text and "| rank / alpha | 16 / 8 |" in text
    assert "![ohwx dog on a beach](sample/my_lora_000002_00_20260101000000_42.png)" in text
    assert '![ohwx dog, "studio" \\| portrait](sample/my_lora_000002_01_20260101000000_43.png)' in text
    assert str(out) not in path.read_text(encoding="utf-8")  # links are relative
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_local_base_model_is_named_in_the_text_but_not_in_the_front_matter(out, tmp_path):
    base = tmp_path / "sd_xl_base_1.0.safetensors"
    base.write_bytes(b"x")
    path = write_model_card(out, lora_file="my_lora.safetensors", base_model=str(base))
    card = _load(path)
    assert "base_model" not in card.data.to_dict() and "instance_prompt" not in card.data.to_dict()
    assert "base model: `sd_xl_base_1.0.safetensors`" in card.text
    assert "None recorded for this run." in card.text
    assert str(tmp_path) not in path.read_text(encoding="utf-8")


DATASETS = [{
    "tag_frequency": {"10_ohwx dog": {"ohwx dog": 3}, "photos": {"zkz": 4, "cat": 4, "sofa": 2},
                      "1_dog": {"dog": 50}},
    "subsets": [{"image_dir": "photos", "img_count": 4, "class_tokens": None, "is_reg": False},
                {"image_dir": "1_dog", "img_count": 50, "class_tokens": "dog", "is_reg": True}],
}]


@pytest.mark.parametrize(("args", "datasets", "words"), [
    ({"metadata_trigger_phrase": "zkz cat"}, DATASETS, ["zkz cat"]),  # the user's phrase wins
    ({}, DATASETS, ["zkz", "cat"]),  # tags on all 4 captions of the training folder; regularisation ignored
    ({}, [{"tag_frequency": {}, "subsets": [
        {"image_dir": "10_ohwx dog", "img_count": 3, "class_tokens": "ohwx dog", "is_reg": False},
        {"image_dir": "5_ohwx dog", "img_count": 2, "class_tokens": "ohwx dog", "is_reg": False},
        {"image_dir": "1_dog", "img_count": 9, "class_tokens": "dog", "is_reg": True}]}], ["ohwx dog"]),
    ({}, [], []),
])
def test_trigger_words_come_from_what_the_run_knows(args, datasets, words):
    assert trigger_words(args, datasets) == words


def _cfg(tmp_path, *extra):
    make_images(tmp_path / "img" / "3_ohwx dog", [(64, 64)])
    parsed = parse_command_line([
        f"--pretrained_model_name_or_path={SDXL}", f"--train_data_dir={tmp_path / 'img'}",
        f"--output_dir={tmp_path / 'out'}", "--resolution=64,96", "--network_module=networks.lora",
        "--network_dim=16", "--network_alpha=8", "--learning_rate=1e-4", "--text_encoder_lr", "5e-5", "2e-5",
        "--optimizer_type=AdamW8bit", "--lr_scheduler=cosine", "--lr_warmup_steps=10", "--mixed_precision=bf16",
        "--save_precision=fp16", "--seed=42", "--train_batch_size=2", "--gradient_accumulation_steps=2",
        "--output_name=my_lora", f"--huggingface_token={TOKEN}", "--huggingface_repo_id=me/my-lora", *extra])
    return build_run_config(parsed.values, parsed.given)


def test_a_finished_run_gets_a_card_with_its_settings_and_no_token(tmp_path):
    cfg = _cfg(tmp_path, "--metadata_title=Ohwx the dog", "--metadata_tags=dog, pet")
    lora = tmp_path / "out" / "my_lora.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(b"lora")
    datasets = [{"tag_frequency": {}, "subsets": [{"image_dir": "3_ohwx dog", "img_count": 1,
                                                   "class_tokens": "ohwx dog", "is_reg": False}]}]
    path = card_for_run(cfg, lora, steps=400, epochs=100, datasets=datasets)
    assert path == tmp_path / "out" / "README.md"
    card = _load(path)
    assert card.data.to_dict()["tags"][-2:] == ["dog", "pet"]
    assert card.data.to_dict()["instance_prompt"] == "ohwx dog"
    rows = [line for line in card.text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [
        "| steps | 400 |", "| epochs | 100 |", "| network | networks.lora |", "| rank / alpha | 16 / 8 |",
        "| U-Net learning rate | 0.0001 |", "| text encoder learning rates | 5e-05 / 2e-05 |",
        "| optimizer | AdamW8bit |", "| scheduler | cosine, warmup 10 |", "| resolution | 64x96 |",
        "| batch size | 2 x 2 accumulation steps |", "| precision | bf16 mixed precision, saved as fp16 |",
        "| seed | 42 |",
    ]
    assert "# Ohwx the dog\n" in card.text
    assert TOKEN not in path.read_text(encoding="utf-8")


def test_the_card_and_its_images_are_uploaded_together(fake_hub, out):
    image = out / "sample" / "my_lora_000002_00_20260101000000_42.png"
    card = write_model_card(out, lora_file="my_lora.safetensors", base_model=SDXL, samples=[(image, "a dog")])
    hub = HubConfig(repo_id="me/my-lora", token=TOKEN, path_in_repo="runs/one")
    with Uploader(hub, endpoint=fake_hub.endpoint) as uploader:
        uploader.upload_card(card, [image])
    assert fake_hub.repo("me/my-lora").files == {"runs/one/README.md": card.read_bytes(),
                                                 f"runs/one/sample/{image.name}": b"png"}
    with Uploader(HubConfig(repo_id="me/root-card", token=TOKEN), endpoint=fake_hub.endpoint) as uploader:
        uploader.upload_card(card, [image])  # at the repo root it is the repo's card: the client validates it first
    assert set(fake_hub.repo("me/root-card").files) == {"README.md", f"sample/{image.name}"}
    assert fake_hub.seen("POST", "^/api/validate-yaml$")


def test_a_readme_this_program_did_not_write_is_left_alone(out, caplog):
    (out / "README.md").write_text("# My notes\n", encoding="utf-8")
    assert write_model_card(out, lora_file="my_lora.safetensors", base_model=SDXL) is None
    assert (out / "README.md").read_text(encoding="utf-8") == "# My notes\n"
    assert "is not a model card sdxl-lora wrote" in caplog.text
    (out / "README.md").unlink()
    first = write_model_card(out, lora_file="my_lora.safetensors", base_model=SDXL, trigger_words=["a"])
    second = write_model_card(out, lora_file="my_lora.safetensors", base_model=SDXL, trigger_words=["b"])
    assert first == second and "instance_prompt: b" in second.read_text(encoding="utf-8")  # our own card is replaced
