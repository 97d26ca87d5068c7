"""Where a run is, and the state folders that let it continue exactly (spec 7.3, 7.4).

A state folder has accelerate's file names: `model.safetensors` (the LoRA under kohya keys, in the training dtype,
so it also loads as --network_weights), `optimizer.bin`, `scheduler.bin`, `scaler.pt` (fp16 only),
`random_states_<process>.pkl` and `train_state.json`. Beyond sd-scripts' two counters, train_state.json holds the
batch position in the epoch and accelerate's micro-batch counter, and the RNG file holds the noise generator too:
with them a run resumed from any state folder continues exactly as the uninterrupted run would have, however many
times it is interrupted. Folders appear whole (written under a temporary name, then renamed).

Several processes: the main process writes the folder, with one RNG file per process (gathered). The position
counts global batches (batch_size x processes), so a state resumes with another number of processes when the
global batch is the same (e.g. --train_batch_size halved on twice the processes); train_state.json records the
global batch sizes, and another global batch is refused. A process without its own RNG file (more processes than
saved) continues with fresh dropout states, with a warning; the noise generator is the same on every process
and always comes from process 0's file.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sdxl_lora.common.files import atomic_folder
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.paths import STATE_FORMAT
from sdxl_lora.config.schema import RunConfig
from sdxl_lora.train.optim import load_optimizer_state, optimizer_state, set_train_mode

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """The loop's position: the one mutable record of a run, saved in every state folder."""

    epoch: int = 0
    """0-based epoch in progress."""
    step: int = 0
    """Optimizer steps done."""
    batch: int = 0
    """Batches of `epoch` already consumed (a multiple of the accumulation except at an epoch's end)."""
    micro_step: int = 0
    """accelerate's micro-batch counter, which decides when accumulated gradients are applied."""

    def next_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0


def capture_rngs(noise_generator: torch.Generator) -> dict:
    """Every random stream a step reads: Python, NumPy, torch CPU and CUDA (dropouts), and the noise generator."""
    return {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "noise": noise_generator.get_state(),
    }


