"""The training Dataset (spec 2.6): each item is a whole batch of images from one bucket.

Use with `DataLoader(datasets, batch_size=1, shuffle=False, collate_fn=collate_first)`: TrainDatasets orders
the batches of all datasets itself, seeded per epoch (sd-scripts shuffles them together with the loader).
Models are not touched here: `latent_jobs` lists the latents to cache, and `set_latents` takes the cache back
as a mapping keyed by LatentKey (a dict in memory or latent_cache.DiskLatents; both pickle into DataLoader
workers).
"""

from __future__ import annotations

import math
import multiprocessing
import random
from collections.abc import Callable, Mapping

import torch
from torch.utils.data import ConcatDataset, Dataset

from sdxl_lora.config.dataset_toml import DatasetConfig
from sdxl_lora.data import metadata
from sdxl_lora.data.batch import Batch, Shard, shard_rows
from sdxl_lora.data.buckets import Size, centre_offset, crop_top_left
from sdxl_lora.data.captions import is_fixed, process_caption
from sdxl_lora.data.images import crop_offset, face_box, face_crop_window, prepare_image, prepare_mask
from sdxl_lora.data.latent_cache import LatentJob, LatentKey
from sdxl_lora.data.plan import DatasetPlan, ImagePlan, Plan, build_plan
from sdxl_lora.data.text_cache import TextJob

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
"""captions -> (input_ids_1, input_ids_2), each (B, n, 77): a picklable function (functools.partial of
models.text.tokenize with both tokenizers) so that it runs in DataLoader workers."""


