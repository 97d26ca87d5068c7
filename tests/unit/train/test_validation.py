"""Validation loss (spec 1.13, 5.8): timesteps, when it is due, the averaged fixed-noise loss, and a run of it on
the tiny SDXL that leaves training exactly as it was."""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_images, write_toml
from sdxl_lora.config.schema import ValidationConfig
from sdxl_lora.train.validation import (
    at_timestep,
    validation_due,
    validation_loss,
    validation_timesteps,
)


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0, 1000, [200, 400, 600, 800]),  # spec 5.8
    (0, 999, [199, 399, 599, 799]),  # 199.8, ... truncated
    (100, 900, [260, 420, 580, 740]),
    (500, 500, [500, 500, 500, 500]),
])
def test_validation_timesteps_by_hand(low, high, expected):
    assert validation_timesteps(low, high) == expected


@pytest.mark.parametrize(("cfg", "step", "epoch", "due"), [
    (ValidationConfig(), 4, None, False),  # no --validate_every_n_steps: never on steps
    (ValidationConfig(every_n_steps=3), 6, None, True),
    (ValidationConfig(every_n_steps=3), 7, None, False),
    (ValidationConfig(), None, 1, True),  # no --validate_every_n_epochs: every epoch
    (ValidationConfig(every_n_epochs=2), None, 1, False),
    (ValidationConfig(every_n_epochs=2), None, 4, True),
])
def test_validation_due(cfg, step, epoch, due):
    assert validation_due(cfg, step=step, epoch=epoch) is due


def test_validation_due_wants_step_or_epoch():
    with pytest.raises(ValueError):
        validation_due(ValidationConfig(), step=1, epoch=1)


def test_mean_over_batches_and_timesteps_up_to_max_steps():
    def step(batch, timestep, generator):
        return torch.tensor(batch + timestep / 1000)

    # Batches 0 and 1 at 200 and 400: (0.2 + 0.4 + 1.2 + 1.4) / 4.
    assert validation_loss([0, 1, 2], step, [200, 400], seed=0, max_steps=2) == pytest.approx(0.8)
    assert validation_loss([0, 1, 2], step, [200, 400], seed=0) == pytest.approx(1.3)


def test_noise_is_fixed_per_run_and_global_state_and_modes_are_restored():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    net.train()
    net[0].eval()  # mixed flags, as LoRA dropouts training inside frozen text encoders
    seen_modes = []

    def step(batch, timestep, generator):
        seen_modes.append(net.training or net[1].training)
        torch.rand(()), random.random(), np.random.rand()  # global draws: restored after the run
        return torch.randn((), generator=generator)

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    first = validation_loss(range(3), step, [200, 400], seed=7, modules=[net, None])
    after = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    assert before[0] == after[0] and (before[1] == after[1]).all() and torch.equal(before[2], after[2])
    random.random(), torch.rand(())  # the caller's RNGs move on: the next run must not depend on them
    assert validation_loss(range(3), step, [200, 400], seed=7, modules=[net]) == first
    assert validation_loss(range(3), step, [200, 400], seed=8, modules=[net]) != first
    assert seen_modes and not any(seen_modes)
    assert (net.training, net[0].training, net[1].training) == (True, False, True)


def test_schedule_free_optimizer_evaluates_its_averaged_weights():
    calls = []

    class Optimizer:
        def train(self):
            calls.append("train")

        def eval(self):
            calls.append("eval")

    validation_loss([0], lambda b, t, g: (calls.append("step"), torch.tensor(0.0))[1], [1], seed=0,
                    optimizer=Optimizer())
    assert calls == ["eval", "step", "train"]


