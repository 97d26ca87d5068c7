"""The training Dataset (spec 2.6): each item is a whole batch of images from one bucket.

Use with `DataLoader(datasets, batch_size=1, shuffle=False, collate_fn=collate_first)`: TrainDatasets orders
the batches of all datasets itself, seeded per epoch (sd-scripts shuffles them together with the loader).
Models are not touched here: `iter_images_for_cache` hands out the images to encode, and `set_latents` takes
the encoded latents back as a mapping keyed by LatentKey (a plain dict pickles into DataLoader workers).
"""

from __future__ import annotations

import math
import multiprocessing
import random
import re
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import ConcatDataset, Dataset

from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.data import metadata
from sdxl_lora.data.buckets import Size, crop_top_left
from sdxl_lora.data.images import prepare_image
from sdxl_lora.data.plan import DatasetPlan, ImagePlan, Plan, build_plan

LatentKey = tuple[str, Size, bool]
"""(image path, bucket (w, h), flipped): one cached latent. The bucket tells apart the same file in two
datasets of different resolution."""

_WILDCARD = re.compile(r"\{([^{}]*)\}")


def final_caption(caption: str, subset: SubsetConfig, rng: random.Random) -> str:
    """The caption fed to the text encoders: one random line and `{a|b}` choices with enable_wildcard,
    then caption_prefix / caption_suffix joined with a space."""
    if subset.enable_wildcard:
        caption = rng.choice(caption.split("\n"))
    if subset.caption_prefix:
        caption = f"{subset.caption_prefix} {caption}"
    if subset.caption_suffix:
        caption = f"{caption} {subset.caption_suffix}"
    if subset.enable_wildcard:
        caption = _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption


