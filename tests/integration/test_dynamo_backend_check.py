"""--dynamo_backend is checked before any model loads: one line naming the flag, exit status 2. The parser
knows sd-scripts' backend names; fx2trt is one of them that this torch does not have."""

from __future__ import annotations

import pytest

import sdxl_lora.models.load as load
from helpers import make_images, write_toml
from sdxl_lora.cli import main


@pytest.fixture
def argv(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(load, "load_sdxl", lambda *_: pytest.fail("the backend is checked before the model loads"))
    images = make_images(tmp_path / "img", [(64, 64)])
    toml = write_toml(tmp_path / "ds.toml", (
        f"[[datasets]]\nresolution = 64\n  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n"))
    return [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={toml}",
            f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora", "--max_train_steps=1", "--seed=1"]


@pytest.mark.parametrize("command", [[], ["check"]])
def test_an_unknown_backend_stops_the_run_before_loading(argv, capsys, command):
    code = main([*command, *argv, "--torch_compile", "--dynamo_backend=fx2trt"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1
    assert "--dynamo_backend fx2trt" in lines[0] and "inductor" in lines[0]


def test_without_torch_compile_the_backend_is_not_used_and_not_checked(argv, capsys):
    assert main(["check", *argv, "--dynamo_backend=fx2trt"]) == 0
