"""How many images validation_split holds out (spec 2.10), shared by the up-front check of the configuration
and by data.holdout, which picks the images."""

from __future__ import annotations

import math

from sdxl_lora.config.dataset_toml import DatasetConfig

_EPSILON = 1e-9
"""A product within this of an integer counts as that integer (10 x (1 - 0.7) = 3.0000000000000004)."""


def training_count(n: int, split: float) -> int:
    """How many of a subset's n images train: ceil(n x (1 - split)); the other n - that are held out."""
    return min(n, max(0, math.ceil(n * (1.0 - split) - _EPSILON)))


def smallest_split(n: int) -> float:
    """The smallest split (rounded up to 3 decimals) that holds out at least one of n images."""
    return math.ceil(1000 / n) / 1000 if n > 0 else 1.0


def holdout_problem(dataset: DatasetConfig, counts: list[int]) -> str | None:
    """The problem, naming where validation_split was set, when it is above 0 but holds out no image of the
    dataset whose training subsets have `counts` images; None otherwise (also when there is no image at all:
    that is reported on its own)."""
    split = dataset.validation_split
    if not 0 < split < 1 or not any(counts) or any(training_count(n, split) < n for n in counts):
        return None
    return (f"{dataset.where('validation_split')}={split}: holds out no image of {dataset.key_path or 'the dataset'} "
            f"(a subset of n images keeps ceil(n x (1 - split)) for training); raise it to at least "
            f"{smallest_split(max(counts))} or set it to 0")
