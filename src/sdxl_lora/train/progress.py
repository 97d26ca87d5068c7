"""What a person and a GUI see of a run: the progress bar and a JSON status file, fed by losses that stay on the
device until they are read.

Reading a loss (`.item()`) waits for the GPU to finish every queued kernel, so the loop does not read it each
step: `LossMeter` keeps the step losses as device tensors and reads them all at once, at most about once a second
and before every save (a non-finite loss must stop the run before anything is written). With several processes a
read is a collective (the mean over the processes): every process reads at the same steps, every N steps, N set
at each read from the main process's clock, so a NaN on one process stops all of them at the same step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from sdxl_lora.common.files import atomic_path

READ_EVERY_S = 1.0
"""Seconds between loss reads (each is one host-device sync)."""


@dataclass
class Pending:
    """One optimizer step whose loss is not read yet."""

    step: int
    loss: torch.Tensor
    rates: list[dict]
    """The parameter groups' name/lr/d at this step (tracking.lr_snapshot), converted when read."""
    paths: tuple
    """Images of the step's last batch (named when the loss is not finite)."""
    epoch: int = 0
    step_in_epoch: int = 0


class NonFiniteLoss(Exception):
    """A step's loss is NaN or infinite; `pending` is that step's record."""

    def __init__(self, pending: Pending):
        super().__init__(f"loss is not finite at step {pending.step}")
        self.pending = pending


@dataclass
class LossMeter:
    """Per-step losses: kept on the device, read in one transfer when asked."""

    values: list[float] = field(default_factory=list)
    """Every loss read so far, in step order (the mean over the processes)."""
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Several processes: tensor -> its sum over them (processes.sum_over_processes); None with one."""
    processes: int = 1
    main: bool = True
    _pending: list[Pending] = field(default_factory=list)
    _last_read: float = field(default_factory=time.monotonic)
    _every: int = 1
    """Several processes: steps between reads, as the main process chose at the last read."""

    def add(self, step: int, loss: torch.Tensor, rates: list[dict], paths: tuple = (), *, epoch: int = 0,
            step_in_epoch: int = 0) -> None:
        self._pending.append(Pending(step, loss.detach(), rates, paths, epoch, step_in_epoch))

    def due(self) -> bool:
        if self.sum_over_processes is not None:  # a wall clock differs between processes; a step count does not
            return len(self._pending) >= self._every
        return time.monotonic() - self._last_read >= READ_EVERY_S

    def read(self) -> list[tuple[Pending, float]]:
        """Read the pending losses (one sync); raise NonFiniteLoss naming the first non-finite step."""
        elapsed, self._last_read = time.monotonic() - self._last_read, time.monotonic()
        if not self._pending:
            return []
        losses = torch.stack([p.loss.float().reshape(()) for p in self._pending])
        if self.sum_over_processes is not None:
            # The main process also says how many steps make READ_EVERY_S on its clock (the others add 0).
            every = max(1, int(READ_EVERY_S * len(self._pending) / max(elapsed, 1e-6))) if self.main else 0
            summed = self.sum_over_processes(torch.cat([losses, losses.new_tensor([every])]))
            losses, self._every = summed[:-1] / self.processes, max(1, int(summed[-1].item()))
        read = losses.tolist()
        for value, pending in zip(read, self._pending, strict=True):
            if not math.isfinite(value):
                raise NonFiniteLoss(pending)
        pairs = list(zip(self._pending, read, strict=True))
        self._pending.clear()
        self.values += read
        return pairs



class Progress:
    """The tqdm bar (step, epoch, average loss, lr, s/it, ETA of the whole run) and `<output>-status.json`, which
    gives a GUI or a script the same numbers (written atomically, so a reader never sees half a file)."""

    def __init__(self, status_path: Path, *, total_steps: int, num_epochs: int, start_step: int, enabled: bool):
        from tqdm.auto import tqdm

        self.status_path, self.total, self.num_epochs, self.enabled = status_path, total_steps, num_epochs, enabled
        self.start_step, self.started = start_step, time.monotonic()
        self.bar = tqdm(total=total_steps, initial=start_step, desc="steps", disable=not enabled, smoothing=0.1,
                        dynamic_ncols=True)
        # While the bar is drawn, console log lines go through tqdm.write (the bar is cleared, the line printed on
        # a line of its own, the bar redrawn below it) instead of being appended to the bar's line.
        self._logs_above_bar = logging_redirect_tqdm([logging.getLogger("sdxl_lora")], type(self.bar)) \
            if enabled else None
        if self._logs_above_bar is not None:
            self._logs_above_bar.__enter__()
        self.facts: dict = {"phase": "starting", "step": start_step, "max_steps": total_steps,
                            "epoch": None, "num_epochs": num_epochs, "loss": None, "lr": [], "s_per_step": None,
                            "eta_s": None, "last_saved": None}

    def advance(self, step: int, epoch: int) -> None:
        """One optimizer step done (no device sync)."""
        self.bar.update(1)
        self.facts.update(phase="training", step=step, epoch=epoch + 1)

    def show(self, loss: float | None, lrs: list[float]) -> None:
        """After a loss read: the bar's postfix and the status file."""
        done = self.facts["step"] - self.start_step
        per_step = (time.monotonic() - self.started) / done if done else None
        eta = per_step * (self.total - self.facts["step"]) if per_step is not None else None
        self.facts.update(loss=loss, lr=lrs, s_per_step=per_step, eta_s=eta)
        postfix = {"epoch": f"{self.facts['epoch']}/{self.num_epochs}", "lr": ",".join(f"{lr:.2e}" for lr in lrs)}
        if loss is not None:
            postfix["loss"] = f"{loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.write()

    def saved(self, path: Path) -> None:
        self.facts["last_saved"] = str(path)
        self.write()

    def finish(self, phase: str, **extra) -> None:
        """'done' or 'failed' (with the reason): the bar closes and the status file says so."""
        self.bar.close()
        if self._logs_above_bar is not None:
            self._logs_above_bar.__exit__(None, None, None)
            self._logs_above_bar = None
        self.facts.update(phase=phase, **extra)
        if phase == "done":
            self.facts["eta_s"] = 0.0
        self.write()

    def write(self) -> None:
        if not self.enabled:
            return
        facts = dict(self.facts, elapsed_s=round(time.monotonic() - self.started, 3), updated=time.time(),
                     pid=os.getpid())
        with atomic_path(self.status_path) as tmp:
            tmp.write_text(json.dumps(facts, indent=1) + "\n")
