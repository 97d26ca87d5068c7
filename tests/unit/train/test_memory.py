"""The peak-memory estimate (train/memory.py) against hand-worked numbers, its monotonicity, and the warning of
the first steps with fake device numbers."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from sdxl_lora.train import memory, memory_counts
from sdxl_lora.train.memory import (
    ModelCounts,
    Settings,
    activation_bytes,
    estimate,
    gradient_bytes,
    near_limit_warning,
    state_bytes,
    weight_bytes,
)

# Four LoRA tensors: a rank-8 module on a 640 -> 640 Linear and a rank-4 module on a 320 -> 320 Linear.
SHAPES = ((8, 640), (640, 8), (4, 320), (320, 4))  # 5120 + 5120 + 1280 + 1280 = 12,800 weights
COUNTS = ModelCounts(weights={"unet": 1_000_000, "te1": 100_000, "te2": 300_000, "vae": 50_000},
                     fp8_weights={"unet": 900_000, "te1": 80_000, "te2": 250_000, "vae": 0},
                     lora_shapes={"unet": SHAPES})


def test_weight_bytes_fp16_against_fp8_by_hand():
    fp16 = weight_bytes(COUNTS, Settings(mixed_precision="fp16"))
    assert fp16 == {"unet": 2_000_000, "te1": 200_000, "te2": 600_000, "vae": 100_000}
    # --fp8_base: 900k U-Net weights in 1 byte, the other 100k (norms, conv_in, embeddings) stay 2 bytes.
    fp8 = weight_bytes(COUNTS, Settings(mixed_precision="fp16", fp8_base=True))
    assert fp8 == {"unet": 900_000 + 200_000, "te1": 80_000 + 40_000, "te2": 250_000 + 100_000, "vae": 100_000}
    # --fp8_base_unet: the text encoders stay 16-bit; --no_half_vae: the VAE in float32.
    unet_only = weight_bytes(COUNTS, Settings(mixed_precision="bf16", fp8_base_unet=True, no_half_vae=True))
    assert unet_only == {"unet": 1_100_000, "te1": 200_000, "te2": 600_000, "vae": 200_000}
    assert weight_bytes(COUNTS, Settings())["unet"] == 4_000_000  # no mixed precision: float32


def test_optimizer_state_adamw_against_adamw8bit_by_hand():
    # AdamW: two float32 moments per weight: 2 x 4 x 12,800.
    assert state_bytes("AdamW", SHAPES, 4) == 102_400
    # AdamW8bit: tensors of 4096+ weights keep 2 x (1 byte per weight + one float32 absmax per 256):
    #   2 x (5120 + 4 x 20) = 10,400 each; the 1280-weight tensors stay 32-bit: 2 x 4 x 1280 = 10,240 each.
    assert state_bytes("adamw8bit", SHAPES, 4) == 2 * 10_400 + 2 * 10_240
    assert state_bytes("Lion", SHAPES, 4) == 51_200
    assert state_bytes("Prodigy", SHAPES, 4) == 4 * 4 * 12_800
    assert state_bytes("AdamW", SHAPES, 2) == 51_200  # --full_bf16: moments in bf16
    # Adafactor: a float32 row (8) and column (640) vector for (8, 640): 4 x 648; for (640, 8): 4 x 648;
    # (4, 320) and (320, 4): 4 x 324 each. beta1 adds a float32 momentum: 4 x 12,800.
    factored = 2 * 4 * 648 + 2 * 4 * 324
    assert state_bytes("Adafactor", SHAPES, 4) == factored
    assert state_bytes("Adafactor", SHAPES, 4, {"beta1": 0.9}) == factored + 51_200
    conv = ((4, 320, 3, 3),)  # rows: 4 x 320 x 3 = 3840; columns: 4 x 320 x 3 = 3840
    assert state_bytes("Adafactor", conv, 4) == 4 * 7680


def test_gradients_fused_backward_keeps_only_the_largest():
    assert gradient_bytes(SHAPES, 4, fused=False) == 4 * 12_800
    assert gradient_bytes(SHAPES, 4, fused=True) == 4 * 5120


def test_activations_by_hand():
    # 1024 x 1024 -> 128 x 128 = 16,384 latent pixels; bf16, batch 1, checkpointing:
    # (38,600 x 16,384 - 42,000,000) x 1.1 allocator slack.
    s = Settings(mixed_precision="bf16", gradient_checkpointing=True)
    assert activation_bytes(s) == round((38_600 * 16_384 - 42_000_000) * 1.1)


def test_activations_monotone():
    base = Settings(mixed_precision="bf16")
    assert activation_bytes(replace(base, gradient_checkpointing=True)) < activation_bytes(base) / 5
    assert activation_bytes(replace(base, batch_size=2)) > 1.9 * activation_bytes(base)
    assert activation_bytes(replace(base, resolution=(768, 768))) < activation_bytes(base)
    assert activation_bytes(replace(base, mixed_precision="no")) == pytest.approx(2 * activation_bytes(base), 1e-9)
    assert activation_bytes(replace(base, train_text_encoder=True)) > activation_bytes(base)


def test_estimate_adds_up_and_caching_moves_encoders_off():
    s = Settings(mixed_precision="bf16", gradient_checkpointing=True, cache_latents=True,
                 cache_text_encoder_outputs=True)
    est = estimate(COUNTS, s)
    parts = dict(est.parts)
    assert parts["U-Net weights"] == 2_000_000
    assert parts["text encoder weights"] == 0 and parts["VAE weights"] == 0
    assert parts["LoRA weights"] == 4 * 12_800 and parts["optimizer state"] == 102_400
    assert est.training == sum(parts.values())
    # While caching, the VAE and both text encoders are on the device but not the U-Net (placed after caching):
    # 2 x (100k + 300k + 50k) weights, the VAE's working set at vae_batch_size 1 (640 x 2 bytes per pixel of
    # 1024 x 1024), the context. With --lowram and --base_weights the U-Net was loaded onto the device before
    # caching: 2 x 1M more.
    assert est.caching == 2 * 450_000 + 640 * 2 * 1024 * 1024 + memory.CUDA_CONTEXT
    assert estimate(COUNTS, replace(s, unet_while_caching=True)).caching == est.caching + 2 * 1_000_000
    live = estimate(COUNTS, replace(s, cache_latents=False, cache_text_encoder_outputs=False))
    assert dict(live.parts)["text encoder weights"] == 800_000 and live.caching == 0
    assert estimate(COUNTS, replace(s, gradient_checkpointing=False)).peak > est.peak
    assert estimate(COUNTS, replace(s, batch_size=4)).peak > est.peak
    assert estimate(COUNTS, replace(s, fp8_base=True)).peak < est.peak


def test_full_fp16_adds_float32_masters():
    s = Settings(mixed_precision="fp16", full_fp16=True)
    parts = dict(estimate(COUNTS, s).parts)
    assert parts["LoRA weights"] == 2 * 12_800 + 4 * 12_800
    assert parts["optimizer state"] == 102_400 and parts["LoRA gradients"] == 4 * 12_800


def test_suggestions_name_flags_not_set_and_each_lowers_the_training_phase():
    s = Settings(mixed_precision="bf16", batch_size=4)
    advice = dict(memory.suggestions(s))
    assert {"--gradient_checkpointing", "--cache_latents", "--fp8_base", "--optimizer_type AdamW8bit",
            "--optimizer_type Adafactor", "--full_bf16"} <= advice.keys()
    assert "--mixed_precision bf16" not in advice
    for name, changed in advice.items():
        assert estimate(COUNTS, changed).training < estimate(COUNTS, s).training, name
    done = Settings(mixed_precision="bf16", gradient_checkpointing=True, cache_latents=True, fp8_base=True,
                    cache_text_encoder_outputs=True, optimizer_type="AdamW8bit", full_bf16=True,
                    resolution=(512, 512))
    assert memory.suggestions(done) == []


def test_render_against_a_small_card_says_what_to_change():
    s = Settings(mixed_precision="bf16")
    peak = estimate(COUNTS, s).peak
    def gpu_line(lines):
        return next(line for line in lines if line.startswith("GPU "))

    lines = memory.render_estimate(COUNTS, s, device_total=peak, device_name="Fake 8GB")
    assert "within 5% of the card's memory" in gpu_line(lines)
    assert any(line.startswith("  try --gradient_checkpointing (estimate ") for line in lines)
    roomy = memory.render_estimate(COUNTS, s, device_total=peak * 2, device_name="Fake")
    assert "fits" in gpu_line(roomy) and not any("try" in line for line in roomy)
    assert "does not fit" in gpu_line(memory.render_estimate(COUNTS, s, device_total=peak // 2))


def test_full_size_counts_from_the_shipped_configs():
    """SDXL base's published parameter counts; the LoRA count worked out per transformer block: width C, FF inner
    4C (GEGLU projects to 8C), cross-attention from 2048: attn1 4 x 2C, attn2 2 x 2C + 2 x (2048 + C),
    ff (C + 8C) + (4C + C) = 28C + 4096 per unit rank, plus proj_in/out 2 x 2C per Transformer2DModel.
    Width 640: 10 blocks, 5 models -> 10 x 22,016 + 5 x 2,560 = 232,960; width 1280: 60 blocks, 6 models ->
    60 x 39,936 + 6 x 5,120 = 2,426,880; sum 2,659,840 x rank 8 = 21,278,720. Text encoders, per layer of
    width C and MLP width M: q, k, v, out 4 x 2C, fc1 + fc2 2 x (C + M): CLIP-L 12 x (6,144 + 7,680) = 165,888,
    bigG 32 x (10,240 + 12,800) = 737,280; sum 903,168 x 8 = 7,225,344."""
    from sdxl_lora.config.schema import NetworkConfig
    from sdxl_lora.models.configs import SUBFOLDER, shipped_config

    counts = memory_counts.count_models(NetworkConfig(network_dim=8), {c: shipped_config(c) for c in SUBFOLDER})
    assert counts.weights == {"unet": 2_567_463_684, "te1": 123_060_480, "te2": 694_659_840, "vae": 83_653_863}
    per_component = {c: sum(math.prod(s) for s in shapes) for c, shapes in counts.lora_shapes.items()}
    assert per_component["unet"] == 21_278_720 and len(counts.lora_shapes["unet"]) == 2 * 722
    assert per_component["te1"] + per_component["te2"] == 7_225_344
    # fp8 keeps conv_in (4 x 320 x 9 + 320 = 11,840), norms and embeddings 16-bit: most, not all, shrink.
    assert 0.98 * counts.weights["unet"] < counts.fp8_weights["unet"] < counts.weights["unet"] - 11_840
    assert counts.fp8_weights["vae"] == 0


def test_configs_of_a_single_file_are_the_folders_it_was_written_from(tiny_model_dir, tmp_path):
    from sdxl_lora.models.folder import folder_configs
    from sdxl_lora.models.single_file import write_single_file

    path = write_single_file(tiny_model_dir, tmp_path / "tiny.safetensors")
    configs, source = memory_counts.source_configs(str(path))
    assert configs == folder_configs(tiny_model_dir) and source == "the file's header"
    assert memory_counts.source_configs(str(tiny_model_dir)) == (configs, "the folder's configs")


def test_near_limit_warning_with_fake_numbers():
    s = Settings(mixed_precision="bf16", gradient_checkpointing=True)
    gib = 2**30
    assert near_limit_warning(3, int(22.7 * gib), 24 * gib, s) is None  # 94.6% of the card
    warning = near_limit_warning(3, int(22.9 * gib), 24 * gib, s)  # 95.4%
    assert "22.9 GiB of 24.0 GiB" in warning and "--cache_latents" in warning
    assert "--gradient_checkpointing" not in warning  # already on


class _FakeCuda:
    """device_peak's numbers for a 24 GiB card, step by step."""

    def __init__(self, peaks):
        self.peaks = list(peaks)
        self.calls = 0

    def __call__(self, device):
        self.calls += 1
        return self.peaks.pop(0), 24 * 2**30


