"""Sample prompt files (spec 8.1): the three formats give the same prompts; what is ignored is reported; bad
values are one error naming the file and line or key."""

from __future__ import annotations

import json

import pytest

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.sample.prompts import SamplePrompt, load_prompts

TXT = """\
# three prompts; this line and the blank one are skipped
a cat in a hat --w 512 --h 768 --d 42 --s 20 --l 5.5 --n blurry, lowres

a dog --ss DDIM --W 1001 --H 60 --s 20
a bird --s 20 --d -1
"""

TOML = """\
[prompt]
sample_steps = 20

[[prompt.subset]]
prompt = "a cat in a hat"
width = 512
height = 768
seed = 42
scale = 5.5
negative_prompt = "blurry, lowres"

[[prompt.subset]]
prompt = "a dog"
sample_sampler = "DDIM"
width = 1001
height = 60

[[prompt.subset]]
prompt = "a bird"
seed = -1
"""

JSON = [
    {"prompt": "a cat in a hat", "width": 512, "height": 768, "seed": 42, "sample_steps": 20, "scale": 5.5,
     "negative_prompt": "blurry, lowres"},
    "a dog --ss DDIM --W 1001 --H 60 --s 20",
    {"prompt": "a bird", "sample_steps": 20, "seed": -1},
]

EXPECTED = [
    SamplePrompt(prompt="a cat in a hat", negative_prompt="blurry, lowres", width=512, height=768, seed=42,
                 steps=20, scale=5.5, sampler="euler_a", index=0),
    # 1001 floors to 1000 (a multiple of 8); 60 is raised to the minimum 64; sampler names are case-insensitive
    SamplePrompt(prompt="a dog", negative_prompt=None, width=1000, height=64, seed=None, steps=20, scale=7.5,
                 sampler="ddim", index=1),
    # no size: SDXL's 1024x1024; seed -1: random
    SamplePrompt(prompt="a bird", negative_prompt=None, width=1024, height=1024, seed=None, steps=20, scale=7.5,
                 sampler="euler_a", index=2),
]


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, text", [("p.txt", TXT), ("p.toml", TOML), ("p.json", json.dumps(JSON)),
                                        ("P.TXT", TXT)])
def test_the_three_formats_give_the_same_prompts(tmp_path, name, text):
    prompts, warnings = load_prompts(_write(tmp_path, name, text), "euler_a")
    assert prompts == EXPECTED
    assert any("1001 -> 1000" in w for w in warnings) and any("60 -> 64" in w for w in warnings)


def test_the_default_sampler_is_the_runs(tmp_path):
    prompts, _ = load_prompts(_write(tmp_path, "p.txt", "a\nb --ss heun\n"), "dpmsolver++")
    assert [p.sampler for p in prompts] == ["dpmsolver++", "heun"]


def test_unknown_and_unused_options_are_reported_with_file_and_line(tmp_path):
    path = _write(tmp_path, "p.txt", "a --width 512 --g 3.5 --cn control.png\n\nb --ss k_magic --ctr 0.5\n")
    prompts, warnings = load_prompts(path, "euler_a")
    assert [(p.prompt, p.width, p.sampler) for p in prompts] == [("a", 1024, "euler_a"), ("b", 1024, "euler_a")]
    assert warnings == [
        f"{path}:1: unknown option --width, ignored (known: --w, --h, --d, --s, --l, --n, --ss)",
        f"{path}:1: --g (guidance scale) is not used for SDXL; ignored",
        f"{path}:1: --cn (ControlNet image) is not used for SDXL; ignored",
        f"{path}:3: --ctr (CFG truncation) is not used for SDXL; ignored",
        f"{path}:3: unknown sampler 'k_magic', using euler_a (known: ddim, ddpm, pndm, lms, k_lms, euler, k_euler, "
        "euler_a, k_euler_a, dpmsolver, dpmsolver++, dpmsingle, heun, dpm_2, k_dpm_2, dpm_2_a, k_dpm_2_a)",
    ]


