"""What `sdxl-lora check` shows of the data: per dataset the images with their bucket, per subset the processed
captions of the first epoch for a few images, so caption settings can be checked without training."""

from __future__ import annotations

from sdxl_lora.data.dataset import build_train_dataset, shuffle_seed
from sdxl_lora.data.plan import Plan


def dataset_report(plan: Plan, *, seed: int, max_train_steps: int, gradient_accumulation_steps: int = 1,
                   per_subset: int = 3) -> list[dict]:
    """Plan.to_dict() of each dataset, each subset with `first_epoch_captions`: up to `per_subset`
    {"path", "caption"} in training order, exactly as the run with `--seed seed` encodes them. Reads no image."""
    datasets = build_train_dataset(plan, seed=shuffle_seed(seed))
    datasets.set_schedule(max_train_steps, gradient_accumulation_steps)
    datasets.set_epoch(0)
    preview = datasets.caption_preview(per_subset)
    report = []
    for dataset, captions in zip(plan.datasets, preview, strict=True):
        entry = dataset.to_dict()
        for subset, shown in zip(entry["subsets"], captions, strict=True):
            subset["first_epoch_captions"] = shown
        report.append(entry)
    return report