class TrainDataset(Dataset):
    """One dataset's batches; `set_epoch` reshuffles them like sd-scripts (seeded by seed + epoch)."""

    def __init__(self, plan: DatasetPlan, *, seed: int, prior_loss_weight: float = 1.0,
                 latents: Mapping[LatentKey, torch.Tensor] | None = None):
        self.plan = plan
        self.seed = seed
        self.prior_loss_weight = prior_loss_weight
        self.latents = latents
        self.batch_size = plan.config.batch_size
        members: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(plan.images):
            members.setdefault(image.bucket, []).extend([index] * image.repeats)
        self._buckets = [members[bucket] for bucket in sorted(members) if members[bucket]]
        # Shared with DataLoader workers, so that set_epoch reaches persistent workers too.
        self._epoch = multiprocessing.RawValue("i", 0)
        self._order_epoch: int | None = None

    def set_latents(self, latents: Mapping[LatentKey, torch.Tensor] | None) -> None:
        """Serve cached latents (C, h, w) instead of decoding images; None goes back to images."""
        self.latents = latents

    def iter_images_for_cache(self, batch_size: int) -> Iterator[tuple[list[LatentKey], torch.Tensor]]:
        """Every image that trains (repeats > 0) once, and flipped too with flip_aug, centre-cropped to its
        bucket, in same-bucket chunks of up to `batch_size`: (keys, images (n, 3, H, W))."""
        by_bucket: dict[Size, list[tuple[ImagePlan, bool]]] = {}
        for image in self.plan.images:
            if image.repeats > 0:
                flips = (False, True) if self.plan.config.subsets[image.subset_index].flip_aug else (False,)
                by_bucket.setdefault(image.bucket, []).extend((image, flip) for flip in flips)
        for bucket in sorted(by_bucket):
            entries = by_bucket[bucket]
            for start in range(0, len(entries), batch_size):
                chunk = entries[start:start + batch_size]
                pixels = [self._pixels(image, flip, None)[0] for image, flip in chunk]
                yield [(image.path, image.bucket, flip) for image, flip in chunk], torch.stack(pixels)

    def _pixels(self, image: ImagePlan, flip: bool, crop_rng: random.Random | None):
        subset = self.plan.config.subsets[image.subset_index]
        return prepare_image(image.path, bucket=image.bucket, resized=image.resized_size,
                             interpolation=subset.resize_interpolation, crop_rng=crop_rng, flip=flip,
                             alpha_mask=subset.alpha_mask)

    def set_epoch(self, epoch: int) -> None:
        """Order of batches and of images inside buckets for `epoch` (depends on seed and epoch only)."""
        self._epoch.value = epoch

    def _order(self) -> tuple[list[tuple[int, int]], list[list[int]]]:
        epoch = self._epoch.value
        if self._order_epoch != epoch:
            rng = epoch_rng(self.seed, epoch)
            batches = [(b, j) for b, bucket in enumerate(self._buckets)
                       for j in range(math.ceil(len(bucket) / self.batch_size))]
            rng.shuffle(batches)
            buckets = [list(bucket) for bucket in self._buckets]
            for bucket in buckets:
                rng.shuffle(bucket)
            self._batches, self._shuffled, self._order_epoch = batches, buckets, epoch
        return self._batches, self._shuffled

    def __len__(self) -> int:
        return sum(math.ceil(len(bucket) / self.batch_size) for bucket in self._buckets)

    def batch_images(self, index: int) -> list[ImagePlan]:
        """The images of batch `index` in the current epoch."""
        batches, buckets = self._order()
        b, j = batches[index]
        chosen = buckets[b][j * self.batch_size:(j + 1) * self.batch_size]
        return [self.plan.images[k] for k in chosen]

    def __getitem__(self, index: int) -> dict:
        """One batch: images (B,3,H,W) or, after set_latents, latents (B,C,h,w); captions; original_size_hw,
        crop_top_left and target_size_hw (B,2) int64; loss_weights (B,); paths; latent_keys; custom_attributes;
        and alpha_masks (B,H,W) when a subset of the batch uses alpha_mask."""
        images = self.batch_images(index)
        # One generator per batch: flips and random crops do not depend on DataLoader worker scheduling.
        rng = random.Random(f"{self.seed}:{self._epoch.value}:{index}")
        pixels, latents, masks, captions, crops, attributes, keys = [], [], [], [], [], [], []
        for image in images:
            subset = self.plan.config.subsets[image.subset_index]
            flip = subset.flip_aug and rng.random() < 0.5
            mask = None
            if self.latents is not None:
                latents.append(self.latents[(image.path, image.bucket, flip)])
            if self.latents is None or subset.alpha_mask:  # with latents, decode only for the alpha mask
                tensor, mask = self._pixels(image, flip, rng if subset.random_crop else None)
                pixels.append(tensor)
            masks.append(mask)
            keys.append((image.path, image.bucket, flip))
            captions.append(final_caption(image.caption, subset, rng))
            crops.append(crop_top_left(image.bucket, image.original_size, flip))
            attributes.append(dict(subset.custom_attributes))
        batch = self._collate(images, pixels, latents, masks, captions, crops, attributes)
        batch["latent_keys"] = keys
        return batch

    def _collate(self, images, pixels, latents, masks, captions, crops, attributes) -> dict:
        batch = {
            "captions": captions,
            "original_size_hw": torch.tensor([(i.original_size[1], i.original_size[0]) for i in images]),
            "crop_top_left": torch.tensor(crops, dtype=torch.long),
            "target_size_hw": torch.tensor([(i.bucket[1], i.bucket[0]) for i in images]),
            "loss_weights": torch.tensor([self.prior_loss_weight if i.is_reg else 1.0 for i in images]),
            "paths": [i.path for i in images],
            "custom_attributes": attributes,
        }
        if self.latents is not None:
            batch["latents"] = torch.stack(latents)
        else:
            batch["images"] = torch.stack(pixels)
        if any(m is not None for m in masks):
            ones = torch.ones(images[0].bucket[1], images[0].bucket[0])
            batch["alpha_masks"] = torch.stack([m if m is not None else ones for m in masks])
        return batch


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """The generator that orders an epoch: seeded with seed + epoch, as sd-scripts' random.seed(seed + epoch)."""
    return random.Random(seed + epoch)


