"""Sample images through the real CLI (issue 11 item 1): sd-scripts' file names at the first step, every N steps
and at epoch ends, pixels that change as the LoRA trains, and the images in TensorBoard."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import train_keeping_result, two_image_dataset


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# two prompts\nimage 0, a test picture --w 64 --h 64 --d 5 --s 3\n"
                    "a red square --n blurry --w 64 --h 96 --s 3\n", encoding="utf-8")
    return path


def test_samples_named_as_sd_scripts_and_they_change_as_the_lora_trains(tiny_model_dir, prompts, tmp_path):
    dataset = two_image_dataset(tmp_path)
    out = tmp_path / "out"
    code, _ = train_keeping_result([
        f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={dataset}", f"--output_dir={out}",
        "--output_name=s", "--network_module=networks.lora", "--network_dim=4", "--learning_rate=5e-2",
        "--optimizer_type=AdamW", "--seed=4", "--max_train_steps=4", "--max_data_loader_n_workers=0",
        f"--sample_prompts={prompts}", "--sample_every_n_steps=2", "--sample_at_first",
        f"--logging_dir={tmp_path / 'logs'}"])
    assert code == 0
    names = sorted(p.name for p in (out / "sample").iterdir())
    # [<output_name>_]<num>_<index:02d>_<YYYYmmddHHMMSS>[_<seed>].png: e000000 at first, then the step numbers.
    stems = sorted("_".join(n.split("_")[:3]) + ("_5" if n.endswith("_5.png") else "") for n in names)
    assert stems == ["s_000002_00_5", "s_000002_01", "s_000004_00_5", "s_000004_01", "s_e000000_00_5",
                     "s_e000000_01"]
    first = next((out / "sample").glob("s_e000000_00_*_5.png"))
    last = next((out / "sample").glob("s_000004_00_*_5.png"))
    assert Image.open(first).size == (64, 64)
    assert Image.open(next((out / "sample").glob("s_000004_01_*.png"))).size == (64, 96)
    # Same prompt, same seed: the pixels differ only because the LoRA trained.
    assert np.abs(np.asarray(Image.open(first), dtype=int) - np.asarray(Image.open(last), dtype=int)).max() > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event = next((tmp_path / "logs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(event), size_guidance={"images": 0})
    acc.Reload()
    assert {"sample_0", "sample_1"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("sample_0")] == [0, 2, 4]
    # The model card links the last samples.
    card = (out / "README.md").read_text()
    assert last.name in card
