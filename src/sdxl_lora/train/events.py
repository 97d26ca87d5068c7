"""What happens between optimizer steps, each when it is due: loss reads (with the NaN check), progress and
status file, tracker logs, saves and their uploads, at the end the final files and the model card.

The loop calls `step_done` after each optimizer step and `epoch_done` after each epoch; everything here decides
with the pure functions of schedule.py whether its turn has come.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdxl_lora.config.schema import RunConfig
from sdxl_lora.sample.schedule import sample_due_at_epoch, sample_due_at_first, sample_due_at_step
from sdxl_lora.train.errors import TrainingDiverged
from sdxl_lora.train.memory_counts import MemoryWatch
from sdxl_lora.train.progress import LossMeter, NonFiniteLoss, Progress
from sdxl_lora.train.schedule import due_at_epoch, due_at_step
from sdxl_lora.train.state import TrainState, write_state
from sdxl_lora.train.tracking import LossAverage, group_rates
from sdxl_lora.train.validation import validation_due

log = logging.getLogger(__name__)


@dataclass
class Events:
    """The run's side work; built once the optimizer exists, used by the loop only."""

    cfg: RunConfig
    accelerator: object
    saver: object
    """train.save.RunSaver."""
    progress: Progress
    trackers: object
    """train.tracking.Trackers."""
    uploader: object | None
    """publish.hub.Uploader with --huggingface_repo_id (main process only)."""
    snapshot: object
    """(TrainState, every process's RNG states) -> StateFiles (state.state_files bound to this run's parts)."""
    gather_rngs: Callable[[], list[dict]]
    """Every process's RNG states, in process order (a collective with several processes)."""
    num_epochs: int
    validate: Callable[[], float] | None = None
    """The validation loss of the current weights (fixed timesteps and noise); None without held-out images."""
    sample: Callable[..., list[Path]] | None = None
    """(epoch=, step=) -> sample images of the current weights; None without sample prompts."""
    prompts: tuple = ()
    """The sample prompts (sample.prompts.SamplePrompt), in file order."""
    samples: list[tuple[Path, str]] = field(default_factory=list)
    """The latest sample images and their prompts (for the model card)."""
    meter: LossMeter = field(default_factory=LossMeter)
    average: LossAverage = field(default_factory=LossAverage)
    written: list[Path] = field(default_factory=list)
    validation_losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss) of every validation run."""
    text_cached: bool | None = None
    """Whether the text-encoder outputs are cached (the memory advice then does not suggest it)."""
    memory: MemoryWatch = field(init=False)
    """Reads the real peak GPU memory in the first steps; warns once when it is within 5% of the card."""

    def __post_init__(self) -> None:
        self.memory = MemoryWatch(self.cfg, self.text_cached)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def start(self, state: TrainState) -> None:
        """Before the first step of a fresh run (not a resumed one): the validation loss of the untrained LoRA,
        the curve's origin (sd-scripts has no such point), and --sample_at_first."""
        if self.validate is not None and state.step == 0:
            self.validation(0, 1)
        if self.sample is not None and state.step == 0 and sample_due_at_first(self.cfg.sample):
            self.sample_images(0, epoch=0)

    def step_done(self, state: TrainState, loss: torch.Tensor, rates: list[dict], paths: tuple) -> None:
        """After optimizer step `state.step`: record its loss (still on the device), then what is due."""
        self.meter.add(state.step, loss, rates, paths, epoch=state.epoch,
                       step_in_epoch=(state.batch - 1) // self.cfg.train.gradient_accumulation_steps)
        self.progress.advance(state.step, state.epoch)
        self.memory.after_step(state.step, self.accelerator.device)
        if due_at_step(self.saver.schedule.models, state.step):
            self.save(self.saver.at_step, state, state.step, state.epoch)
        elif self.meter.due():
            self.read_losses()
        if self.sample is not None and sample_due_at_step(self.cfg.sample, state.step):
            self.sample_images(state.step)
        if self.validate is not None and validation_due(self.cfg.validation, step=state.step):
            self.validation(state.step, state.epoch + 1)

    def epoch_done(self, state: TrainState) -> None:
        """After 1-based epoch `state.epoch` (already advanced): its logs, then its save if due."""
        self.read_losses()
        self.trackers.log_epoch(state.epoch, state.step, self.average.average)
        if self.validate is not None and validation_due(self.cfg.validation, epoch=state.epoch):
            self.validation(state.step, state.epoch, epoch_end=True)
        if self.sample is not None and sample_due_at_epoch(self.cfg.sample, state.epoch):
            self.sample_images(state.step, epoch=state.epoch)
        if due_at_epoch(self.saver.schedule.models, state.epoch, self.num_epochs):
            self.save(self.saver.at_epoch, state, state.epoch, state.step)

    def sample_images(self, step: int, *, epoch: int | None = None) -> None:
        """Sample images of the current weights; named on the console and logged (as sd-scripts, after the
        step's own values). The main process samples every prompt; the others go on to the next step and wait
        there for it."""
        self.read_losses()
        if not self.main:
            return
        paths = self.sample(epoch=epoch, step=step)
        pairs = [(path, prompt.prompt) for path, prompt in zip(paths, self.prompts, strict=True)]
        self.trackers.log_images(step, pairs)
        for path in paths:
            log.info("sample %s", path)
        if pairs:
            self.samples = pairs

    def validation(self, step: int, epoch: int, *, epoch_end: bool = False) -> float:
        """The validation loss now: logged, and one line for people."""
        self.read_losses()
        value = self.validate()
        self.trackers.log_validation(step, epoch, value, self.average.average, epoch_end=epoch_end)
        log.info("validation loss %.6f at step %d (epoch %d)", value, step, epoch)
        self.progress.facts["validation_loss"] = value
        self.validation_losses.append((step, value))
        return value

    def read_losses(self) -> None:
        """One device sync: the pending step losses, checked before anything is written, then logged."""
        try:
            read = self.meter.read()
        except NonFiniteLoss as err:
            pending = err.pending
            reason = diagnose_non_finite(pending.step, pending.paths, self.cfg,
                                         list(group_rates(pending.rates).values()))
            self.progress.finish("failed", error=reason)
            raise TrainingDiverged(reason) from None  # the same reason on every process (global batch, mean loss)
        rates = {}
        for pending, value in read:
            rates = group_rates(pending.rates)
            self.average.add(pending.epoch, pending.step_in_epoch, value)
            self.trackers.log_step(pending.step, pending.epoch + 1, value, self.average.average, rates)
        if read:
            self.progress.show(self.average.average, list(rates.values()))

    def save(self, checkpoint, state: TrainState, *args) -> None:
        self.read_losses()
        rngs = self.gather_rngs()
        if self.main:
            self._written(checkpoint(*args, lambda folder: write_state(folder, self.snapshot(state, rngs))))
        self.accelerator.wait_for_everyone()  # a later step may read what was written (resume tests, uploads)

    def finish(self, state: TrainState, *, datasets: list, samples: list[tuple[Path, str]]) -> Path | None:
        """The final LoRA (and state), the model card beside it, the last uploads; returns the LoRA's path."""
        from sdxl_lora.publish.model_card import card_for_run

        self.read_losses()
        rngs = self.gather_rngs()
        if not self.main:
            return None
        final = self.saver.at_end(steps=state.step, epochs=self.num_epochs,
                                  write_state=lambda folder: write_state(folder, self.snapshot(state, rngs)))
        self._written(final, wait=True)
        card = card_for_run(self.cfg, final[0], steps=state.step, epochs=self.num_epochs, datasets=datasets,
                            samples=samples)
        if self.uploader is not None:
            if card is not None:
                self.uploader.upload_card(card, [path for path, _ in samples])
            self.uploader.finish()
        self.progress.finish("done", last_saved=str(final[0]))
        return final[0]

    def _written(self, paths: list[Path], wait: bool = False) -> None:
        """Each new file or state folder: named on the console and in the status file, uploaded when asked."""
        for path in paths:
            log.info("saved %s", path)
            self.progress.saved(path)
            self.written.append(path)
        if self.uploader is not None:
            self.uploader.upload_file(paths[0], wait=wait)
            for folder in paths[1:]:
                self.uploader.upload_folder(folder, wait=wait)


def sample_with(optimizer, generate: Callable[..., list[Path]], *, epoch: int | None, step: int) -> list[Path]:
    """Samples of the weights that will be saved: a schedule-free optimizer's averaged ones, then back."""
    from sdxl_lora.train.optim import set_train_mode

    set_train_mode(optimizer, False)
    try:
        return generate(epoch=epoch, step=step)
    finally:
        set_train_mode(optimizer, True)


def diagnose_non_finite(step: int, paths: tuple, cfg: RunConfig, lrs: list[float]) -> str:
    """One line saying where the loss broke and what usually causes it."""
    hints = ["lower --learning_rate"]
    if cfg.model.mixed_precision == "fp16" and not cfg.model.no_half_vae:
        hints.insert(0, "add --no_half_vae (the SDXL VAE overflows in fp16)")
    if cfg.model.mixed_precision == "fp16":
        hints.append("use --mixed_precision bf16 if the GPU supports it")
    images = ", ".join(str(p) for p in paths)
    return (f"loss is not finite at step {step} (learning rates {', '.join(f'{lr:g}' for lr in lrs)}, "
            f"mixed precision {cfg.model.mixed_precision}, batch: {images}); nothing was saved from this step "
            "on (earlier saves are intact); try: " + "; ".join(hints))