class TrainDatasets(ConcatDataset):
    """All training datasets; each epoch their batches come in one shuffled order (sd-scripts' DataLoader
    shuffle over the concatenated datasets), so several [[datasets]] mix instead of following each other.

    Item `index` of epoch e is batch j of dataset d, where (d, j) is entry `index` of the list of every
    (dataset, batch) pair in configuration order shuffled by `epoch_rng(seed, e)`.
    """

    datasets: list[TrainDataset]

    def __init__(self, datasets: list[TrainDataset], *, seed: int):
        super().__init__(datasets)
        self.seed = seed
        # Shared with DataLoader workers, so that set_epoch reaches persistent workers too.
        self._epoch = multiprocessing.RawValue("i", 0)
        self._order_epoch: int | None = None

    def batch_order(self) -> list[tuple[int, int]]:
        """(dataset index, batch index in that dataset's epoch order) of every item of the current epoch."""
        epoch = self._epoch.value
        if self._order_epoch != epoch:
            pairs = [(d, j) for d, dataset in enumerate(self.datasets) for j in range(len(dataset))]
            epoch_rng(self.seed, epoch).shuffle(pairs)
            self._pairs, self._order_epoch = pairs, epoch
        return self._pairs

    def __getitem__(self, index: int):
        d, j = self.batch_order()[index]
        return self.datasets[d][j]

    @property
    def plan(self) -> Plan:
        return Plan(tuple(d.plan for d in self.datasets))

    @property
    def num_train_images(self) -> int:
        """Training images x repeats over all datasets (ss_num_train_images)."""
        return sum(d.plan.num_train_images for d in self.datasets)

    @property
    def num_reg_images(self) -> int:
        """Regularisation images x repeats before balancing (ss_num_reg_images)."""
        return sum(d.plan.num_reg_images for d in self.datasets)

    def metadata_datasets(self) -> list[dict]:
        return metadata.metadata_datasets(self.plan)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        return metadata.merged_tag_frequency(self.plan)

    def dataset_dirs(self, reg: bool = False) -> dict[str, dict[str, int]]:
        return metadata.dataset_dirs(self.plan, reg)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def set_latents(self, latents: Mapping[LatentKey, torch.Tensor] | None) -> None:
        for dataset in self.datasets:
            dataset.set_latents(latents)

    def iter_images_for_cache(self, batch_size: int) -> Iterator[tuple[list[LatentKey], torch.Tensor]]:
        """Each dataset's images to encode (keys may repeat across datasets with the same bucket)."""
        for dataset in self.datasets:
            yield from dataset.iter_images_for_cache(batch_size)


def dataset_seed(seed: int, index: int) -> int:
    """Shuffle seed of dataset `index` (sd-scripts draws one per dataset after seeding; this is derived)."""
    return random.Random(f"dataset:{seed}:{index}").randrange(2**31)


def batch_order_seed(seed: int) -> int:
    """Seed of the order of batches across datasets (sd-scripts: the loader's torch generator)."""
    return random.Random(f"batches:{seed}").randrange(2**31)


def build_train_dataset(plan: Plan | tuple[DatasetConfig, ...], *, seed: int, prior_loss_weight: float = 1.0,
                        latents: Mapping[LatentKey, torch.Tensor] | None = None) -> TrainDatasets:
    """One TrainDataset per planned dataset, concatenated. Given configs, plans them first (build_plan)."""
    if not isinstance(plan, Plan):
        plan = build_plan(tuple(plan))
    return TrainDatasets([TrainDataset(d, seed=dataset_seed(seed, i), prior_loss_weight=prior_loss_weight,
                                       latents=latents) for i, d in enumerate(plan.datasets)],
                         seed=batch_order_seed(seed))


def collate_first(items: list[dict]) -> dict:
    """DataLoader collate_fn for batch_size=1: dataset items already are batches."""
    return items[0]
