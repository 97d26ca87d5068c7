"""What one epoch will train on: every image with its caption, bucket and SDXL size conditioning.

`build_plan` does all discovery (file listing, caption files, image headers) and bucket assignment once; the
`sdxl-lora check` report and `TrainDataset` both read the same Plan, so what is shown is what is trained.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, replace

from sdxl_lora.config.dataset_toml import DatasetConfig
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.split import holdout_problem
from sdxl_lora.data.buckets import Size, bucketing_for, centre_offset, crop_top_left
from sdxl_lora.data.discover import BadFile, FoundImage, discover_subset
from sdxl_lora.data.holdout import hold_out, without_augmentation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePlan:
    """One image as it will be trained (before random flips and random crops)."""

    path: str
    caption: str
    """Caption from its file or class_tokens (before prefix/suffix and wildcard choice)."""
    original_size: Size
    """(width, height) of the file."""
    bucket: Size
    """(width, height) of the training tensor: the SDXL target size."""
    resized_size: Size
    """(width, height) after resizing, before cropping to the bucket."""
    crop_top_left: tuple[int, int]
    """(top, left) SDXL crop conditioning of the centre crop without a flip."""
    repeats: int
    """Times per epoch (for regularisation images: after balancing, 0 = unused)."""
    subset_index: int
    """Index into the dataset config's subsets."""
    is_reg: bool
    mask_path: str | None = None
    """conditioning_data_dir mask of this image, if any."""

    def to_dict(self) -> dict:
        return {"path": self.path, "caption": self.caption, "bucket": list(self.bucket),
                "original_size": list(self.original_size), "resized_size": list(self.resized_size),
                "crop_top_left": list(self.crop_top_left), "target_size": list(self.bucket),
                "repeats": self.repeats, "is_reg": self.is_reg}


