"""Image and caption discovery for DreamBooth subsets (spec 2.4). Reads image headers, never pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import imagesize
from PIL import Image

from sdxl_lora.config.dataset_toml import IMAGE_EXTENSIONS, SubsetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundImage:
    """One image file with its caption and size."""

    path: Path
    caption: str
    """First caption line, or every non-empty line joined by newlines with enable_wildcard."""
    size: tuple[int, int]
    """(width, height) from the file header."""


class DiscoveryError(Exception):
    """A caption or image file that cannot be used."""


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` (non-recursive), sorted by path."""
    extensions = set(IMAGE_EXTENSIONS) | {e.upper() for e in IMAGE_EXTENSIONS}
    return sorted(p for p in folder.iterdir() if p.suffix in extensions and p.is_file())


def caption_candidates(image: Path, extension: str) -> list[Path]:
    """`<stem><ext>`, then for face-crop names `name_cx_cy_w_h` (>= 5 '_' parts) `<name><ext>`."""
    candidates = [image.with_name(image.stem + extension)]
    parts = image.stem.split("_")
    if len(parts) >= 5:
        candidates.append(image.with_name("_".join(parts[:-4]) + extension))
    return candidates


def read_caption(path: Path, enable_wildcard: bool) -> str:
    """First stripped line; with wildcards every non-empty stripped line joined by '\\n'."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DiscoveryError(f"caption file {path} is not UTF-8 text") from e
    lines = [line.strip() for line in text.splitlines()]
    # Stricter than sd-scripts, which only rejects a file of zero lines: whitespace only counts as empty too.
    if not any(lines):
        raise DiscoveryError(f"caption file {path} is empty; delete it to use class_tokens or fill it in")
    if enable_wildcard:
        return "\n".join(line for line in lines if line)
    return lines[0]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header; PIL when imagesize does not know the format."""
    try:
        width, height = imagesize.get(path)
    except ValueError:  # a header imagesize cannot parse; PIL decides below
        width = height = -1
    if width > 0 and height > 0:
        return width, height
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as e:
        raise DiscoveryError(f"cannot read image {path}: {e}") from e


def discover_subset(subset: SubsetConfig) -> tuple[list[FoundImage], list[str]]:
    """Every image of a DreamBooth subset with caption and size, and the problems found (one per file)."""
    found, problems, uncaptioned = [], [], 0
    for path in list_images(Path(subset.image_dir)):
        try:
            candidates = caption_candidates(path, subset.caption_extension)
            caption_file = next((c for c in candidates if c.is_file()), None)
            if caption_file is not None:
                caption = read_caption(caption_file, subset.enable_wildcard)
            else:
                caption = subset.class_tokens or ""
                uncaptioned += caption == ""
            found.append(FoundImage(path, caption, image_size(path)))
        except DiscoveryError as e:
            problems.append(f"{subset.key_path}: {e}")
    if uncaptioned:
        logger.warning("%s: %d of %d images in %s have no %s caption file and there are no class_tokens: "
                       "they train with an empty caption", subset.key_path, uncaptioned, len(found),
                       subset.image_dir, subset.caption_extension)
    return found, problems
