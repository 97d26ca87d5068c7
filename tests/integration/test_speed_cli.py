"""Work the step no longer repeats (issue 12): frozen text encoders with fixed captions run once, before training,
and give the conditioning the live encoders give; the frozen models are released once nothing needs them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_images, train_keeping_result, write_toml
from sdxl_lora.data import sources
from sdxl_lora.train import loop, setup

AUTO = "their outputs for"


def _dataset(tmp_path, subset_extra: str = ""):
    images = make_images(tmp_path / "images", [(64, 64)] * 2)
    return write_toml(tmp_path / "dataset.toml", (
        "[[datasets]]\nresolution = 64\nbatch_size = 1\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"
        f"  caption_prefix = 'photo of'\n  caption_dropout_every_n_epochs = 2\n{subset_extra}"))


def _argv(model, toml, out, *extra):
    return [f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}", f"--output_dir={out}",
            "--output_name=lora", "--network_module=networks.lora", "--network_dim=4", "--learning_rate=1e-2",
            "--seed=3", "--max_train_steps=4", "--max_data_loader_n_workers=0", "--network_train_unet_only",
            *extra]


def _log(capsys) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


class Calls:
    """Counts the live text encoders' steps and the loader's tokenizing."""

    def __init__(self, monkeypatch):
        self.encoded = self.tokenized = 0
        conditioning, tokenize = sources.EncoderText.conditioning, loop.tokenize

        def counted_conditioning(source, batch):
            self.encoded += 1
            return conditioning(source, batch)

        def counted_tokenize(*args, **kwargs):
            self.tokenized += 1
            return tokenize(*args, **kwargs)

        monkeypatch.setattr(sources.EncoderText, "conditioning", counted_conditioning)
        monkeypatch.setattr(loop, "tokenize", counted_tokenize)


def test_frozen_encoders_with_fixed_captions_are_cached_and_train_what_the_live_encoders_train(
        tiny_model_dir, tmp_path, monkeypatch, capsys):
    toml = _dataset(tmp_path)
    with monkeypatch.context() as live_only:
        live_only.setattr(setup, "auto_text_cache", lambda *args: False)
        live_calls = Calls(live_only)
        code, live = train_keeping_result(_argv(tiny_model_dir, toml, tmp_path / "live"))
    assert code == 0 and live_calls.encoded == 4 and live_calls.tokenized == 4
    assert AUTO not in _log(capsys)
    calls = Calls(monkeypatch)
    code, cached = train_keeping_result(_argv(tiny_model_dir, toml, tmp_path / "cached"))
    assert code == 0
    assert calls.encoded == 0 and calls.tokenized == 0, "the step still runs the encoders or the tokenizers"
    assert _log(capsys).count(AUTO) == 1
    # 2 epochs of 2 images: the second trains with the empty caption (caption_dropout_every_n_epochs), cached too.
    torch.testing.assert_close(cached.losses, live.losses, rtol=0, atol=0)
    ours = load_file(tmp_path / "cached" / "lora.safetensors")
    theirs = load_file(tmp_path / "live" / "lora.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


@pytest.mark.parametrize("subset_extra", ["  shuffle_caption = true\n", "  caption_dropout_rate = 0.5\n",
                                          "  caption_tag_dropout_rate = 0.5\n", "  token_warmup_step = 2\n",
                                          "  enable_wildcard = true\n"])
def test_captions_that_change_per_step_keep_the_live_encoders(tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                               subset_extra):
    calls = Calls(monkeypatch)
    code, _ = train_keeping_result(_argv(tiny_model_dir, _dataset(tmp_path, subset_extra), tmp_path / "out",
                                         "--max_train_steps=2"))
    assert code == 0 and calls.encoded == 2 and calls.tokenized == 2
    assert AUTO not in _log(capsys)


def test_training_text_encoders_keep_them_live(tiny_model_dir, tmp_path, monkeypatch):
    calls = Calls(monkeypatch)
    argv = [a for a in _argv(tiny_model_dir, _dataset(tmp_path), tmp_path / "out", "--max_train_steps=2")
            if a != "--network_train_unet_only"]
    code, _ = train_keeping_result(argv)
    assert code == 0 and calls.encoded == 2


def _device(module) -> str:
    return next(module.parameters()).device.type


def test_frozen_models_are_freed_once_their_outputs_are_cached_unless_samples_need_them(tiny_model_dir, tmp_path):
    toml = _dataset(tmp_path)
    code, freed = train_keeping_result(_argv(tiny_model_dir, toml, tmp_path / "freed", "--cache_latents",
                                             "--max_train_steps=2"))
    assert code == 0
    assert {_device(m) for m in (freed.models.vae, freed.models.text_encoder_1, freed.models.text_encoder_2)} \
        == {"meta"}
    assert _device(freed.models.unet) == "cpu"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a test picture --w 64 --h 64 --s 2\n", encoding="utf-8")
    code, kept = train_keeping_result(_argv(tiny_model_dir, toml, tmp_path / "kept", "--cache_latents",
                                            "--max_train_steps=2", f"--sample_prompts={prompts}",
                                            "--sample_every_n_steps=2"))
    assert code == 0 and list((tmp_path / "kept" / "sample").glob("*.png"))
    assert {_device(m) for m in (kept.models.vae, kept.models.text_encoder_1, kept.models.text_encoder_2)} \
        == {"cpu"}


def test_torch_compile_trains_two_buckets_without_recompiling_and_saves_the_same_keys(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    """Two buckets of two images (128x128 and 160x96, batch 2): the second bucket's latents (20x12 after 16x16)
    reuse the graph compiled for the first. (A batch of 1 would compile once more: torch specializes sizes 0
    and 1.)"""
    import torch._dynamo

    images = make_images(tmp_path / "images", [(64, 64), (96, 64), (64, 64), (96, 64)])
    toml = write_toml(tmp_path / "buckets.toml", (
        "[general]\nenable_bucket = true\nmin_bucket_reso = 64\nmax_bucket_reso = 256\nbucket_reso_steps = 32\n"
        "[[datasets]]\nresolution = 128\nbatch_size = 2\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"))
    # --seed 1 orders the square bucket first (a square first trace is the case that used to recompile).
    argv = _argv(tiny_model_dir, toml, tmp_path / "plain", "--cache_latents", "--max_train_steps=4", "--seed=1")
    code, plain = train_keeping_result(argv)
    assert code == 0
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    compiled_argv = [*argv, "--torch_compile", "--dynamo_backend=eager"]
    compiled_argv[2] = f"--output_dir={tmp_path / 'compiled'}"
    code, compiled = train_keeping_result(compiled_argv)
    assert code == 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    ours = load_file(tmp_path / "compiled" / "lora.safetensors")
    theirs = load_file(tmp_path / "plain" / "lora.safetensors")
    assert ours.keys() == theirs.keys()
    torch.testing.assert_close(compiled.losses, plain.losses, rtol=1e-4, atol=1e-6)
