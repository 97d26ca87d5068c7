"""--lr_warmup_steps from text to steps (spec 1.7, 9.2), numbers worked out by hand."""

from __future__ import annotations

import pytest

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.train.steps import warmup_steps


def warmup_for(text: str, total: int) -> int:
    return warmup_steps(parse_command_line(["--lr_warmup_steps", text]).values["lr_warmup_steps"], total)


@pytest.mark.parametrize(("text", "total", "steps"), [
    ("10", 1600, 10),       # an integer is a step count
    ("0", 1600, 0),
    ("1", 1600, 1),         # one step, not a fraction
    ("0.1", 1600, 160),     # 0.1 x 1600
    ("0.1", 25, 2),         # 0.1 x 25 = 2.5, rounded down
    ("5%", 30, 1),          # 0.05 x 30 = 1.5, rounded down
    ("10%", 200, 20),
    ("29%", 100, 29),       # 0.29 x 100 is 28.999999999999996 in floating point
    ("100%", 30, 30),       # all steps (issue 7: it used to be read as 1 step)
    ("100%", 1, 1),
    ("150%", 10, 15),       # N/100 of the total whatever N is
    ("0%", 500, 0),
])
def test_warmup_text_to_steps(text, total, steps):
    assert warmup_for(text, total) == steps


def test_lr_decay_steps_parse_the_same_way():
    values = parse_command_line(["--lr_decay_steps", "100%"]).values
    assert warmup_steps(values["lr_decay_steps"], 40) == 40


def test_a_float_of_one_or_more_on_the_command_line_is_refused():
    with pytest.raises(ConfigError, match="--lr_warmup_steps: invalid value 1.0"):
        parse_command_line(["--lr_warmup_steps", "1.0"])


@pytest.mark.parametrize(("line", "total", "steps"), [
    ("lr_warmup_steps = 0.1", 1600, 160),     # kohya_ss GUI configs write a fraction like this
    ("lr_warmup_steps = 12", 1600, 12),
    ('lr_warmup_steps = "100%"', 7, 7),
    ('lr_warmup_steps = "12"', 1600, 12),
])
def test_config_file_values_to_steps(tmp_path, line, total, steps):
    config = tmp_path / "run.toml"
    config.write_text(line + "\n")
    values = parse_command_line(["--config_file", str(config)]).values
    assert warmup_steps(values["lr_warmup_steps"], total) == steps


def test_output_config_writes_100_percent_so_that_it_reads_back(tmp_path):
    from sdxl_lora.config.parser import write_output_config

    config = tmp_path / "out.toml"
    parsed = parse_command_line(["--lr_warmup_steps", "100%", "--output_config", "--config_file", str(config)])
    write_output_config(parsed)
    assert config.read_text() == 'lr_warmup_steps = "100.0%"\n'
    reread = parse_command_line(["--config_file", str(config)]).values["lr_warmup_steps"]
    assert warmup_steps(reread, 9) == 9
