"""Images held out of training for the validation loss (spec 2.10), as pure functions.

Each training subset's images (in discovery order) are shuffled with `random.Random(seed)`; training keeps the
first ceil(n x (1 - split)), validation the rest, so the two never overlap and the split is the same in every
run with the same seed and files. sd-scripts differs where validation images leak into training: without
`validation_seed` it shuffles the training and the validation part with different random states; it sizes the
validation part with round(n x split), which can overlap the training part by one image (7 images at split 0.5:
4 + 4), and its floating-point ceil keeps 4 of 10 images for training at split 0.7 (10 x (1 - 0.7) = 3.0000000000000004)
beside 7 for validation. Regularisation subsets are never split.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TypeVar

from sdxl_lora.config.dataset_toml import DatasetConfig
from sdxl_lora.config.split import training_count

T = TypeVar("T")

def hold_out(items: list[T], split: float, seed: int) -> tuple[list[T], list[T]]:
    """(training, held out) parts of `items`, each in the original order. Which items are held out depends only
    on len(items), split and seed: the order `random.Random(seed).shuffle` gives positions, as sd-scripts'
    `random.seed(validation_seed); random.shuffle(...)` does, so the same files split as sd-scripts splits them
    when it is given a validation_seed."""
    if split <= 0 or not items:
        return list(items), []
    positions = list(range(len(items)))
    random.Random(seed).shuffle(positions)
    held = set(positions[training_count(len(items), split):])
    return ([item for k, item in enumerate(items) if k not in held],
            [item for k, item in enumerate(items) if k in held])


def without_augmentation(dataset: DatasetConfig) -> DatasetConfig:
    """The dataset's settings for validation: captions processed the same way (prefix/suffix, keep tokens,
    separators, wildcards drawn from a fixed seed), but no random flip, crop, colour or face crop, no caption
    shuffle, dropout or token warmup, so that a validation batch is the same in every validation run."""
    subsets = tuple(replace(s, flip_aug=False, random_crop=False, color_aug=False, face_crop_aug_range=None,
                            shuffle_caption=False, caption_dropout_rate=0.0, caption_dropout_every_n_epochs=0,
                            caption_tag_dropout_rate=0.0, token_warmup_step=0, num_repeats=1)
                    for s in dataset.subsets)
    return replace(dataset, subsets=subsets)
