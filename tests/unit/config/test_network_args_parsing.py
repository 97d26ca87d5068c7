"""--network_args of networks.lora (spec 3.6, 3.7): parsed values worked out by hand, and every problem named."""

import math

import pytest

from sdxl_lora.config.network_args import network_args_warnings, parse_lora_args

ONES23 = ",".join(["1"] * 23)


def _ok(*args):
    parsed, problems = parse_lora_args(list(args))
    assert problems == []
    return parsed


def test_nothing_given():
    parsed = _ok()
    assert parsed.conv_dim is None and parsed.block_lr_weight is None and not parsed.uses_blocks


def test_conv_dim_defaults_conv_alpha_to_one():
    parsed = _ok("conv_dim=8")
    assert (parsed.conv_dim, parsed.conv_alpha, parsed.uses_conv) == (8, 1.0, True)
    assert _ok("conv_dim=8", "conv_alpha=4").conv_alpha == 4.0


def test_floats_and_values_split_on_the_first_equals_sign():
    parsed = _ok("rank_dropout=0.1", "module_dropout = 0.25", "loraplus_lr_ratio=16")
    assert (parsed.rank_dropout, parsed.module_dropout, parsed.loraplus_lr_ratio) == (0.1, 0.25, 16.0)


def test_block_dims_need_23_values_and_give_ints():
    dims = ",".join(str(i % 5) for i in range(23))
    parsed = _ok(f"block_dims={dims}", f"block_alphas={ONES23}")
    assert parsed.block_dims[:6] == (0, 1, 2, 3, 4, 0) and parsed.uses_blocks
    _, problems = parse_lora_args(["block_dims=4,4,4"])
    assert problems == ["--network_args block_dims=4,4,4: needs 23 comma-separated values (one per SDXL U-Net "
                        "block), got 3"]


@pytest.mark.parametrize(("preset", "expected"), [
    ("linear", [0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1]),
    ("reverse_linear", [1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0]),
    ("zeros+0.5", [0.5] * 9),
    # sin(pi/2 * i/8) for i = 0..8: sin 0, 11.25, 22.5, 33.75, 45, 56.25, 67.5, 78.75, 90 degrees
    ("sine", [0, 0.19509, 0.38268, 0.55557, 0.70711, 0.83147, 0.92388, 0.98079, 1]),
    ("cosine+.25", [1.25, 1.23079, 1.17388, 1.08147, 0.95711, 0.80557, 0.63268, 0.44509, 0.25]),
])
def test_down_lr_weight_presets(preset, expected):
    weights = _ok(f"down_lr_weight={preset}").block_lr_weight
    # threshold 0: weights of 0 stay 0; the rest of the 23-vector is 1.0
    assert len(weights) == 23 and weights[0] == 1.0 and weights[10:] == (1.0,) * 13
    assert all(math.isclose(w, e, abs_tol=1e-5) for w, e in zip(weights[1:10], expected, strict=True))


def test_block_lr_vector_layout_threshold_padding_and_empty_entries():
    weights = _ok("down_lr_weight=0,0,0,0,0,1,1,1,1", "mid_lr_weight=0.5", "up_lr_weight=,0.05,0.2",
                  "block_lr_zero_threshold=0.1").block_lr_weight
    assert weights == (1.0,                      # block 0 (time/label embedding)
                       0, 0, 0, 0, 0, 1, 1, 1, 1,  # down: input_blocks 0-8 = blocks 1-9
                       0.5, 1, 1,                # mid: blocks 10-12, padded with 1.0
                       0, 0, 0.2, 1, 1, 1, 1, 1, 1,  # up: "" = 0, 0.05 <= 0.1 -> 0, padded with 1.0
                       1.0)                      # block 22 (out)
    assert network_args_warnings(["mid_lr_weight=0.5", "up_lr_weight=,0.05,0.2", "block_dims=" + ONES23]) == [
        "--network_args block_dims without block_alphas: every block uses --network_alpha",
        "--network_args mid_lr_weight: 1 values for 3 blocks, padded with 1.0",
        "--network_args up_lr_weight: 3 values for 9 blocks, padded with 1.0",
    ]


def test_too_long_lr_weights_are_truncated():
    weights = _ok("up_lr_weight=" + ",".join(["0.5"] * 12)).block_lr_weight
    assert weights[13:22] == (0.5,) * 9 and len(weights) == 23


@pytest.mark.parametrize(("arg", "message"), [
    ("conv_dims=8", "--network_args conv_dims: unknown key for networks.lora (did you mean conv_dim?)"),
    ("dropout=0.1", "--network_args dropout: unknown key for networks.lora (networks.lora takes neuron dropout "
                    "from --network_dropout)"),
    ("conv_dim", "--network_args 'conv_dim': expected key=value"),
    ("conv_dim=four", "--network_args conv_dim=four: invalid literal for int() with base 10: 'four'"),
    ("rank_dropout=1", "--network_args rank_dropout=1.0: must be in [0, 1)"),
    ("loraplus_lr_ratio=0", "--network_args loraplus_lr_ratio=0.0: must be above 0"),
    ("down_lr_weight=0.5", "--network_args down_lr_weight=0.5: not a preset (sine, cosine, linear, "
                           "reverse_linear, zeros, optionally +offset) and not a comma-separated list of 9 values"),
    ("block_dims=" + ",".join(["4.5"] * 23), "ranks must be whole numbers"),
    ("conv_alpha=nan", "--network_args conv_alpha=nan: must be a finite number"),
])
def test_each_problem_names_the_key(arg, message):
    _, problems = parse_lora_args([arg])
    assert len(problems) == 1 and message in problems[0]


def test_every_problem_is_reported_at_once():
    _, problems = parse_lora_args(["conv_dims=8", "rank_dropout=2", "block_alphas=1"])
    assert len(problems) == 3