def restore_rngs(states: dict, noise_generator: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    noise_generator.set_state(states["noise"])


@dataclass(frozen=True)
class StateFiles:
    """The contents of one state folder."""

    train: TrainState
    lora: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict | None
    scaler: dict | None
    rngs: list[dict]
    """Each process's RNG states, in process order (read_state: this process's only; see there)."""
    global_batch_sizes: tuple[int, ...] = ()
    """Each dataset's global batch size (batch_size x processes) the state was trained with; () if unknown."""


def write_state(target: Path, files: StateFiles) -> Path:
    """Write a state folder whole or not at all; an existing folder of that name is replaced."""
    from safetensors.torch import save_file

    new, old = target.with_name(f".{target.name}.new"), target.with_name(f".{target.name}.old")
    remove_state(new)
    with atomic_folder(new) as tmp:
        save_file({k: v.contiguous() for k, v in files.lora.items()}, str(tmp / "model.safetensors"))
        torch.save(files.optimizer, tmp / "optimizer.bin")
        if files.scheduler is not None:
            torch.save(files.scheduler, tmp / "scheduler.bin")
        if files.scaler is not None:
            torch.save(files.scaler, tmp / "scaler.pt")
        for index, rngs in enumerate(files.rngs):
            torch.save(rngs, tmp / f"random_states_{index}.pkl")
        # sd-scripts' keys (1-based epoch, global step), then ours; written last: its presence marks a whole folder.
        train = {"current_epoch": files.train.epoch + 1, "current_step": files.train.step, "format": STATE_FORMAT,
                 **asdict(files.train), "global_batch_sizes": list(files.global_batch_sizes)}
        (tmp / "train_state.json").write_text(json.dumps(train, indent=1) + "\n")
    if target.exists():  # replaced: moved aside first, so a complete folder exists at every moment
        remove_state(old)
        target.rename(old)
    new.rename(target)
    remove_state(old)
    return target


def read_state(folder: Path, *, process_index: int = 0) -> StateFiles:
    """Load a state folder written by write_state (the folder was checked before any model was loaded); its
    `rngs` are [this process's states], [process 0's with only the noise generator kept] when the folder has
    none for this process."""
    from safetensors.torch import load_file

    raw = json.loads((folder / "train_state.json").read_text())
    train = TrainState(epoch=raw["epoch"], step=raw["step"], batch=raw["batch"], micro_step=raw["micro_step"])
    optional = {name: torch.load(folder / name, weights_only=False) if (folder / name).is_file() else None
                for name in ("scheduler.bin", "scaler.pt")}
    return StateFiles(
        train=train, lora=load_file(str(folder / "model.safetensors")),
        optimizer=torch.load(folder / "optimizer.bin", weights_only=False),
        scheduler=optional["scheduler.bin"], scaler=optional["scaler.pt"], rngs=[_process_rngs(folder, process_index)],
        global_batch_sizes=tuple(raw.get("global_batch_sizes", ())),
    )


def _process_rngs(folder: Path, process_index: int) -> dict:
    own = folder / f"random_states_{process_index}.pkl"
    if own.is_file():
        return torch.load(own, weights_only=False)
    log.warning("--resume %s holds no random states of process %d (saved by fewer processes): it continues with "
                "fresh dropout and augmentation random states; the noise generator is process 0's", folder,
                process_index)
    first = torch.load(folder / "random_states_0.pkl", weights_only=False)
    return {**capture_rngs(torch.Generator()), "noise": first["noise"]}


def remove_state(folder: Path) -> None:
    """Delete a state folder: first renamed out of the way, so a crash never leaves a half-deleted one in place."""
    import shutil

    if not folder.exists():
        return
    doomed = folder.with_name(f".{folder.name}.deleting")
    folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def start_position(state_step: int | None, initial_step: int | None, initial_epoch: int | None,
                   steps_per_epoch: int) -> int | None:
    """The optimizer step a run starts at (spec 7.4): --initial_step, else the first step of --initial_epoch,
    else the resumed state's step; None for a fresh start."""
    if initial_step is not None:
        return initial_step
    if initial_epoch is not None:
        return (initial_epoch - 1) * steps_per_epoch
    return state_step


def position_of(step: int, steps_per_epoch: int, accumulation: int, skip_batches: bool) -> TrainState:
    """The loop position of optimizer step `step`: its epoch, and (when batches are skipped) the batches of that
    epoch before it; without skipping the epoch starts at its first batch (sd-scripts without
    --skip_until_initial_step)."""
    epoch, into = divmod(step, steps_per_epoch)
    return TrainState(epoch=epoch, step=step, batch=into * accumulation if skip_batches else 0)


def state_files(handles, optimizer, scheduler, accelerator, global_batch_sizes: tuple[int, ...], state: TrainState,
                rngs: list[dict]) -> StateFiles:
    """Everything a resumed run needs to continue exactly from `state`; `rngs` are every process's RNG states."""
    from sdxl_lora.network.kohya import kohya_state_dict

    scaler = getattr(accelerator, "scaler", None)
    return StateFiles(train=replace(state), lora=kohya_state_dict(handles),
                      optimizer=optimizer_state(optimizer), scheduler=scheduler.state_dict(),
                      scaler=scaler.state_dict() if scaler is not None else None,
                      rngs=rngs, global_batch_sizes=global_batch_sizes)


def start_state(cfg: RunConfig, plan, handles, optimizer, scheduler, accelerator,
                global_batch_sizes: tuple[int, ...] = ()) -> tuple[TrainState, dict | None]:
    """Where the run starts (spec 7.4) and the RNG states to restore once the first batch iterator exists.

    --resume restores the LoRA, optimizer, scheduler, GradScaler, position and RNGs exactly. --initial_step /
    --initial_epoch (which win over the state's step) start at that step: unlike sd-scripts, the step count,
    file numbering and LR schedule continue from there, and --skip_until_initial_step also skips the batches of
    the starting epoch that come before it."""
    from sdxl_lora.network.kohya import load_kohya_into

    train = cfg.train
    if train.resume:
        refuse_other_global_batch(train.resume, global_batch_sizes, accelerator)
    resumed = read_state(train.resume, process_index=accelerator.process_index) if train.resume else None
    if resumed is not None:
        try:
            if hasattr(handles, "load_kohya"):
                handles.load_kohya(resumed.lora, str(train.resume))
            else:
                load_kohya_into(handles, resumed.lora)
        except ValueError as err:  # another rank, alpha or module set than the state's network
            lines = str(err).splitlines()  # one line: the summary and the first problems
            raise ConfigError(f"--resume {train.resume}: {' '.join([lines[0], *(x.strip() for x in lines[1:3])])}"
                              " (was it saved with other network options?)") from None
        load_optimizer_state(optimizer, resumed.optimizer)
        set_train_mode(optimizer, True)  # a final state holds schedule-free optimizers in evaluation mode
        if resumed.scheduler is not None:
            scheduler.load_state_dict(resumed.scheduler)
        if resumed.scaler is not None and getattr(accelerator, "scaler", None) is not None:
            accelerator.scaler.load_state_dict(resumed.scaler)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", train.resume, resumed.train.step,
                 resumed.train.epoch + 1, resumed.train.batch)
    step = start_position(resumed.train.step if resumed else None, train.initial_step, train.initial_epoch,
                          plan.steps_per_epoch)
    if step is None:
        return TrainState(), None
    if resumed is not None and step == resumed.train.step:
        state = resumed.train
    else:
        state = position_of(step, plan.steps_per_epoch, train.gradient_accumulation_steps,
                            train.skip_until_initial_step)
        if resumed is None:
            fast_forward(scheduler, step)
        log.info("starting at step %d (epoch %d%s)", step, state.epoch + 1,
                 f", batch {state.batch}" if state.batch else "")
    accelerator.step = state.micro_step
    return state, resumed.rngs[0] if resumed is not None else None


def refuse_other_global_batch(folder: Path, global_batch_sizes: tuple[int, ...], accelerator) -> None:
    """The state's position counts global batches: with another global batch it would point at other images.
    Every process stops and says why (a launcher may stop the others as soon as one exits)."""
    saved = json.loads((folder / "train_state.json").read_text()).get("global_batch_sizes")
    if not saved or tuple(saved) == global_batch_sizes:
        return
    raise ConfigError([
        f"--resume {folder}: saved with global batch sizes {saved} (batch_size x processes), this run has "
        f"{list(global_batch_sizes)} on {accelerator.num_processes} processes: its position would mean other "
        "images; keep batch_size x processes the same (e.g. set --train_batch_size or the dataset batch_size)"])


def fast_forward(scheduler, steps: int) -> None:
    """Move the LR schedule to `steps` without training (--initial_step/--initial_epoch without a state)."""
    import warnings

    inner = getattr(scheduler, "scheduler", scheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
        for _ in range(steps):
            inner.step()


def resume_from_hub(cfg: RunConfig) -> RunConfig:
    """--resume_from_huggingface: the state folder downloaded from the Hub, checked like a local one."""
    from sdxl_lora.config.paths import path_problems
    from sdxl_lora.publish.hub import download_resume

    local = download_resume(str(cfg.args["resume"]), cfg.hub.token)
    problems = path_problems({"resume": str(local)})
    if problems:
        raise ConfigError(problems)
    return replace(cfg, train=replace(cfg.train, resume=local))
