"""Bad input: one clear line naming the culprit, exit status 2, no traceback, no model loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import make_images, write_toml
from sdxl_lora.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _toml(tmp_path, image_dir, steps=32):
    return write_toml(tmp_path / "ds.toml", (
        f"[[datasets]]\nresolution = 64\nenable_bucket = true\nbucket_reso_steps = {steps}\n"
        "min_bucket_reso = 32\nmax_bucket_reso = 128\n"
        f"  [[datasets.subsets]]\n  image_dir = '{Path(image_dir).as_posix()}'\n"))


def _run(capsys, model, toml, out, *extra):
    code = main([f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}", f"--output_dir={out}",
                 "--network_module=networks.lora", *extra])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def test_missing_model_folder(tmp_path, capsys):
    toml = _toml(tmp_path, make_images(tmp_path / "img", [(64, 64)]))
    code, lines = _run(capsys, tmp_path / "no_such_model", toml, tmp_path / "out")
    assert code == 2 and len(lines) == 1
    assert "--pretrained_model_name_or_path" in lines[0] and "no_such_model" in lines[0]


def test_dataset_folder_without_images(tmp_path, capsys, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    code, lines = _run(capsys, tiny_model_dir, _toml(tmp_path, tmp_path / "empty"), tmp_path / "out")
    assert code == 2 and len(lines) == 1
    assert "image_dir" in lines[0] and "empty" in lines[0]


def test_bucket_steps_not_multiple_of_32(tmp_path, capsys):
    toml = _toml(tmp_path, make_images(tmp_path / "img", [(64, 64)]), steps=20)
    code, lines = _run(capsys, tmp_path / "model_never_opened", toml, tmp_path / "out")
    assert code == 2
    assert any("bucket_reso_steps" in line and "32" in line for line in lines)


def test_unknown_flag_suggests(tmp_path, capsys):
    code = main(["--lerning_rate=1e-4"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1
    assert "--lerning_rate" in lines[0] and "--learning_rate" in lines[0]


def test_not_yet_supported_flag_is_refused_not_ignored(tmp_path, capsys):
    toml = _toml(tmp_path, make_images(tmp_path / "img", [(64, 64)]))
    code, lines = _run(capsys, tmp_path / "m", toml, tmp_path / "out", "--debug_dataset")
    assert code == 2 and any("--debug_dataset" in line and "not supported yet" in line for line in lines)


def test_shim_runs_as_script_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "sdxl_train_network.py"), "--output_dir", str(tmp_path),
                           "--no_such_flag"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--no_such_flag" in proc.stderr


def test_missing_vae_is_reported_before_any_weight_is_read(tmp_path, capsys, tiny_model_dir, monkeypatch):
    """Issue 7: a missing --vae used to surface only after the U-Net had loaded."""
    import sdxl_lora.models.load as load

    reads = []

    def no_reading(*args, **kwargs):
        reads.append(args)
        raise AssertionError("a model weight was read")

    monkeypatch.setattr(load, "load_component", no_reading)
    monkeypatch.setattr(load, "read_single_file", no_reading)
    monkeypatch.setattr(load, "read_vae_file", no_reading)
    toml = _toml(tmp_path, make_images(tmp_path / "img", [(64, 64)]))
    vae = tmp_path / "vaes" / "sdxl_vae.safetensors"
    for command in ([], ["check"], ["check", "--json"]):
        code = main([*command, f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={toml}",
                     f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora", f"--vae={vae}",
                     "--max_train_steps=1"])
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert code == 2 and lines == [f"sdxl-lora: error: --vae {vae}: no such file or folder, and not a hub id "
                                       "(owner/name)"], captured.err
        assert captured.out == ""
    assert reads == []
