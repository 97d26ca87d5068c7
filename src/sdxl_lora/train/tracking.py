"""Experiment trackers through accelerate (spec 1.12, 5.8, 8.3): TensorBoard and wandb, with sd-scripts' names.

accelerate creates the trackers when the Accelerator is built (`accelerator_kwargs`); `Trackers` starts them
and logs what the loop already holds as Python floats. Nothing here reads a tensor, so logging adds no
host-device sync to a step. Every call is a no-op without a tracker and on processes other than the main one.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sdxl_lora.config.options import OPTIONS
from sdxl_lora.config.schema import LogConfig

log = logging.getLogger(__name__)

RUN_FOLDER_TIME = "%Y%m%d%H%M%S"
"""Local-time stamp of the run folder, as sd-scripts names it."""
PATH_OPTIONS = ("pretrained_model_name_or_path", "vae", "tokenizer_cache_dir", "train_data_dir",
                "conditioning_data_dir", "reg_data_dir", "output_dir", "logging_dir")
"""Options sd-scripts leaves out of --log_config (local paths say who and where)."""
SECRET_OPTIONS = tuple(option.name for option in OPTIONS if option.secret)
"""wandb_api_key, huggingface_token: never sent to a tracker."""


def run_folder(cfg: LogConfig, now: float | None = None) -> Path | None:
    """<logging_dir>/<log_prefix><YYYYmmddHHMMSS> (local time), or None without --logging_dir."""
    if cfg.logging_dir is None:
        return None
    return cfg.logging_dir / f"{cfg.log_prefix}{time.strftime(RUN_FOLDER_TIME, time.localtime(now))}"


def accelerator_kwargs(cfg: LogConfig, now: float | None = None) -> dict:
    """Keyword arguments for Accelerator(...): the trackers and the run folder ({} without a tracker)."""
    if not cfg.log_with:
        return {}
    folder = run_folder(cfg, now)
    return {"log_with": list(cfg.log_with), "project_dir": None if folder is None else str(folder)}


def sanitised_config(args: dict) -> dict:
    """--log_config: the option values without secrets and path options; values a tracker cannot store (lists,
    tuples, other objects) as their str(), as sd-scripts sends them."""
    return {key: value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in args.items() if key not in SECRET_OPTIONS and key not in PATH_OPTIONS}


def init_kwargs(cfg: LogConfig, folder: str | Path | None) -> dict:
    """init_trackers' init_kwargs: the --log_tracker_config tables, with the wandb run name and wandb's folder
    added where the file does not set them (sd-scripts drops --wandb_run_name when a file is given)."""
    kwargs = {tracker: dict(values) for tracker, values in (cfg.tracker_init_kwargs or {}).items()}
    if "wandb" in cfg.log_with:
        wandb = kwargs.setdefault("wandb", {})
        if cfg.wandb_run_name:
            wandb.setdefault("name", cfg.wandb_run_name)
        if folder is not None:
            wandb.setdefault("dir", str(folder))  # sd-scripts sets WANDB_DIR to the run folder
    return kwargs


def group_rates(param_groups: Sequence[dict]) -> dict[str, float]:
    """name -> learning rate of each optimizer parameter group (names from network/groups.py, 'group<i>' for a
    group without one), and 'd*lr/<name>' -> d x lr for optimizers that adapt their step size (D-Adaptation,
    Prodigy keep it as the group's 'd'). Keys are logged as lr/<key>. Call it after the scheduler's step: the
    scheduler writes each group's lr. These are Python floats, except with Adafactor's relative step size, where
    the adafactor schedule writes a tensor (reading it is then a sync point)."""
    rates = {}
    for index, group in enumerate(param_groups):
        name = group.get("name") or f"group{index}"
        if group.get("lr") is None:
            continue
        rates[name] = float(group["lr"])
        if "d" in group:
            rates[f"d*lr/{name}"] = float(group["d"]) * float(group["lr"])
    return rates


def lr_snapshot(param_groups: Sequence[dict]) -> list[dict]:
    """Each group's name, lr and d as they are now, unconverted (so no sync even where lr is a device tensor,
    as with Adafactor's relative step); group_rates turns the snapshot into floats when the loss is read."""
    return [{key: group[key] for key in ("name", "lr", "d") if key in group} for group in param_groups]


class LossAverage:
    """loss/average and loss/epoch_average as sd-scripts keeps them: one loss per step slot of an epoch; from the
    second epoch on, each step replaces the loss its slot held one epoch earlier."""

    def __init__(self) -> None:
        self._slots: list[float] = []
        self._total = 0.0

    def add(self, epoch: int, step_in_epoch: int, loss: float) -> None:
        """Record one step's loss; epoch and step_in_epoch count from 0."""
        if epoch == 0:
            self._slots.append(loss)
        else:
            while len(self._slots) <= step_in_epoch:
                self._slots.append(0.0)
            self._total -= self._slots[step_in_epoch]
            self._slots[step_in_epoch] = loss
        self._total += loss

    @property
    def average(self) -> float:
        return self._total / len(self._slots) if self._slots else 0.0


class Trackers:
    """The run's trackers: started once, then scalars per step, epoch and validation, and sample images.

    TensorBoard gets the global step as its step (the epoch for epoch logs); wandb gets the values with
    `global_step` and `epoch` added and its own step counter, as in sd-scripts.
    """

    def __init__(self, cfg: LogConfig) -> None:
        self._cfg = cfg
        self._accelerator = None

    def start(self, accelerator, args: dict) -> None:
        """Log in to wandb (with --wandb_api_key) and start the trackers: project --log_tracker_name, config the
        sanitised options with --log_config, init kwargs from --log_tracker_config and --wandb_run_name."""
        if not self._cfg.log_with or not accelerator.is_main_process:
            return
        folder = accelerator.logging_dir
        if "wandb" in self._cfg.log_with:
            if folder is not None:
                Path(folder).mkdir(parents=True, exist_ok=True)  # wandb writes its files there
            _wandb_login(self._cfg.wandb_api_key)
        accelerator.init_trackers(self._cfg.tracker_name,
                                  config=sanitised_config(args) if self._cfg.log_config else None,
                                  init_kwargs=init_kwargs(self._cfg, folder))
        self._accelerator = accelerator
        if "wandb" in self._cfg.log_with:
            run = accelerator.get_tracker("wandb", unwrap=True)
            for metric in ("epoch", "val_step", "global_step"):
                run.define_metric(metric, hidden=True)
        where = f" in {folder}" if folder is not None else ""
        log.info("logging to %s%s (project %s)", " and ".join(self._cfg.log_with), where, self._cfg.tracker_name)

    def log_step(self, step: int, epoch: int, loss_current: float, loss_average: float,
                 lrs: dict[str, float]) -> None:
        """After optimizer step `step` (1-based) of epoch `epoch` (1-based): loss/current, loss/average and
        lr/<key> for each entry of `lrs` (see group_rates)."""
        values = {"loss/current": loss_current, "loss/average": loss_average}
        values.update({f"lr/{key}": rate for key, rate in lrs.items()})
        self._log(values, tensorboard_step=step, step=step, epoch=epoch)

    def log_epoch(self, epoch: int, step: int, loss_epoch_average: float) -> None:
        """At the end of epoch `epoch` (1-based): loss/epoch_average; TensorBoard's step is the epoch."""
        self._log({"loss/epoch_average": loss_epoch_average}, tensorboard_step=epoch, step=step, epoch=epoch)

    def log_validation(self, step: int, epoch: int, average: float, train_average: float, *,
                       epoch_end: bool = False) -> None:
        """loss/validation/step_average and step_divergence (validation minus the training loss/average), or with
        epoch_end the epoch_ pair at TensorBoard step = epoch."""
        kind = "epoch" if epoch_end else "step"
        values = {f"loss/validation/{kind}_average": average,
                  f"loss/validation/{kind}_divergence": average - train_average}
        self._log(values, tensorboard_step=epoch if epoch_end else step, step=step, epoch=epoch)

    def log_images(self, step: int, images: Sequence[tuple[str | Path, str]]) -> None:
        """Sample images, in prompt order as (file, prompt): TensorBoard image `sample_<index>` (and the prompt as
        text `sample_<index>/prompt`) at `step`; wandb `sample_<index>` captioned with the prompt, committed
        with the next step's values (at once for step 0, --sample_at_first), as sd-scripts."""
        for tracker in self._live():
            if tracker.name == "tensorboard":
                for index, (path, prompt) in enumerate(images):
                    tracker.tracker.add_image(f"sample_{index}", _pixels(path), global_step=step, dataformats="HWC")
                    tracker.tracker.add_text(f"sample_{index}/prompt", prompt, global_step=step)
                tracker.tracker.flush()
            elif tracker.name == "wandb":
                import wandb

                tracker.log({f"sample_{index}": wandb.Image(str(path), caption=prompt)
                             for index, (path, prompt) in enumerate(images)}, commit=False)
                if step == 0:
                    tracker.log({}, step=0)

    def end(self) -> None:
        """Close the trackers (files flushed, wandb run finished). accelerator.end_training() may follow."""
        for tracker in self._live():
            tracker.finish()
        self._accelerator = None

    def _live(self) -> list:
        return list(self._accelerator.trackers) if self._accelerator is not None else []

    def _log(self, values: dict, *, tensorboard_step: int, step: int, epoch: int) -> None:
        for tracker in self._live():
            if tracker.name == "wandb":
                tracker.log({**values, "global_step": step, "epoch": epoch})
            else:
                tracker.log(values, step=tensorboard_step)


def _wandb_login(key: str | None) -> None:
    """wandb.login with --wandb_api_key; the key itself is never logged."""
    if not key:
        return
    import wandb

    if any(key in arg for arg in sys.argv):
        log.warning("--wandb_api_key is on the command line, which wandb records with the run; put it in the "
                    "--config_file TOML or set WANDB_API_KEY instead")
    wandb.login(key=key)


def _pixels(path: str | Path):
    """An image file as an H x W x 3 uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
