"""When things happen during a run (spec 7.1, 7.2): pure functions of plain integers.

The loop asks `due(...)` after each optimizer step and at each epoch end; what is due then gets done there. File
names and the deletion rules of sd-scripts live here too, so that every number of a save schedule has one home.
"""

from __future__ import annotations

from dataclasses import dataclass

FOLDER_FORMATS = ("diffusers_safetensors",)


@dataclass(frozen=True)
class Every:
    """A schedule: every N optimizer steps and/or at the end of every N-th (1-based) epoch; None = never."""

    steps: int | None = None
    epochs: int | None = None


def due_at_step(every: Every, step: int) -> bool:
    """After optimizer step `step` (1-based count of steps done)."""
    return bool(every.steps) and step % every.steps == 0


def due_at_epoch(every: Every, epoch: int, num_epochs: int | None = None) -> bool:
    """At the end of 1-based `epoch`; with `num_epochs`, never at the last one (the final save covers it)."""
    if not every.epochs or epoch % every.epochs:
        return False
    return num_epochs is None or epoch < num_epochs


def epoch_save_interval(every_n_epochs: int | None, ratio: int | None, num_epochs: int) -> int | None:
    """--save_n_epoch_ratio sets the epoch interval to floor(num_epochs / ratio), at least 1 (spec 1.10)."""
    if ratio:
        return max(1, num_epochs // ratio)
    return every_n_epochs


def epoch_name(base: str | None, epoch: int) -> str:
    """`{name}-{epoch:06d}`; base 'epoch' without --output_name (spec 7.1)."""
    return f"{base or 'epoch'}-{epoch:06d}"


def step_name(base: str | None, step: int) -> str:
    """`{name}-step{step:08d}`; base 'at' without --output_name (spec 7.1)."""
    return f"{base or 'at'}-step{step:08d}"


def final_name(base: str | None) -> str:
    """`{name}`; 'last' without --output_name (spec 7.1)."""
    return base or "last"


def file_name(stem: str, ext: str) -> str:
    """A LoRA file's name for --save_model_as `ext`; a diffusers folder has no extension."""
    return stem if ext in FOLDER_FORMATS else f"{stem}.{ext}"


def state_name(stem: str) -> str:
    """The state folder saved beside the model `stem`."""
    return f"{stem}-state"


def stale_epoch(epoch: int, every: int, keep: int | None) -> int | None:
    """After saving 1-based `epoch`: the epoch whose save falls out of the last `keep` (spec 7.2), or None."""
    if not keep:
        return None
    old = epoch - every * keep
    return old if old > 0 else None


def stale_step(step: int, every: int, keep: int | None) -> int | None:
    """After saving `step`: the step save older than the last `keep` steps (spec 7.2: step - keep - 1 rounded down
    to a multiple of `every`), or None. Step 0 never has a save."""
    if not keep:
        return None
    old = (step - keep - 1) // every * every
    return old if old > 0 else None
