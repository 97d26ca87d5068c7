"""The dataset part of the saved-file metadata (spec 4.1: ss_datasets, ss_tag_frequency, ss_dataset_dirs)."""

from __future__ import annotations

import os
from collections import Counter

from sdxl_lora.data.buckets import bucketing_for
from sdxl_lora.data.plan import DatasetPlan, Plan

_SUBSET_KEYS = ("color_aug", "flip_aug", "random_crop", "shuffle_caption", "keep_tokens", "keep_tokens_separator",
                "secondary_separator", "enable_wildcard", "caption_prefix", "caption_suffix",
                "resize_interpolation")


def tag_frequency(dataset: DatasetPlan) -> dict[str, dict[str, int]]:
    """{image folder basename: {tag: images with it}}: captions split on ',', stripped and lower-cased."""
    counts: dict[str, Counter] = {}
    for image in dataset.images:
        folder = os.path.basename(dataset.config.subsets[image.subset_index].image_dir)
        tags = (t.strip().lower() for t in image.caption.split(","))
        counts.setdefault(folder, Counter()).update(t for t in tags if t)
    return {folder: dict(c) for folder, c in counts.items()}


def merged_tag_frequency(plan: Plan) -> dict[str, dict[str, int]]:
    """ss_tag_frequency: per-dataset frequencies merged; the first dataset wins for a repeated folder."""
    merged: dict[str, dict[str, int]] = {}
    for dataset in plan.datasets:
        for folder, counts in tag_frequency(dataset).items():
            merged.setdefault(folder, counts)
    return merged


def bucket_info(dataset: DatasetPlan) -> dict:
    """{"buckets": {index: {"resolution": [w, h], "count": samples}}, "mean_img_ar_error": float}.

    Indices are positions in the dataset's bucket list (unused buckets leave gaps), as sd-scripts writes them;
    the aspect error is averaged over the images that train, not over repeats.
    """
    predefined = bucketing_for(dataset.config).buckets
    order = list(predefined) if predefined is not None else [b for b, _ in dataset.buckets]
    buckets = {str(order.index(b)): {"resolution": list(b), "count": n} for b, n in dataset.buckets}
    errors = [abs(i.bucket[0] / i.bucket[1] - i.original_size[0] / i.original_size[1])
              for i in dataset.images if i.repeats > 0]
    return {"buckets": buckets, "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0}


def _subset_entry(dataset: DatasetPlan, index: int) -> dict:
    subset, summary = dataset.config.subsets[index], dataset.subsets[index]
    entry = {"img_count": summary.num_images, "num_repeats": subset.num_repeats}
    entry.update({key: getattr(subset, key) for key in _SUBSET_KEYS})
    entry["image_dir"] = os.path.basename(subset.image_dir or subset.metadata_file or "")
    entry.update(class_tokens=subset.class_tokens, is_reg=subset.is_reg)
    return entry


def metadata_datasets(plan: Plan) -> list[dict]:
    """ss_datasets: one object per training dataset. Bucket limits are the rounded ones, None without buckets."""
    entries = []
    for dataset in plan.datasets:
        config = dataset.config
        low, high = config.bucket_limits() if config.enable_bucket else (None, None)
        entries.append({
            "is_dreambooth": not any(s.metadata_file for s in config.subsets),
            "batch_size_per_device": config.batch_size,
            "num_train_images": dataset.num_train_images, "num_reg_images": dataset.num_reg_images,
            "resolution": list(config.resolution), "enable_bucket": config.enable_bucket,
            "min_bucket_reso": low, "max_bucket_reso": high, "tag_frequency": tag_frequency(dataset),
            "bucket_info": bucket_info(dataset), "resize_interpolation": config.resize_interpolation,
            "subsets": [_subset_entry(dataset, i) for i in range(len(dataset.subsets))],
        })
    return entries


def dataset_dirs(plan: Plan, reg: bool = False) -> dict[str, dict[str, int]]:
    """ss_dataset_dirs (or, with reg, ss_reg_dataset_dirs): {folder basename: {"n_repeats", "img_count"}};
    a repeated name becomes 'name (2)', 'name (3)', ..."""
    dirs: dict[str, dict[str, int]] = {}
    for dataset in plan.datasets:
        for subset in dataset.subsets:
            if subset.is_reg != reg:
                continue
            base = name = os.path.basename(subset.image_dir)
            suffix = 1
            while name in dirs:
                suffix += 1
                name = f"{base} ({suffix})"
            dirs[name] = {"n_repeats": subset.num_repeats, "img_count": subset.num_images}
    return dirs
