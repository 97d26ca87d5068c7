"""Writing LoRA files: names (spec 7.1), dtype, metadata (spec 4; none in .ckpt/.pt), the diffusers folder, and a
self-check of what was written. Files and folders appear atomically."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sdxl_lora.common.dtypes import dtype_named
from sdxl_lora.config.schema import RunConfig
from sdxl_lora.network import metadata as md

log = logging.getLogger(__name__)

FOLDER_FORMATS = ("diffusers_safetensors",)


def final_name(output_name: str | None, ext: str) -> str:
    """`{output_name}.{ext}`, or `last.{ext}` without --output_name; a diffusers folder has no extension."""
    base = output_name or "last"
    return base if ext in FOLDER_FORMATS else f"{base}.{ext}"


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
            num_processes=num_processes,
        )
        # Record what was used: the resolved step count, rank and alpha (sd-scripts writes 'None' for a default rank).
        args = dict(cfg.args, max_train_steps=plan.max_train_steps, network_dim=cfg.network.rank,
                    network_alpha=cfg.network.alpha)
        self.args = args
        self.base_metadata = md.training_metadata(args, facts)

    def save_final(self, *, steps: int, epochs: int) -> Path:
        """The final `{output_name}.safetensors` (or folder) in --output_dir."""
        return self._save(final_name(self.cfg.save.output_name, self.cfg.save.save_model_as), steps, epochs)

    def _metadata(self, steps: int, epoch: int) -> dict[str, str]:
        hashes = self.model_hashes.metadata() if self.model_hashes is not None else {}
        return md.at_save(self.base_metadata, self.args, steps=steps, epoch=epoch, now=time.time(),
                          model_hashes=hashes)

    def _save(self, file_name: str, steps: int, epoch: int) -> Path:
        from sdxl_lora.network.diffusers_format import diffusers_state_dict, save_diffusers_folder
        from sdxl_lora.network.kohya import kohya_state_dict, save_lora_file

        out_dir = Path(self.cfg.save.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        dtype, path = dtype_named(self.cfg.save.save_precision), out_dir / file_name
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
