"""--network_args of lycoris.kohya: LyCORIS' keys and aliases, strict booleans, and what UIs could not load."""

from __future__ import annotations

import pytest

from sdxl_lora.config.lycoris_args import LycorisArgs, parse_lycoris_args


def test_gui_style_args_are_parsed():
    args, problems = parse_lycoris_args(["algo=LoKr", "conv_dim=8", "conv_alpha=4", "dropout=0.1", "factor=8",
                                         "preset=attn-mlp", "use_tucker=True", "use_scalar=false",
                                         "rank_dropout=0.2", "module_dropout=0.05", "dora_wd=true"])
    assert problems == []
    assert args == LycorisArgs(algo="lokr", conv_dim=8, conv_alpha=4.0, dropout=0.1, factor=8, preset="attn-mlp",
                               use_tucker=True, use_scalar=False, rank_dropout=0.2, module_dropout=0.05,
                               dora_wd=True)


def test_old_spellings_map_as_lycoris_reads_them():
    assert parse_lycoris_args(["disable_conv_cp=False"])[0].use_tucker is True
    assert parse_lycoris_args(["disable_conv_cp=True"])[0].use_tucker is False
    assert parse_lycoris_args(["use_conv_cp=true"])[0].use_tucker is True
    assert parse_lycoris_args(["constrain=0.5"])[0].constraint == 0.5


@pytest.mark.parametrize(("arg", "named"), [
    ("conv_dims=4", "conv_dims: unknown key for lycoris.kohya (did you mean conv_dim"),
    ("use_tucker=0", "use_tucker=0: must be true or false"),
    ("algo=tlora", "algo=tlora: no A1111/ComfyUI loader"),
    ("algo=lorax", "algo=lorax: not a LyCORIS algorithm"),
    ("rs_lora=true", "rs_lora=true: refused"),
    ("preset=my_preset.toml", "preset=my_preset.toml: only LyCORIS' built-in presets"),
    ("dropout=1.5", "dropout=1.5: must be in [0, 1)"),
])
def test_each_problem_names_its_key(arg, named):
    problems = parse_lycoris_args(["algo=loha", arg] if not arg.startswith("algo") else [arg])[1]
    assert len(problems) == 1 and named in problems[0], problems


def _problems(**extra) -> list[str]:
    from sdxl_lora.config.rules import check_rules

    values = {"network_module": "lycoris.kohya", "network_args": ["algo=loha"], **extra}
    return [p for p in check_rules(values) if "lycoris" in p or "network_args" in p]


def test_formats_uis_cannot_read_are_refused():
    text = "\n".join(_problems(save_model_as="diffusers_safetensors", dim_from_weights=True,
                               network_weights="x.safetensors"))
    assert "--save_model_as diffusers_safetensors with lycoris.kohya" in text
    assert "--dim_from_weights with lycoris.kohya" in text
    assert _problems(save_model_as="safetensors") == []


def test_unknown_key_reaches_the_rules():
    problems = _problems(network_args=["algo=loha", "conv_dims=4"])
    assert len(problems) == 1 and problems[0].startswith("--network_args conv_dims: unknown key")


def test_missing_package_is_one_line_with_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lycoris" else real(name, *a))
    line = next(p for p in _problems() if "lycoris-lora" in p)
    assert "pip install 'lycoris-lora==4.1.3'" in line and "\n" not in line
