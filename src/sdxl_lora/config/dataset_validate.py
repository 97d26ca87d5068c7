"""Checks on resolved datasets (spec 1.17): bucket settings, folders, settings the pipeline does not do yet.

Run during validation, before any model is loaded; looks at the file system but decodes no image.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

from sdxl_lora.config.dataset_toml import IMAGE_EXTENSIONS, DatasetConfig, SubsetConfig, count_images, show_value
from sdxl_lora.config.options import OPTIONS_BY_NAME, WORKS
from sdxl_lora.config.split import holdout_problem

logger = logging.getLogger(__name__)

_STATUS_OPTION = {"metadata_file": "in_json", "conditioning_data_dir": "masked_loss"}
"""Subset key -> option whose status decides whether a non-default value works, where the names differ; every
other subset key that is also an option follows the option of the same name (config.options: one source)."""


def validate_datasets(datasets: tuple[DatasetConfig, ...], *, sdxl: bool = True,
                      cache_latents: bool, masked_loss: bool = False) -> list[str]:
    """Every problem with the resolved datasets (spec 1.17), each naming where the value was set.

    Looks at the file system (image folders) but decodes no image.
    """
    problems: list[str] = []
    for dataset in datasets:
        problems += _dataset_problems(dataset, sdxl)
        for subset in dataset.subsets:
            problems += _subset_problems(subset, cache_latents, masked_loss)
    subsets = [s for d in datasets for s in d.subsets]
    if masked_loss and subsets and not any(s.alpha_mask or s.conditioning_data_dir for s in subsets):
        logger.warning("--masked_loss: no subset has conditioning_data_dir or alpha_mask, so there is no mask "
                       "and the loss is not masked")
    return list(dict.fromkeys(problems))  # a [general] value shared by many subsets is reported once


def _dataset_problems(ds: DatasetConfig, sdxl: bool) -> list[str]:
    problems = []
    width, height = ds.resolution
    if width < 1 or height < 1:
        problems.append(f"{ds.where('resolution')}={width},{height}: both sides must be positive")
    elif sdxl and not ds.enable_bucket and (width % 32 or height % 32):
        # The SDXL U-Net halves the latent (pixels / 8) twice and concatenates skips: sides must divide by 32.
        problems.append(f"{ds.where('resolution')}={width},{height}: without bucketing both sides must be "
                        "multiples of 32 for SDXL")
    if ds.batch_size < 1:
        problems.append(f"{ds.where('batch_size')}={ds.batch_size}: must be at least 1")
    if not 0.0 <= ds.validation_split < 1.0:
        problems.append(f"{ds.where('validation_split')}={ds.validation_split}: must be at least 0 and below 1 "
                        "(the fraction of each subset's training images held out for validation)")
    elif ds.validation_split > 0:  # folders counted here; data.plan checks again on the usable images
        counts = [count_images(Path(s.image_dir)) for s in ds.subsets if _counted(s) and not s.is_reg]
        problems += filter(None, [holdout_problem(ds, counts)])
    if ds.enable_bucket:
        problems += _bucket_problems(ds, sdxl)
    training = [s for s in ds.subsets if not s.is_reg]
    if training and all(s.num_repeats < 1 for s in training):  # each is left out (warning): nothing would train
        problems += [f"{s.where('num_repeats')}={s.num_repeats}: must be at least 1 for some training subset "
                     f"of {ds.key_path or 'the dataset'}; with none left nothing would train" for s in training]
    return problems


def _counted(s: SubsetConfig) -> bool:
    """A DreamBooth or mask subset that trains and whose folder exists (fine-tuning images are counted when the
    metadata is read)."""
    return s.metadata_file is None and s.num_repeats >= 1 and Path(s.image_dir).is_dir()


def _bucket_problems(ds: DatasetConfig, sdxl: bool) -> list[str]:
    steps = ds.bucket_reso_steps
    small = [k for k in ("min_bucket_reso", "max_bucket_reso") if getattr(ds, k) < 1]
    if small:
        return [f"{ds.where(k)}={getattr(ds, k)}: must be positive" for k in small]
    if steps < 1 or (sdxl and steps % 32):
        return [f"{ds.where('bucket_reso_steps')}={steps}: must be a multiple of 32 for SDXL"]
    problems = []
    low, high = ds.bucket_limits()
    if ds.bucket_no_upscale and (ds.min_bucket_reso, ds.max_bucket_reso) != (256, 1024):
        logger.warning("%s: min_bucket_reso and max_bucket_reso are not used with bucket_no_upscale (each image "
                       "gets its own bucket), only checked against the resolution", ds.key_path or "dataset")
    for key, value, rounded in (("min_bucket_reso", ds.min_bucket_reso, low),
                                ("max_bucket_reso", ds.max_bucket_reso, high)):
        if rounded != value:
            logger.warning("%s=%d rounded to %d (bucket_reso_steps)", ds.where(key), value, rounded)
    width, height = ds.resolution
    if low > min(width, height):
        problems.append(f"{ds.where('min_bucket_reso')}={ds.min_bucket_reso} (rounded: {low}): must not "
                        f"exceed the shorter side of resolution {width}x{height}")
    if high < max(width, height):
        problems.append(f"{ds.where('max_bucket_reso')}={ds.max_bucket_reso} (rounded: {high}): must not be "
                        f"below the longer side of resolution {width}x{height}")
    return problems


def _subset_problems(s: SubsetConfig, cache_latents: bool, masked_loss: bool) -> list[str]:
    problems = []  # num_repeats < 1 leaves the subset out with a warning (data.plan), as sd-scripts
    for key in ("keep_tokens", "caption_dropout_every_n_epochs"):
        if getattr(s, key) < 0:
            problems.append(f"{s.where(key)}={getattr(s, key)}: must not be negative")
    for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        if not 0.0 <= getattr(s, key) <= 1.0:
            problems.append(f"{s.where(key)}={getattr(s, key)}: must be between 0 and 1")
    for key in ("color_aug", "random_crop", "face_crop_aug_range"):
        if cache_latents and getattr(s, key):
            problems.append(f"{s.where(key)}={show_value(getattr(s, key))}: cannot be combined with "
                            "--cache_latents (latents are encoded once, before any augmentation)")
    if s.face_crop_aug_range is not None and not 0 < s.face_crop_aug_range[0] <= s.face_crop_aug_range[1]:
        problems.append(f"{s.where('face_crop_aug_range')}={show_value(s.face_crop_aug_range)}: expected two "
                        "numbers 0 < low <= high (the face's share of the bucket's shorter side)")
    if s.token_warmup_step > 0 and s.token_warmup_min < 1:
        problems.append(f"{s.where('token_warmup_min')}={s.token_warmup_min}: must be at least 1")
    problems += _mask_problems(s, masked_loss)
    problems += _not_yet_settings(s)
    if s.custom_attributes.get("diff_output_preservation"):
        problems.append(f"{s.where('custom_attributes')}.diff_output_preservation: not supported yet")
    if s.metadata_file is None:
        problems += _image_dir_problems(s)
    elif not Path(s.metadata_file).is_file() and s.where("metadata_file") != "--in_json":  # paths.py: the flag
        problems.append(f"{s.where('metadata_file')}: file not found: {s.metadata_file}")
    elif s.image_dir and not Path(s.image_dir).is_dir():
        problems.append(f"{s.where('image_dir')}: folder not found: {s.image_dir}")
    return problems


def _mask_problems(s: SubsetConfig, masked_loss: bool) -> list[str]:
    if s.conditioning_data_dir is None:
        return []
    if not masked_loss:
        return [f"{s.where('conditioning_data_dir')}: masks are used only with --masked_loss; add it or remove "
                "the key"]
    if not Path(s.conditioning_data_dir).is_dir():
        return [f"{s.where('conditioning_data_dir')}: folder not found: {s.conditioning_data_dir}"]
    return []


def _not_yet_settings(s: SubsetConfig) -> list[str]:
    """A non-default subset setting whose option does not work yet (e.g. shuffle_caption)."""
    problems = []
    for f in fields(SubsetConfig):
        option = OPTIONS_BY_NAME.get(_STATUS_OPTION.get(f.name, f.name))
        if option is None or option.status == WORKS or getattr(s, f.name) == f.default:
            continue
        where = f" (roadmap: {option.roadmap})" if option.roadmap else ""
        problems.append(f"{s.where(f.name)}={show_value(getattr(s, f.name))}: not supported yet{where}")
    return problems


def _image_dir_problems(s: SubsetConfig) -> list[str]:
    folder = Path(s.image_dir)
    if not folder.is_dir():
        return [f"{s.where('image_dir')}: folder not found: {folder}"]
    if not count_images(folder):
        return [f"{s.where('image_dir')}: no images ({' '.join(IMAGE_EXTENSIONS)}) directly in {folder}"]
    return []