def test_unknown_keys_are_reported_with_their_key_path(tmp_path):
    path = _write(tmp_path, "p.toml", '[prompt]\nsteps = 3\n[[prompt.subset]]\nprompt = "a"\n'
                                      'controlnet_image = "c.png"\n[other]\nx = 1\n')
    _, warnings = load_prompts(path)
    assert warnings == [
        f"{path}: other: unknown table or key, ignored",
        f"{path}: prompt.steps: unknown key, ignored (known: prompt, negative_prompt, width, height, seed, "
        "sample_steps, scale, sample_sampler)",
        f"{path}: prompt.subset[0].controlnet_image (ControlNet image) is not used for SDXL; ignored",
    ]


def test_steps_are_brought_into_range_and_prompt_weighting_is_flagged(tmp_path):
    prompts, warnings = load_prompts(_write(tmp_path, "p.txt", "a --s 0\n(b:1.2) --s 5000\n"))
    assert [p.steps for p in prompts] == [1, 1000]
    assert any(":2: brackets are passed to the text encoders as written" in w for w in warnings)


@pytest.mark.parametrize("name, text, message", [
    ("p.txt", "a\nb --w wide\n", "p.txt:2: --w: expected an integer, got 'wide'"),
    ("p.txt", "a --l -2\n", "p.txt:1: --l: the CFG scale must be a finite number, not negative; got -2.0"),
    ("p.txt", "a --d -5\n", "p.txt:1: --d: a seed must be in [0, 2^64), or -1 for a random one; got -5"),
    ("p.toml", '[prompt]\nwidth = 512\n[[prompt.subset]]\nprompt = "a"\nwidth = 768\n',
     "p.toml: prompt.subset[0].width: also set in [prompt]; a key may be in only one of them"),
    ("p.toml", '[prompt]\n[[prompt.subset]]\nprompt = "a"\nheight = "512"\n',
     "p.toml: prompt.subset[0].height: expected an integer, got '512'"),
    ("p.toml", 'prompt = "a"\n', "p.toml: expected a [prompt] table of defaults and [[prompt.subset]] entries"),
    ("p.toml", "[prompt\n", "p.toml: not valid TOML"),
    ("p.json", '{"prompt": "a"}', "p.json: expected a JSON list of prompts"),
    ("p.json", '["a", 3]', "p.json: [1]: expected an object or a string, got int"),
    ("p.json", '[{"prompt": "a", "scale": true}]', "p.json: [0].scale: expected a number, got True"),
    ("p.json", '[{"prompt": 1}]', "p.json: [0].prompt: expected a string, got 1"),
    ("p.json", "[", "p.json: not valid JSON"),
    ("p.csv", "a\n", "p.csv: expected a .txt, .toml or .json file"),
])
def test_bad_input_is_one_line_naming_the_file_and_place(tmp_path, name, text, message):
    with pytest.raises(ConfigError) as error:
        load_prompts(_write(tmp_path, name, text))
    assert len(error.value.problems) == 1
    assert error.value.problems[0].startswith(f"--sample_prompts {tmp_path / message}")


def test_an_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_prompts(tmp_path / "missing.txt")


def test_a_sampler_whose_package_is_missing_is_refused_naming_where_it_was_chosen(tmp_path, monkeypatch):
    from sdxl_lora.sample import prompts as module

    monkeypatch.setattr(module, "missing_package", lambda name: "scipy" if name in ("lms", "k_lms") else None)
    path = _write(tmp_path, "p.txt", "a\nb --ss K_LMS\n")
    with pytest.raises(ConfigError) as error:
        load_prompts(path, "euler_a")
    assert error.value.problems == [f"--sample_prompts {path}:2: sampler k_lms needs scipy: pip install scipy"]
    with pytest.raises(ConfigError) as error:
        load_prompts(_write(tmp_path, "q.txt", "a\n"), "lms")
    assert error.value.problems == ["--sample_sampler lms needs scipy: pip install scipy"]


def test_pndm_with_fewer_than_4_steps_is_refused_before_training(tmp_path):
    path = _write(tmp_path, "p.txt", "a --ss pndm --s 4\nb --s 3\n")
    with pytest.raises(ConfigError) as error:
        load_prompts(path, "pndm")
    assert error.value.problems == [f"--sample_sampler pndm needs at least 4 steps; {path}:2 asks for 3"]
