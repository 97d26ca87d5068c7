"""Dataset TOML (spec 2): typed dataclasses and the subset -> dataset -> [general] -> command-line fallback."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SubsetConfig:
    """One folder of images (a [[datasets.subsets]] table) with every setting resolved."""

    image_dir: str
    """Folder that directly contains the images."""
    num_repeats: int = 1
    """How often each image is seen per epoch."""
    caption_extension: str = ".caption"
    """Caption file extension (with leading dot)."""
    class_tokens: str | None = None
    """Caption used for images without a caption file."""
    is_reg: bool = False
    """Regularisation subset."""
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    enable_wildcard: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    color_aug: bool = False
    flip_aug: bool = False
    random_crop: bool = False
    face_crop_aug_range: tuple[float, float] | None = None
    token_warmup_min: int = 1
    token_warmup_step: float = 0
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    cache_info: bool = False
    alpha_mask: bool = False
    resize_interpolation: str | None = None
    custom_attributes: dict = field(default_factory=dict)
    metadata_file: str | None = None
    conditioning_data_dir: str | None = None
    key_path: str = ""
    """Where this subset came from, e.g. 'datasets[0].subsets[1]' (for error messages)."""


@dataclass(frozen=True)
class DatasetConfig:
    """One [[datasets]] table with every setting resolved."""

    subsets: tuple[SubsetConfig, ...]
    resolution: tuple[int, int]
    """(width, height) of the target area."""
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    validation_split: float = 0.0
    validation_seed: int | None = None
    network_multiplier: float = 1.0
    resize_interpolation: str | None = None
    key_path: str = ""
    """Where this dataset came from, e.g. 'datasets[0]'."""
