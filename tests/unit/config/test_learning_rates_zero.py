"""All learning rates 0 is refused up front (the optimizer would get no parameters)."""

from __future__ import annotations

import pytest

from sdxl_lora.config.build import normalize
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.config.rules import check_rules

MESSAGE = "every learning rate is 0 (--learning_rate, --unet_lr, --text_encoder_lr): nothing would train"


def _problems(*argv: str) -> list[str]:
    values, _ = normalize(parse_command_line(list(argv)).values, frozenset())
    return check_rules(values)


@pytest.mark.parametrize("argv, refused", [
    (["--learning_rate=0"], True),
    (["--learning_rate=0", "--unet_lr=1e-4"], False),
    (["--learning_rate=0", "--text_encoder_lr=1e-5"], False),
    (["--learning_rate=0", "--text_encoder_lr", "0", "1e-5"], False),
    (["--learning_rate=1e-4", "--unet_lr=0", "--text_encoder_lr=0"], True),
    (["--learning_rate=0", "--text_encoder_lr=1e-5", "--network_train_unet_only"], True),
    (["--learning_rate=0", "--unet_lr=1e-4", "--network_train_text_encoder_only"], True),
    (["--learning_rate=1e-4"], False),
])
def test_all_zero_learning_rates_are_refused(argv, refused):
    assert (MESSAGE in _problems(*argv)) is refused