@dataclass(frozen=True)
class SubsetPlan:
    """Summary of one subset."""

    image_dir: str
    key_path: str
    num_images: int
    num_repeats: int
    is_reg: bool
    num_validation_images: int = 0
    """Images held out of this subset for validation (not counted in num_images)."""

    def to_dict(self) -> dict:
        return {"image_dir": self.image_dir, "key_path": self.key_path, "images": self.num_images,
                "repeats": self.num_repeats, "is_reg": self.is_reg,
                "validation_images": self.num_validation_images}


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset: its subsets, images and buckets."""

    config: DatasetConfig
    subsets: tuple[SubsetPlan, ...]
    images: tuple[ImagePlan, ...]
    num_train_images: int
    """Σ images × repeats over training (non-reg) subsets."""
    num_reg_images: int
    """Σ images × repeats over regularisation subsets, before balancing (sd-scripts' num_reg_images)."""
    buckets: tuple[tuple[Size, int], ...]
    """(bucket, samples per epoch) sorted by bucket; samples count repeats, as sd-scripts' bucket_info."""
    batches_per_epoch: int
    """Σ over buckets of ceil(samples / batch_size)."""
    validation: DatasetPlan | None = None
    """The images held out by validation_split, as a plan of their own (each image once, settings without
    random augmentation: holdout.without_augmentation); None when nothing is held out."""

    def to_dict(self) -> dict:
        c = self.config
        held = self.validation
        return {
            "key_path": c.key_path, "resolution": list(c.resolution), "batch_size": c.batch_size,
            "enable_bucket": c.enable_bucket, "bucket_no_upscale": c.bucket_no_upscale,
            "subsets": [s.to_dict() for s in self.subsets], "num_train_images": self.num_train_images,
            "num_reg_images": self.num_reg_images, "batches_per_epoch": self.batches_per_epoch,
            "buckets": [{"width": b[0], "height": b[1], "count": n} for b, n in self.buckets],
            "images": [i.to_dict() for i in self.images],
            "validation_split": c.validation_split,
            "validation": None if held is None else {
                "num_images": len(held.images), "batches": held.batches_per_epoch,
                "buckets": [{"width": b[0], "height": b[1], "count": n} for b, n in held.buckets],
                "paths": [i.path for i in held.images]},
        }


@dataclass(frozen=True)
class Plan:
    """Every training dataset, in configuration order."""

    datasets: tuple[DatasetPlan, ...]

    @property
    def batches_per_epoch(self) -> int:
        return sum(d.batches_per_epoch for d in self.datasets)

    @property
    def validation(self) -> Plan | None:
        """The held-out images of every dataset that has some, or None when no dataset holds any out."""
        held = tuple(d.validation for d in self.datasets if d.validation is not None)
        return Plan(held) if held else None

    def to_dict(self) -> dict:
        return {"batches_per_epoch": self.batches_per_epoch, "datasets": [d.to_dict() for d in self.datasets]}


def balance_reg_repeats(reg_repeats: list[int], num_train_images: int) -> list[int]:
    """Repeats per regularisation image so reg samples per epoch match training samples (spec 2.5).

    First pass: each image with its own repeats, in order, stopping once the total reaches the target (it may
    overshoot). Later passes add one repeat per image, in order, until the totals match. 0 = unused.
    """
    balanced = [0] * len(reg_repeats)
    total, first_pass = 0, True
    while reg_repeats and total < num_train_images:
        for i, repeats in enumerate(reg_repeats):
            added = repeats if first_pass else 1
            balanced[i] += added
            total += added
            if total >= num_train_images:
                break
        first_pass = False
    return balanced


def build_plan(datasets: tuple[DatasetConfig, ...], *, skip_bad_files: bool = False) -> Plan:
    """Discover, caption, size and bucket every image, decoding none.

    Raises ConfigError listing every unusable file (unreadable or truncated image, empty caption, image smaller
    than the smallest bucket, missing or mismatched mask) and every dataset left without training images.
    With `skip_bad_files` the unusable files are left out with one warning listing them.
    """
    problems: list[str] = []
    plans, any_bad = [], False
    for dataset in datasets:
        plan, bad, found_problems = _plan_dataset(dataset, skip_bad_files)
        if bad and skip_bad_files:
            logger.warning("%s: %d unusable files left out (--skip_bad_files):\n  %s",
                           dataset.key_path or "dataset", len(bad), "\n  ".join(b.message for b in bad))
        elif bad:
            problems += [b.message for b in bad]
            any_bad = True
        problems += found_problems
        plans.append(plan)
    if problems:
        if any_bad:
            problems.append("to leave unusable files out and train on the rest, pass --skip_bad_files")
        raise ConfigError(problems)
    return Plan(tuple(plans))


def too_small(size: Size, bucket: Size, dataset: DatasetConfig) -> str | None:
    """Why an image is too small to train on, or None: no bucket on the grid, or it would have to be enlarged
    in both directions to reach the smallest bucket (without bucketing: `resolution`)."""
    if min(bucket) < 1:
        return f"is too small for bucket_reso_steps={dataset.bucket_reso_steps}"
    if not dataset.enable_bucket:
        smallest = dataset.resolution
    elif dataset.bucket_no_upscale:
        return None
    else:
        low = dataset.bucket_limits()[0]
        smallest = (low, low)
    if size[0] < smallest[0] and size[1] < smallest[1]:
        return (f"is smaller than the smallest bucket {smallest[0]}x{smallest[1]} in both directions "
                "(it would be enlarged)")
    return None


Found = tuple[int, FoundImage, Size, Size]
"""(subset index, image, bucket, resized size) of an image that can be trained on."""


def _plan_dataset(dataset: DatasetConfig, skip_bad_files: bool) -> tuple[DatasetPlan, list[BadFile], list[str]]:
    found: list[Found] = []
    held: list[Found] = []
    subsets, bad, problems = [], [], []
    bucketing = bucketing_for(dataset)
    for index, subset in enumerate(dataset.subsets):
        if subset.num_repeats < 1:
            logger.warning("%s=%d: subset %s is not used (num_repeats below 1)", subset.where("num_repeats"),
                           subset.num_repeats, subset.image_dir or subset.metadata_file)
            subsets.append(SubsetPlan(subset.image_dir, subset.key_path, 0, subset.num_repeats, subset.is_reg))
            continue
        images, subset_bad = discover_subset(subset)
        bad += subset_bad
        usable = []
        for image in images:
            bucket, resized = bucketing.fit(image.size)
            reason = too_small(image.size, bucket, dataset)
            if reason:
                width, height = image.size
                bad.append(BadFile(image.path, f"{subset.key_path}: image {image.path} ({width}x{height}) {reason}"))
                continue
            usable.append((index, image, bucket, resized))
        trains, held_out = (usable, []) if subset.is_reg else hold_out(usable, dataset.validation_split,
                                                                       _split_seed(dataset))
        found += trains
        held += held_out
        subsets.append(SubsetPlan(subset.image_dir or str(subset.metadata_file), subset.key_path, len(trains),
                                  subset.num_repeats, subset.is_reg, len(held_out)))
    repeats = _repeats(dataset, [(index, image) for index, image, _, _ in found])
    plan = _dataset_plan(dataset, tuple(subsets), found, repeats)
    if plan.num_train_images == 0 and (skip_bad_files or not bad):
        problems.append(f"{dataset.key_path or '--train_data_dir'}: no training images (only "
                        "regularisation images, or none at all, are left)")
    elif skip_bad_files or not bad:
        counts = [s.num_images + s.num_validation_images for s in subsets if not s.is_reg]
        problems += filter(None, [holdout_problem(dataset, counts)])
    if held:
        validation_subsets = tuple(SubsetPlan(s.image_dir, s.key_path, s.num_validation_images, 1, False)
                                   for s in subsets)
        validation = _dataset_plan(without_augmentation(dataset), validation_subsets, held, [1] * len(held))
        plan = replace(plan, validation=validation)
    return plan, bad, problems


def _split_seed(dataset: DatasetConfig) -> int:
    """The dataset's validation_seed (config.build falls back to --validation_seed, then --seed); 0 in a
    DatasetConfig built in code without one."""
    return dataset.validation_seed if dataset.validation_seed is not None else 0


def _dataset_plan(dataset: DatasetConfig, subsets: tuple[SubsetPlan, ...], found: list[Found],
                  repeats: list[int]) -> DatasetPlan:
    """Images with their repeats, bucket sample counts and batches of `dataset`."""
    images = [ImagePlan(str(image.path), image.caption, image.size, bucket, resized,
                        crop_top_left(resized, bucket, centre_offset(resized, bucket), flipped=False),
                        count, index, dataset.subsets[index].is_reg,
                        str(image.mask_path) if image.mask_path else None)
              for (index, image, bucket, resized), count in zip(found, repeats, strict=True)]
    samples = Counter()
    for image in images:
        samples[image.bucket] += image.repeats
    buckets = tuple(sorted((b, n) for b, n in samples.items() if n > 0))
    batches = sum(math.ceil(n / dataset.batch_size) for _, n in buckets)
    train = sum(s.num_images * max(0, s.num_repeats) for s in subsets if not s.is_reg)
    reg = sum(s.num_images * max(0, s.num_repeats) for s in subsets if s.is_reg)
    return DatasetPlan(dataset, subsets, tuple(images), train, reg, buckets, batches)


def _repeats(dataset: DatasetConfig, found: list[tuple[int, FoundImage]]) -> list[int]:
    """Repeats per found image: the subset's, balanced for regularisation images; 0 when num_repeats < 1."""
    subsets = dataset.subsets
    own = [max(0, subsets[i].num_repeats) for i, _ in found]
    is_reg = [subsets[i].is_reg for i, _ in found]
    num_train = sum(r for r, reg in zip(own, is_reg, strict=True) if not reg)
    reg_positions = [k for k, reg in enumerate(is_reg) if reg]
    num_reg = sum(own[k] for k in reg_positions)
    if num_reg > num_train:
        logger.warning("%s: %d regularisation samples but %d training samples per epoch; some regularisation "
                       "images are unused", dataset.key_path or "--reg_data_dir", num_reg, num_train)
    balanced = balance_reg_repeats([own[k] for k in reg_positions if own[k] > 0], num_train)
    counts = list(own)
    usable = iter(balanced)
    for k in reg_positions:
        counts[k] = next(usable) if own[k] > 0 else 0
    return counts
