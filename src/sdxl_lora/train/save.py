"""Writing LoRA files: names (spec 7.1), dtype, metadata (spec 4; none in .ckpt/.pt). Files appear atomically."""

from __future__ import annotations

import time
from pathlib import Path

from sdxl_lora.common.dtypes import dtype_named
from sdxl_lora.config.schema import RunConfig
from sdxl_lora.network import metadata as md


def final_name(output_name: str | None, ext: str) -> str:
    """`{output_name}.{ext}`, or `last.{ext}` without --output_name."""
    return f"{output_name or 'last'}.{ext}"


class RunSaver:
    """Holds what every save of one run shares: the network handles and the run-level metadata."""

    def __init__(self, cfg: RunConfig, handles, *, session_id: int, started_at: float, dataset, plan, optimizer):
        self.cfg, self.handles = cfg, handles
        facts = md.RunFacts(
            session_id=session_id, training_started_at=started_at,
            num_train_images=dataset.num_train_images, num_reg_images=dataset.num_reg_images,
            num_batches_per_epoch=plan.batches_per_epoch, num_epochs=plan.num_epochs,
            optimizer=_optimizer_name(optimizer, cfg), text_encoder_lr=cfg.optim.text_encoder_lr[0],
            datasets=dataset.metadata_datasets(), tag_frequency=dataset.tag_frequency(),
            dataset_dirs=dataset.dataset_dirs(),
        )
        # Record what was used: the resolved step count, rank and alpha (sd-scripts writes 'None' for a default rank).
        args = dict(cfg.args, max_train_steps=plan.max_train_steps, network_dim=cfg.network.rank,
                    network_alpha=cfg.network.alpha)
        self.args = args
        self.base_metadata = md.training_metadata(args, facts)

    def save_final(self, *, steps: int, epochs: int) -> Path:
        """The final `{output_name}.safetensors` in --output_dir."""
        return self._save(final_name(self.cfg.save.output_name, self.cfg.save.save_model_as), steps, epochs)

    def _save(self, file_name: str, steps: int, epoch: int) -> Path:
        from sdxl_lora.network.kohya import kohya_state_dict, save_lora_file

        out_dir = Path(self.cfg.save.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = kohya_state_dict(self.handles, save_dtype=dtype_named(self.cfg.save.save_precision))
        path = out_dir / file_name
        if path.suffix != ".safetensors":  # ckpt/pt: a pickled state dict, no metadata (spec 1.10, 4.4)
            return save_lora_file(path, state)
        meta = md.at_save(self.base_metadata, self.args, steps=steps, epoch=epoch, now=time.time())
        return save_lora_file(path, state, md.with_sshs_hashes(state, meta))


def _optimizer_name(optimizer, cfg: RunConfig) -> str:
    """ss_optimizer as sd-scripts writes it: 'module.Class', then '(key=value,...)' of the arguments used."""
    from sdxl_lora.train.optim import optimizer_kwargs

    cls = type(getattr(optimizer, "optimizer", optimizer))
    args = ",".join(f"{key}={value}" for key, value in optimizer_kwargs(cfg.optim).items())
    return f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")
