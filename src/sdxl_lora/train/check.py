"""`sdxl-lora check`: the training plan from the configuration alone, no model loaded."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sdxl_lora.config.schema import RunConfig
from sdxl_lora.train.steps import plan_steps, warmup_steps

if TYPE_CHECKING:
    from sdxl_lora.sample.prompts import SamplePrompt

log = logging.getLogger(__name__)


def check_classes(cfg: RunConfig) -> None:
    """Before any model loads: the optimizer and scheduler classes import (only the chosen package) and accept
    their --optimizer_args / --lr_scheduler_args, and --dynamo_backend exists; raises ConfigError naming the flag."""
    from sdxl_lora.train.optim import check_optimizer
    from sdxl_lora.train.schedulers import check_scheduler

    check_optimizer(cfg.optim)
    check_scheduler(cfg.optim)
    check_dynamo_backend(cfg)


def check_dynamo_backend(cfg: RunConfig) -> None:
    """--torch_compile: --dynamo_backend must be a torch.compile backend of this torch (checked before any model
    loads, not when the U-Net is compiled after loading and caching); unused without --torch_compile."""
    if not cfg.train.torch_compile:
        return
    import torch._dynamo

    from sdxl_lora.config.errors import ConfigError

    backends = torch._dynamo.list_backends(exclude_tags=())
    if cfg.train.dynamo_backend not in backends:
        raise ConfigError(f"--dynamo_backend {cfg.train.dynamo_backend}: not a torch.compile backend of this torch "
                          f"(it has: {', '.join(backends)})")


def build_check(cfg: RunConfig) -> dict:
    """The plan as one JSON-ready document: datasets (images, repeats, buckets, per-image conditioning, per subset
    the processed captions of the first epoch for a few images), what
    was skipped (folders without a repeat count, duplicate subsets), steps, epochs, what trains and what is
    saved when, and the estimated peak GPU memory (train/memory.py)."""
    from sdxl_lora.data.plan import build_plan
    from sdxl_lora.data.report import dataset_report
    from sdxl_lora.train.distributed import describe as describe_distributed
    from sdxl_lora.train.memory_counts import memory_report

    plan = build_plan(cfg.data.datasets, skip_bad_files=cfg.data.skip_bad_files)
    steps = plan_steps(plan.batches_per_epoch, cfg.train.gradient_accumulation_steps,
                       cfg.train.max_train_steps, cfg.train.max_train_epochs)
    name = cfg.save.output_name or "last"
    datasets = dataset_report(plan, seed=cfg.train.seed, max_train_steps=steps.max_train_steps,
                              gradient_accumulation_steps=cfg.train.gradient_accumulation_steps)
    return {
        "datasets": datasets,
        "skipped": [line for dataset in cfg.data.datasets for line in dataset.skipped],
        "num_train_images": sum(d.num_train_images for d in plan.datasets),
        "num_reg_images": sum(d.num_reg_images for d in plan.datasets),
        "num_validation_images": sum(len(d.validation.images) for d in plan.datasets if d.validation),
        "batches_per_epoch": steps.batches_per_epoch,
        "steps_per_epoch": steps.steps_per_epoch,
        "max_train_steps": steps.max_train_steps,
        "num_epochs": steps.num_epochs,
        "optimizer": cfg.optim.optimizer_type,
        "lr_scheduler": cfg.optim.lr_scheduler,
        "lr_warmup_steps": warmup_steps(cfg.optim.lr_warmup_steps, steps.max_train_steps),
        "trains": {"unet": cfg.network.train_unet, "te1": cfg.network.train_text_encoder,
                   "te2": cfg.network.train_text_encoder},
        "saves": [{"when": "end of training", "path": str(cfg.save.output_dir / f"{name}.{cfg.save.save_model_as}")}],
        "distributed": describe_distributed(cfg.distributed),
        "memory": memory_report(cfg, datasets),
    }


def render_plan(cfg: RunConfig, *, as_json: bool = False) -> str:
    """Human-readable plan, or the JSON document with --json."""
    doc = build_check(cfg)
    if as_json:
        return json.dumps(doc, indent=2)
    lines = []
    for d in doc["datasets"]:
        lines.append(f"dataset {d['key_path'] or 0}: resolution {d['resolution'][0]}x{d['resolution'][1]}, "
                     f"batch size {d['batch_size']}, {d['batches_per_epoch']} batches per epoch")
        for s in d["subsets"]:
            kind = "regularisation" if s["is_reg"] else "training"
            held = f", {s['validation_images']} held out for validation" if s["validation_images"] else ""
            lines.append(f"  {s['image_dir']}: {s['images']} {kind} images x {s['repeats']} repeats{held}")
            lines += [f"    first epoch: {Path(e['path']).name}: {e['caption']!r}" for e in s["first_epoch_captions"]]
        lines.append("  buckets (width x height: samples per epoch):")
        lines += [f"    {b['width']}x{b['height']}: {b['count']}" for b in d["buckets"]]
        if d["validation"]:
            names = [Path(p).name for p in d["validation"]["paths"]]
            lines.append(f"  validation (validation_split {d['validation_split']}): {len(names)} images in "
                         f"{d['validation']['batches']} batches: {', '.join(names[:10])}"
                         + (" ..." if len(names) > 10 else ""))
    lines += [f"skipped: {line}" for line in doc["skipped"]]
    trains = ", ".join(k.upper() for k, on in doc["trains"].items() if on)
    lines += [
        f"training images x repeats: {doc['num_train_images']}; regularisation: {doc['num_reg_images']}; "
        f"validation: {doc['num_validation_images']}",
        f"steps: {doc['max_train_steps']} ({doc['steps_per_epoch']} per epoch, {doc['num_epochs']} epochs)",
        f"optimizer: {doc['optimizer']}; learning rate: {doc['lr_scheduler']} schedule, "
        f"{doc['lr_warmup_steps']} warmup steps",
        f"trains LoRA on: {trains}",
    ]
    lines += [f"saves: {s['path']} at {s['when']}" for s in doc["saves"]]
    lines += [f"distributed: {doc['distributed']}"] if doc["distributed"] else []
    lines += doc["memory"]["lines"]
    return "\n".join(lines)


def check_sample_prompts(cfg: RunConfig) -> list[SamplePrompt]:
    """Before any model loads: the sample prompts when sampling is scheduled, else [].
    A file that does not parse raises ConfigError naming --sample_prompts, the file and the line or key; what is
    ignored or changed in it is logged as warnings."""
    from sdxl_lora.sample.prompts import load_prompts
    from sdxl_lora.sample.schedule import sampling_enabled

    if not sampling_enabled(cfg.sample):
        return []
    prompts, warnings = load_prompts(cfg.sample.prompts, cfg.sample.sampler)
    for warning in warnings:
        log.warning("%s", warning)
    if not prompts:
        log.warning("--sample_prompts %s has no prompts: no samples are made", cfg.sample.prompts)
    return prompts