def test_memory_watch_warns_once_in_the_first_steps(monkeypatch, tiny_cfg):
    fake = _FakeCuda([20 * 2**30, 23.5 * 2**30, 23.9 * 2**30])
    monkeypatch.setattr(memory_counts, "device_peak", fake)
    watch = memory_counts.MemoryWatch(tiny_cfg)
    cuda = torch.device("cuda")
    assert watch.after_step(1, cuda) is None
    assert "23.5 GiB of 24.0 GiB in the first 2 steps" in watch.after_step(2, cuda)
    assert watch.after_step(3, cuda) is None and fake.calls == 2  # warned once; not read again
    late = memory_counts.MemoryWatch(tiny_cfg)
    assert late.after_step(4, cuda) is None and fake.calls == 2  # only the first steps are read
    assert late.after_step(1, torch.device("cpu")) is None and fake.calls == 2


def test_the_watch_does_not_suggest_a_text_cache_that_training_already_made(tiny_cfg, monkeypatch):
    """Frozen encoders with fixed captions are cached without --cache_text_encoder_outputs: the loop says so."""
    monkeypatch.setattr(memory_counts, "device_peak", lambda device: (int(7.9 * 2**30), 8 * 2**30))
    cfg = replace(tiny_cfg, network=replace(tiny_cfg.network, train_text_encoder=False))
    assert not cfg.data.cache_text_encoder_outputs
    cuda = torch.device("cuda")
    told = memory_counts.MemoryWatch(cfg, text_cached=True).after_step(1, cuda)
    flags_only = memory_counts.MemoryWatch(cfg).after_step(1, cuda)
    assert "--cache_text_encoder_outputs" in flags_only
    assert "--cache_text_encoder_outputs" not in told


@pytest.fixture
def tiny_cfg(tmp_path, tiny_model_dir):
    from helpers import make_images
    from sdxl_lora.config.build import build_run_config
    from sdxl_lora.config.parser import parse_command_line

    root = tmp_path / "train"
    make_images(root / "1_cat", [(64, 64)])
    parsed = parse_command_line([f"--pretrained_model_name_or_path={tiny_model_dir}", f"--train_data_dir={root}",
                                 "--resolution=64", f"--output_dir={tmp_path / 'out'}", "--mixed_precision=bf16",
                                 "--network_module=networks.lora"])
    return build_run_config(parsed.values, parsed.given)
