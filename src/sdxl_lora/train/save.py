"""Writing LoRA files: names (spec 7.1), dtype, metadata (spec 4; none in .ckpt/.pt), the diffusers folder, and a
self-check of what was written. Files and folders appear atomically."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sdxl_lora.common.dtypes import dtype_named
from sdxl_lora.config.schema import RunConfig, SaveConfig
from sdxl_lora.network import metadata as md
from sdxl_lora.train.schedule import (
    FOLDER_FORMATS,
    Every,
    epoch_name,
    epoch_save_interval,
    file_name,
    final_name,
    stale_epoch,
    stale_step,
    state_name,
    step_name,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SaveSchedule:
    """Which saves a run makes (spec 7.1, 7.2), resolved once the epoch count is known."""

    models: Every
    """Model files every N steps / epochs."""
    keep_epochs: int | None = None
    keep_steps: int | None = None
    keep_epoch_states: int | None = None
    keep_step_states: int | None = None
    states_along: bool = False
    """--save_state: a state folder beside every model save."""
    state_at_end: bool = False
    """--save_state or --save_state_on_train_end: a state folder at the end."""


def save_schedule(cfg: SaveConfig, num_epochs: int) -> SaveSchedule:
    every_epochs = epoch_save_interval(cfg.save_every_n_epochs, cfg.save_n_epoch_ratio, num_epochs)
    return SaveSchedule(
        models=Every(steps=cfg.save_every_n_steps, epochs=every_epochs),
        keep_epochs=cfg.save_last_n_epochs, keep_steps=cfg.save_last_n_steps,
        keep_epoch_states=cfg.save_last_n_epochs_state or cfg.save_last_n_epochs,
        keep_step_states=cfg.save_last_n_steps_state or cfg.save_last_n_steps,
        states_along=cfg.save_state, state_at_end=cfg.save_state or cfg.save_state_on_train_end,
    )


class RunSaver:
    """Holds what every save of one run shares: the network handles and the run-level metadata."""

    def __init__(self, cfg: RunConfig, handles, *, session_id: int, started_at: float, dataset, plan, optimizer,
                 model_hashes=None, num_processes: int = 1):
        self.cfg, self.handles, self.model_hashes = cfg, handles, model_hashes
        facts = md.RunFacts(
            session_id=session_id, training_started_at=started_at,
            num_train_images=dataset.num_train_images, num_reg_images=dataset.num_reg_images,
            num_batches_per_epoch=plan.batches_per_epoch, num_epochs=plan.num_epochs,
            optimizer=_optimizer_name(optimizer, cfg),
            text_encoder_lr=md.effective_text_encoder_lr(cfg.optim.text_encoder_lr),
            datasets=dataset.metadata_datasets(), tag_frequency=dataset.tag_frequency(),
            dataset_dirs=dataset.dataset_dirs(), reg_dataset_dirs=dataset.dataset_dirs(reg=True),
            num_processes=num_processes, num_validation_images=getattr(dataset, "num_validation_images", 0),
        )
        # Record what was used: the resolved step count, rank and alpha (sd-scripts writes 'None' for a default rank).
        args = dict(cfg.args, max_train_steps=plan.max_train_steps, network_dim=cfg.network.rank,
                    network_alpha=cfg.network.alpha)
        self.args = args
        self.base_metadata = md.training_metadata(args, facts)
        self.schedule = save_schedule(cfg.save, plan.num_epochs)
        self.out_dir = Path(cfg.save.output_dir)

    def at_step(self, step: int, epoch: int, write_state: Callable[[Path], Path]) -> list[Path]:
        """`{name}-step{step:08d}` (and its state folder with --save_state); older ones thinned out."""
        stem, sched, every = step_name(self.cfg.save.output_name, step), self.schedule, self.schedule.models.steps
        written = self._checkpoint(stem, step, epoch, write_state)
        self._remove_old(step_name, stale_step(step, every, sched.keep_steps),
                         stale_step(step, every, sched.keep_step_states))
        return written

    def at_epoch(self, epoch: int, step: int, write_state: Callable[[Path], Path]) -> list[Path]:
        """`{name}-{epoch:06d}` for 1-based `epoch` (and its state folder); older ones thinned out."""
        stem, sched, every = epoch_name(self.cfg.save.output_name, epoch), self.schedule, self.schedule.models.epochs
        written = self._checkpoint(stem, step, epoch, write_state)
        self._remove_old(epoch_name, stale_epoch(epoch, every, sched.keep_epochs),
                         stale_epoch(epoch, every, sched.keep_epoch_states))
        return written

    def at_end(self, *, steps: int, epochs: int, write_state: Callable[[Path], Path] | None) -> list[Path]:
        """The final `{output_name}.safetensors` (or folder) in --output_dir, and the final state folder."""
        stem = final_name(self.cfg.save.output_name)
        written = [self._save(file_name(stem, self.cfg.save.save_model_as), steps, epochs)]
        if self.schedule.state_at_end and write_state is not None:
            written.append(write_state(self.out_dir / state_name(stem)))
        return written

    def _checkpoint(self, stem: str, steps: int, epoch: int, write_state: Callable[[Path], Path]) -> list[Path]:
        written = [self._save(file_name(stem, self.cfg.save.save_model_as), steps, epoch)]
        if self.schedule.states_along:
            written.append(write_state(self.out_dir / state_name(stem)))
        return written

    def _remove_old(self, name: Callable[[str | None, int], str], model: int | None, state: int | None) -> None:
        from sdxl_lora.train.state import remove_state

        base = self.cfg.save.output_name
        if model is not None:
            old = self.out_dir / file_name(name(base, model), self.cfg.save.save_model_as)
            if old.is_dir():
                remove_state(old)  # a diffusers folder: renamed away, then deleted
            elif old.exists():
                old.unlink()
                log.info("removed %s (--save_last_n_*)", old.name)
        if state is not None and self.schedule.states_along:
            remove_state(self.out_dir / state_name(name(base, state)))

    def _metadata(self, steps: int, epoch: int) -> dict[str, str]:
        hashes = self.model_hashes.metadata() if self.model_hashes is not None else {}
        return md.at_save(self.base_metadata, self.args, steps=steps, epoch=epoch, now=time.time(),
                          model_hashes=hashes)

    def _save(self, name: str, steps: int, epoch: int) -> Path:
        from sdxl_lora.train.distributed import full_parameters

        # ZeRO-3 partitions the LoRA weights over the processes: whole while they are read and written.
        with full_parameters(p for c in self.handles.models for p in self.handles.parameters(c)):
            return self._write(name, steps, epoch)

    def _write(self, name: str, steps: int, epoch: int) -> Path:
        from sdxl_lora.network.diffusers_format import diffusers_state_dict, save_diffusers_folder
        from sdxl_lora.network.kohya import kohya_state_dict, save_lora_file

        self.out_dir.mkdir(parents=True, exist_ok=True)
        dtype, path = dtype_named(self.cfg.save.save_precision), self.out_dir / name
        if self.cfg.save.save_model_as in FOLDER_FORMATS:
            state = diffusers_state_dict(self.handles, dtype)
            meta = md.with_sshs_hashes(state, self._metadata(steps, epoch))
            save_diffusers_folder(path, self.handles, save_dtype=dtype, metadata=meta)
        else:
            state = kohya_state_dict(self.handles, save_dtype=dtype)
            if path.suffix != ".safetensors":  # ckpt/pt: a pickled state dict, no metadata (spec 1.10, 4.4)
                save_lora_file(path, state)
            else:
                save_lora_file(path, state, md.with_sshs_hashes(state, self._metadata(steps, epoch)))
        self._self_check(path)
        return path

    def _self_check(self, path: Path) -> None:
        """Read the file back as a UI's loader would; name every key it would ignore (issue 9 item 5)."""
        from sdxl_lora.network.selfcheck import check_saved

        problems = check_saved(path, self.handles.models)
        if problems:
            log.warning("%s: %d keys a LoRA loader would ignore or misread: %s", path, len(problems),
                        "; ".join(problems[:10]))
        else:
            log.info("%s: every key maps onto an SDXL module", path.name)


def _optimizer_name(optimizer, cfg: RunConfig) -> str:
    """ss_optimizer as sd-scripts writes it: 'module.Class', then '(key=value,...)' of the arguments used."""
    from sdxl_lora.train.optim import optimizer_kwargs

    cls = type(getattr(optimizer, "optimizer", optimizer))
    args = ",".join(f"{key}={value}" for key, value in optimizer_kwargs(cfg.optim).items())
    return f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")