@pytest.fixture
def tiny_run(tiny_model_dir, tmp_path):
    """The loop's setup on the tiny SDXL, with 4 images of which validation_split 0.5 holds 2 out, latents
    cached (training and validation together)."""
    from accelerate import Accelerator

    from sdxl_lora.config.build import build_run_config
    from sdxl_lora.config.parser import parse_command_line
    from sdxl_lora.data.dataset import CacheGroup, build_train_dataset, build_validation_dataset, shuffle_seed
    from sdxl_lora.data.plan import build_plan
    from sdxl_lora.models.load import load_sdxl
    from sdxl_lora.models.precision import place_models
    from sdxl_lora.models.text import tokenize
    from sdxl_lora.network.build import build_network
    from sdxl_lora.train import loop

    images = make_images(tmp_path / "images", [(64, 64)] * 4)
    toml = write_toml(tmp_path / "d.toml", "[[datasets]]\nresolution = 64\nvalidation_split = 0.5\n"
                      f"[[datasets.subsets]]\nimage_dir = '{images.as_posix()}'\ncaption_extension = '.txt'\n")
    parsed = parse_command_line([f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={toml}",
                                 f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora",
                                 "--network_dim=4", "--seed=3", "--validation_seed=11", "--cache_latents",
                                 "--learning_rate=1e-2", "--network_train_unet_only"])
    cfg = build_run_config(parsed.values, parsed.given)
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    plan = build_plan(cfg.data.datasets)
    models = load_sdxl(cfg.model, accelerator.device)
    tokens = functools.partial(tokenize, models.tokenizer_1, models.tokenizer_2)
    train = build_train_dataset(plan, seed=shuffle_seed(cfg.train.seed), tokenize=tokens)
    valid = build_validation_dataset(plan, seed=shuffle_seed(cfg.validation.seed), tokenize=tokens)
    placement = place_models(models, cfg.model, accelerator.device)
    latents = loop.latent_source_for(cfg, models.vae, CacheGroup(train, valid), accelerator.device, False)
    handles = build_network(models.unet, models.text_encoder_1, models.text_encoder_2, cfg.network)
    text = loop.text_source_for(cfg, models.text_encoder_1, models.text_encoder_2, accelerator.device)
    parts = loop.step_parts(models, models.unet, latents, text, accelerator, placement, cfg)
    return cfg, models, handles, parts, train, valid


def test_validation_loss_on_the_tiny_model(tiny_run):
    from sdxl_lora.data.dataset import collate_first
    from sdxl_lora.train import loop
    from sdxl_lora.train.validation import fixed_timestep_step

    cfg, models, handles, parts, train, valid = tiny_run
    assert len(valid) == 2 and train.num_validation_images == 2
    loader = torch.utils.data.DataLoader(valid, batch_size=1, shuffle=False, collate_fn=collate_first)
    seen = []

    def step(batch, timestep, generator):
        seen.append((tuple(batch.paths), timestep, batch.latents is not None))
        return fixed_timestep_step(loop.training_step, parts, cfg)(batch, timestep, generator)

    modules = (models.unet, models.text_encoder_1, models.text_encoder_2)
    models.unet.train()
    handles.train()
    states = (torch.get_rng_state(), random.getstate())
    first = validation_loss(loader, step, validation_timesteps(0, 1000), cfg.validation.seed, modules=modules)
    assert torch.equal(states[0], torch.get_rng_state()) and states[1] == random.getstate()
    assert models.unet.training and not models.text_encoder_1.training
    assert len(seen) == 8 and {t for _, t, _ in seen} == {200, 400, 600, 800} and all(c for *_, c in seen)
    assert {p for paths, _, _ in seen for p in paths} == {i.path for i in valid.datasets[0].plan.images}
    assert math.isfinite(first) and first > 0
    assert validation_loss(loader, step, validation_timesteps(0, 1000), cfg.validation.seed,
                           modules=modules) == first  # fixed timesteps and noise: the same value
    capped = validation_loss(loader, step, [500], cfg.validation.seed, max_steps=1, modules=modules)
    assert len(seen) == 17 and capped != first

    # A few optimizer steps on the training images change the LoRA, and so the validation loss.
    params = handles.parameters("unet")
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    train.set_epoch(0)
    for index in range(len(train)):
        loss = loop.training_step(train[index], parts, cfg, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert validation_loss(loader, step, [500], cfg.validation.seed, max_steps=1, modules=modules) != capped


def test_at_timestep_forces_every_sample_to_it():
    from sdxl_lora.config.schema import (
        DataConfig,
        ModelConfig,
        NetworkConfig,
        OptimConfig,
        RunConfig,
        SaveConfig,
        TrainConfig,
    )
    from sdxl_lora.train.noise import sample_timesteps

    run = RunConfig(model=ModelConfig("x"), network=NetworkConfig(), data=DataConfig(datasets=()),
                    optim=OptimConfig(), train=TrainConfig(), save=SaveConfig(output_dir=Path("out")))
    cfg = at_timestep(run, 600)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert sample_timesteps(3, cfg.noise.min_timestep, cfg.noise.max_timestep, "cpu", generator).tolist() == [600] * 3
    assert torch.equal(generator.get_state(), state)  # nothing drawn: the noise stream is the same at each t