class TrainDataset(Dataset):
    """One dataset's batches; `set_epoch` reshuffles them like sd-scripts (seeded by seed + epoch)."""

    def __init__(self, plan: DatasetPlan, *, seed: int, prior_loss_weight: float = 1.0,
                 latents: Mapping[LatentKey, torch.Tensor] | None = None, tokenize: Tokenize | None = None,
                 processes: int = 1):
        self.plan = plan
        self.tokenize = tokenize
        self.seed = seed
        self.prior_loss_weight = prior_loss_weight
        self.latents = latents
        # With several processes a batch is the global one (batch_size x processes), formed exactly as one
        # process with that batch size would; each process then trains its shard of it (batch(part=...)).
        self.processes = processes
        self.batch_size = plan.config.batch_size * processes
        members: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(plan.images):
            members.setdefault(image.bucket, []).extend([index] * image.repeats)
        self._buckets = [members[bucket] for bucket in sorted(members) if members[bucket]]
        # Shared with DataLoader workers, so that set_epoch reaches persistent workers too.
        self._epoch = multiprocessing.RawValue("i", 0)
        self._order_epoch: int | None = None
        self.max_train_steps, self.accumulation = 0, 1
        self.caption_variants = 0

    def set_latents(self, latents: Mapping[LatentKey, torch.Tensor] | None) -> None:
        """Serve cached latents (C, h, w) instead of decoding images; None goes back to images."""
        self.latents = latents

    def set_schedule(self, max_train_steps: int, gradient_accumulation_steps: int = 1) -> None:
        """The run's length, for token warmup (a batch's step is derived from its epoch and index)."""
        self.max_train_steps, self.accumulation = max_train_steps, max(1, gradient_accumulation_steps)

    def latent_jobs(self) -> list[LatentJob]:
        """Every latent the cache must hold: each image that trains (repeats > 0) at its bucket, centre-cropped,
        and flipped too with flip_aug."""
        jobs = []
        for image in self.plan.images:
            if image.repeats > 0:
                subset = self.plan.config.subsets[image.subset_index]
                crop = centre_offset(image.resized_size, image.bucket)
                jobs += [LatentJob(latent_key(image, crop, flip), image.resized_size, subset.resize_interpolation)
                         for flip in ((False, True) if subset.flip_aug else (False,))]
        return jobs

    def reads_files(self) -> bool:
        """Whether making a batch reads any file (images, masks, latents on disk), or only looks up latents in
        memory (--cache_latents, no alpha mask or mask image)."""
        return not isinstance(self.latents, dict) or any(
            self.plan.config.subsets[image.subset_index].alpha_mask or image.mask_path is not None
            for image in self.plan.images)

    def set_tokenize(self, tokenize: Tokenize | None) -> None:
        """Tokenize captions into the batch (live text encoders), or not (None: text-encoder outputs cached)."""
        self.tokenize = tokenize

    def captions_fixed(self) -> bool:
        """Whether every subset gives each image one caption for the whole run (captions.is_fixed)."""
        return all(is_fixed(subset) for subset in self.plan.config.subsets)

    def set_caption_variants(self, variants: int) -> None:
        """With `variants` > 0 each image trains, each epoch, with one of its `variants` processed captions
        (caption_variant), so that the text-encoder cache holds every caption a batch can carry."""
        self.caption_variants = variants

    def caption_variant(self, image: ImagePlan, variant: int, epoch: int) -> str:
        """Processed caption number `variant` of `image`: random choices drawn once per variant; the epoch only
        decides caption_dropout_every_n_epochs (then the caption is empty)."""
        rng = random.Random(f"{self.seed}:caption:{image.path}:{variant}")
        return process_caption(image.caption, self.plan.config.subsets[image.subset_index], rng, epoch=epoch,
                               step=0, max_train_steps=self.max_train_steps)

    def _variant(self, image: ImagePlan, epoch: int) -> int:
        return random.Random(f"{self.seed}:{epoch}:variant:{image.path}").randrange(self.caption_variants)

    def text_jobs(self) -> list[TextJob]:
        """Every caption a batch can carry once set_caption_variants is on: each variant of each image that
        trains, and the empty caption when a subset uses caption_dropout_every_n_epochs."""
        jobs = []
        for image in self.plan.images:
            if image.repeats > 0:
                captions = {self.caption_variant(image, v, 0) for v in range(max(1, self.caption_variants))}
                if self.plan.config.subsets[image.subset_index].caption_dropout_every_n_epochs > 0:
                    captions.add("")
                jobs += [TextJob(caption, image.path) for caption in sorted(captions)]
        return jobs

    def _window(self, image: ImagePlan, rng: random.Random) -> tuple[Size, tuple[int, int]]:
        """(resized size, crop window (left, top)) of one sample: centred, random_crop, or face_crop_aug_range
        around the face named in the file name."""
        subset = self.plan.config.subsets[image.subset_index]
        face = face_box(image.path) if subset.face_crop_aug_range else None
        if face is not None:
            return face_crop_window(image.original_size, image.bucket, face, subset.face_crop_aug_range, rng)
        return image.resized_size, crop_offset(image.resized_size, image.bucket,
                                               rng if subset.random_crop else None)

    def _pixels(self, image: ImagePlan, key: LatentKey, color_rng: random.Random | None,
                resized: Size | None = None):
        subset = self.plan.config.subsets[image.subset_index]
        return prepare_image(image.path, bucket=image.bucket, resized=resized or image.resized_size,
                             interpolation=subset.resize_interpolation, offset=key.crop, flip=key.flip,
                             alpha_mask=subset.alpha_mask, color_rng=color_rng)

    def set_epoch(self, epoch: int) -> None:
        """Order of batches and of images inside buckets for 0-based `epoch` (depends on seed and epoch only)."""
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

    def __getitem__(self, index: int) -> Batch:
        return self.batch(index, step=(self._epoch.value * len(self) + index) // self.accumulation)

    def captions(self, index: int, step: int) -> list[str]:
        """The processed captions of batch `index` of the current epoch at optimizer step `step`, from their
        own generator, so that they can be shown (sdxl-lora check) without reading any image."""
        epoch = self._epoch.value
        if self.caption_variants:  # text-encoder outputs are cached: one of each image's cached captions
            return [self.caption_variant(image, self._variant(image, epoch), epoch)
                    for image in self.batch_images(index)]
        rng = random.Random(f"{self.seed}:{epoch}:{index}:captions")
        return [process_caption(image.caption, self.plan.config.subsets[image.subset_index], rng, epoch=epoch,
                                step=step, max_train_steps=self.max_train_steps)
                for image in self.batch_images(index)]

    def batch(self, index: int, step: int, rank: int = 0) -> Batch:
        """Batch `index` of the current epoch, captions as at optimizer step `step` (token warmup); tokenized
        here, in the loader worker, when the dataset has a tokenizer. With several processes, process `rank`'s
        shard of it (data.batch.shard_rows); a process left without a row gets row 0 with loss weight 0."""
        everything = self.batch_images(index)
        all_captions = self.captions(index, step)
        rows = shard_rows(len(everything), rank, self.processes)
        images, captions = [everything[i] for i in rows or (0,)], [all_captions[i] for i in rows or (0,)]
        pixels, latents, masks, crops, keys = [], [], [], [], []
        for row, image in zip(rows or (0,), images, strict=True):
            # One generator per image and position: flips and crops depend neither on DataLoader worker
            # scheduling nor on which process trains the image.
            rng = random.Random(f"{self.seed}:{self._epoch.value}:{index}:{row}")
            subset = self.plan.config.subsets[image.subset_index]
            flip = subset.flip_aug and rng.random() < 0.5
            resized, crop = self._window(image, rng)
            key = latent_key(image, crop, flip)
            mask = None
            if self.latents is not None:
                latents.append(self.latents[key])
            if self.latents is None or subset.alpha_mask:  # with latents, decode only for the alpha mask
                tensor, mask = self._pixels(image, key, rng if subset.color_aug else None, resized)
                pixels.append(tensor)
            if image.mask_path is not None:
                mask = prepare_mask(image.mask_path, original=image.original_size, bucket=image.bucket,
                                    resized=resized, offset=crop, flip=flip)
            masks.append(mask)
            keys.append(key)
            crops.append(crop_top_left(resized, image.bucket, crop, flip))
        ids_1, ids_2 = self.tokenize(captions) if self.tokenize is not None else (None, None)
        return Batch(
            paths=[i.path for i in images], captions=captions, latent_keys=keys,
            original_size_hw=torch.tensor([(i.original_size[1], i.original_size[0]) for i in images]),
            crop_top_left=torch.tensor(crops, dtype=torch.long),
            target_size_hw=torch.tensor([(i.bucket[1], i.bucket[0]) for i in images]),
            loss_weights=torch.tensor([(self.prior_loss_weight if i.is_reg else 1.0) if rows else 0.0
                                       for i in images]),
            input_ids_1=ids_1, input_ids_2=ids_2,
            images=torch.stack(pixels) if self.latents is None else None,
            latents=torch.stack(latents) if self.latents is not None else None,
            masks=_stack_masks(masks, images[0].bucket),
            custom_attributes=[dict(self.plan.config.subsets[i.subset_index].custom_attributes) for i in images],
            shard=Shard(rows or (0,), len(everything), self.processes, tuple(i.path for i in everything))
            if self.processes > 1 else None,
        )


def latent_key(image: ImagePlan, crop: tuple[int, int], flip: bool) -> LatentKey:
    return LatentKey(image.path, image.bucket, crop, flip)


def _stack_masks(masks: list[torch.Tensor | None], bucket: Size) -> torch.Tensor | None:
    """(B, H, W) masks, ones for samples without one; None when no sample has a mask."""
    if all(m is None for m in masks):
        return None
    ones = torch.ones(bucket[1], bucket[0])
    return torch.stack([m if m is not None else ones for m in masks])


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

    def __init__(self, datasets: list[TrainDataset], *, seed: int, processes: int = 1):
        super().__init__(datasets)
        self.seed = seed
        self.processes = processes
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

    @property
    def num_batches(self) -> int:
        """Batches per epoch (global batches with several processes)."""
        return sum(len(dataset) for dataset in self.datasets)

    def __len__(self) -> int:
        """Items per epoch: each global batch once per process. accelerate's loader sharding hands process r
        items r, r + P, r + 2P...: that is its shard of every global batch, in order (see __getitem__)."""
        return self.num_batches * self.processes

    def __getitem__(self, index: int) -> Batch:
        """Item `index`: shard `index % processes` of global batch `index // processes`."""
        position, rank = divmod(index, self.processes)
        d, j = self.batch_order()[position]
        accumulation = self.datasets[d].accumulation
        return self.datasets[d].batch(j, step=(self._epoch.value * self.num_batches + position) // accumulation,
                                      rank=rank)

    def set_schedule(self, max_train_steps: int, gradient_accumulation_steps: int = 1) -> None:
        """The run's length and accumulation, for token warmup."""
        for dataset in self.datasets:
            dataset.set_schedule(max_train_steps, gradient_accumulation_steps)

    def caption_preview(self, per_subset: int = 3) -> list[list[list[dict]]]:
        """Per dataset, per subset: the first `per_subset` samples of the current epoch in training order,
        each {"path", "caption"} with the caption as it will be encoded. Reads no image."""
        preview = [[[] for _ in d.plan.config.subsets] for d in self.datasets]
        wanted = sum(min(per_subset, s.num_images) for d in self.datasets for s in d.plan.subsets
                     if s.num_repeats > 0)
        for index, (d, j) in enumerate(self.batch_order()):
            dataset = self.datasets[d]
            step = (self._epoch.value * self.num_batches + index) // dataset.accumulation
            for image, caption in zip(dataset.batch_images(j), dataset.captions(j, step), strict=True):
                shown = preview[d][image.subset_index]
                if len(shown) < per_subset and all(e["path"] != image.path for e in shown):
                    shown.append({"path": image.path, "caption": caption})
                    wanted -= 1
            if wanted <= 0:
                break
        return preview

    @property
    def plan(self) -> Plan:
        return Plan(tuple(d.plan for d in self.datasets))

    @property
    def num_train_images(self) -> int:
        """Training images x repeats over all datasets (ss_num_train_images)."""
        return sum(d.plan.num_train_images for d in self.datasets)

    @property
    def num_validation_images(self) -> int:
        """Images held out for validation over all datasets (ss_num_validation_images)."""
        return sum(len(d.plan.validation.images) for d in self.datasets if d.plan.validation is not None)

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

    def latent_jobs(self) -> list[LatentJob]:
        """Each dataset's latents to cache (a key may repeat across datasets with the same bucket)."""
        return [job for dataset in self.datasets for job in dataset.latent_jobs()]

    def set_caption_variants(self, variants: int) -> None:
        for dataset in self.datasets:
            dataset.set_caption_variants(variants)

    def set_tokenize(self, tokenize: Tokenize | None) -> None:
        for dataset in self.datasets:
            dataset.set_tokenize(tokenize)

    def captions_fixed(self) -> bool:
        return all(dataset.captions_fixed() for dataset in self.datasets)

    def reads_files(self) -> bool:
        return any(dataset.reads_files() for dataset in self.datasets)

    def text_jobs(self) -> list[TextJob]:
        """Each dataset's captions to cache."""
        return [job for dataset in self.datasets for job in dataset.text_jobs()]


def shuffle_seed(global_seed: int) -> int:
    """The datasets' shuffle seed for a run with `--seed global_seed`: what sd-scripts draws with
    random.randint(0, 2**31) right after seeding, so training and `sdxl-lora check` agree."""
    return random.Random(global_seed).randint(0, 2**31)


def dataset_seed(seed: int, index: int) -> int:
    """Shuffle seed of dataset `index` (sd-scripts draws one per dataset after seeding; this is derived)."""
    return random.Random(f"dataset:{seed}:{index}").randrange(2**31)


def batch_order_seed(seed: int) -> int:
    """Seed of the order of batches across datasets (sd-scripts: the loader's torch generator)."""
    return random.Random(f"batches:{seed}").randrange(2**31)


def build_train_dataset(plan: Plan | tuple[DatasetConfig, ...], *, seed: int, prior_loss_weight: float = 1.0,
                        latents: Mapping[LatentKey, torch.Tensor] | None = None,
                        tokenize: Tokenize | None = None, processes: int = 1) -> TrainDatasets:
    """One TrainDataset per planned dataset, concatenated. Given configs, plans them first (build_plan). With
    `processes` > 1 its batches are global batches (batch_size x processes) served as one shard per process."""
    if not isinstance(plan, Plan):
        plan = build_plan(tuple(plan))
    return TrainDatasets([TrainDataset(d, seed=dataset_seed(seed, i), prior_loss_weight=prior_loss_weight,
                                       latents=latents, tokenize=tokenize, processes=processes)
                          for i, d in enumerate(plan.datasets)],
                         seed=batch_order_seed(seed), processes=processes)


def build_validation_dataset(plan: Plan, *, seed: int, tokenize: Tokenize | None = None,
                             processes: int = 1) -> TrainDatasets | None:
    """The held-out images of every dataset (plan.validation), batched by bucket like training, each image once
    per pass, in one order fixed by `seed` (epoch 0 is never advanced), so every validation run sees the same
    batches. None when no dataset holds images out."""
    held = plan.validation
    return (build_train_dataset(held, seed=seed, tokenize=tokenize, processes=processes)
            if held is not None else None)


class CacheGroup:
    """Training and validation datasets whose latents and text-encoder outputs are cached in one pass: give it
    to the cache builders (loop.latent_source_for, loop.text_cache_for) in place of the training dataset."""

    def __init__(self, *datasets: TrainDatasets | None):
        self.datasets = [d for d in datasets if d is not None]

    def latent_jobs(self) -> list[LatentJob]:
        return [job for dataset in self.datasets for job in dataset.latent_jobs()]

    def set_latents(self, latents: Mapping[LatentKey, torch.Tensor] | None) -> None:
        for dataset in self.datasets:
            dataset.set_latents(latents)

    def set_caption_variants(self, variants: int) -> None:
        for dataset in self.datasets:
            dataset.set_caption_variants(variants)

    def set_tokenize(self, tokenize: Tokenize | None) -> None:
        for dataset in self.datasets:
            dataset.set_tokenize(tokenize)

    def captions_fixed(self) -> bool:
        return all(dataset.captions_fixed() for dataset in self.datasets)

    def text_jobs(self) -> list[TextJob]:
        return [job for dataset in self.datasets for job in dataset.text_jobs()]


def collate_first(items: list[Batch]) -> Batch:
    """DataLoader collate_fn for batch_size=1: dataset items already are batches."""
    return items[0]
