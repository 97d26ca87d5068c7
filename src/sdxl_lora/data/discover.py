"""Image, caption and mask discovery (spec 2.4, 2.7, 2.9). Reads image headers and file tails, never pixels
(except to confirm a file whose tail looks cut off).

Problems with single files (unreadable or truncated image, empty or non-UTF-8 caption, missing or mismatched
mask) are returned as BadFile entries, so that the caller can stop or, when the user asked, skip them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import imagesize
from PIL import Image

from sdxl_lora.config.dataset_toml import IMAGE_EXTENSIONS, SubsetConfig
from sdxl_lora.data.buckets import Size
from sdxl_lora.data.images import ImageError, load_upright, orientation, upright_size
from sdxl_lora.data.info_cache import InfoCache

logger = logging.getLogger(__name__)

_TAIL = 4096
"""Bytes read from the end of a file to find its end marker."""


@dataclass(frozen=True)
class FoundImage:
    """One image file with its caption and size."""

    path: Path
    caption: str
    """First caption line, or every non-empty line joined by newlines with enable_wildcard."""
    size: tuple[int, int]
    """(width, height) as shown (EXIF orientation applied), from the file header."""
    mask_path: Path | None = None
    """Its conditioning_data_dir mask, if the subset has one."""


@dataclass(frozen=True)
class BadFile:
    """A file that cannot be trained on, with why (the message names the file)."""

    path: Path
    message: str


class DiscoveryError(Exception):
    """A caption, image or metadata file that cannot be used."""


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` (non-recursive), sorted by path. Hidden files are left out."""
    extensions = set(IMAGE_EXTENSIONS) | {e.upper() for e in IMAGE_EXTENSIONS}
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries
                      if not e.name.startswith(".") and os.path.splitext(e.name)[1] in extensions and e.is_file())


def caption_candidates(image: Path, extension: str) -> list[Path]:
    """`<stem><ext>`, then for face-crop names `name_cx_cy_w_h` (>= 5 '_' parts of the file name) `<name><ext>`
    in the same folder. Only the file name is split (sd-scripts splits the whole path, so underscores in folder
    names can make it read a caption from outside the dataset)."""
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


def _tail_is_complete(path: Path, image_format: str | None) -> bool:
    """Whether the file ends as its format requires (PNG: IEND chunk; JPEG: EOI marker; WebP: RIFF length)."""
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        if image_format == "WEBP":
            file.seek(4)
            return int.from_bytes(file.read(4), "little") + 8 <= size
        file.seek(max(0, size - _TAIL))
        tail = file.read()
    if image_format == "PNG":
        return b"IEND" in tail
    if image_format in ("JPEG", "MPO"):
        return b"\xff\xd9" in tail
    return True


_BY_SUFFIX = {".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}
"""Formats whose size is read by `imagesize` (PIL decodes a WebP to open it)."""


def _header(path: Path) -> tuple[tuple[int, int], str | None, int]:
    """(stored size, format, EXIF orientation) from the header alone."""
    image_format = _BY_SUFFIX.get(path.suffix.lower())
    if image_format is not None:
        try:
            width, height = imagesize.get(path)
        except ValueError:  # a header imagesize cannot parse; PIL decides below
            width = height = -1
        if width > 0 and height > 0:
            return (width, height), image_format, 1
    try:
        with Image.open(path) as image:
            return image.size, image.format, orientation(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DiscoveryError(f"cannot read image {path}: {e}") from e


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as shown (EXIF orientation applied), from the header. A file whose end marker is
    missing is decoded once to tell a truncated file from one with trailing data. Raises DiscoveryError."""
    size, image_format, orient = _header(path)
    if not _tail_is_complete(path, image_format):
        try:
            load_upright(path)
        except ImageError as e:
            raise DiscoveryError(f"{e} (the file looks truncated)") from e
    return upright_size(size, orient)


def _caption_file(path: Path, subset: SubsetConfig, names: set[str]) -> Path | None:
    """The first caption candidate among `names` (the folder's entries, listed once)."""
    return next((c for c in caption_candidates(path, subset.caption_extension) if c.name in names), None)


def _scan(path: Path, subset: SubsetConfig, names: set[str], cache: InfoCache | None) -> tuple[str | None, Size]:
    """(caption from its file or None, size) of one image, from the cache_info entry when it is current."""
    caption_file = _caption_file(path, subset, names)
    stamp = cache.stamp(path, caption_file) if cache is not None else None
    known = cache.get(path, stamp) if cache is not None else None
    if known is not None:
        return (known[0] if caption_file else None), known[1]
    caption = read_caption(caption_file, subset.enable_wildcard) if caption_file else None
    size = image_size(path)
    if cache is not None:
        cache.put(path, stamp, caption or "", size)
    return caption, size


def _masks(subset: SubsetConfig) -> dict[str, Path]:
    folder = Path(subset.conditioning_data_dir or "")
    masks: dict[str, Path] = {}
    for path in list_images(folder):
        masks.setdefault(path.stem, path)
    return masks


def discover_subset(subset: SubsetConfig) -> tuple[list[FoundImage], list[BadFile]]:
    """Every image of a DreamBooth (or mask) subset with caption, size and mask, and the bad files found."""
    if subset.metadata_file:
        return discover_metadata_subset(subset)
    found, bad, uncaptioned = [], [], 0
    masks = _masks(subset) if subset.conditioning_data_dir else None
    names = set(os.listdir(subset.image_dir))
    cache = InfoCache(subset) if subset.cache_info else None
    images = list_images(Path(subset.image_dir))
    for path in images:
        try:
            caption, size = _scan(path, subset, names, cache)
            if caption is None:
                caption = subset.class_tokens or ""
                uncaptioned += caption == ""
            mask = _mask_for(path, size, masks, subset) if masks is not None else None
            found.append(FoundImage(path, caption, size, mask))
        except DiscoveryError as e:
            bad.append(BadFile(path, f"{subset.key_path}: {e}"))
    if cache is not None:
        cache.save([f.path for f in found])
    if masks is not None:
        extra = sorted(set(masks) - {p.stem for p in images})
        if extra:
            logger.warning("%s: %d masks in %s have no image and are not used: %s", subset.key_path, len(extra),
                           subset.conditioning_data_dir, ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    if uncaptioned:
        logger.warning("%s: %d of %d images in %s have no %s caption file and there are no class_tokens: "
                       "they train with an empty caption", subset.key_path, uncaptioned, len(found),
                       subset.image_dir, subset.caption_extension)
    return found, bad


def _mask_for(path: Path, size: tuple[int, int], masks: dict[str, Path], subset: SubsetConfig) -> Path:
    mask = masks.get(path.stem)
    if mask is None:
        raise DiscoveryError(f"image {path} has no mask named {path.stem}.* in {subset.conditioning_data_dir}")
    mask_size = image_size(mask)
    if mask_size != size:
        raise DiscoveryError(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {path} is "
                             f"{size[0]}x{size[1]}; a mask must have its image's size")
    return mask


def read_metadata(path: Path) -> dict[str, dict]:
    """Fine-tuning metadata (spec 2.7): a JSON object {image key: {"caption", "tags", ...}} or JSON lines
    {"image_path", "caption", "tags", ...}. Raises DiscoveryError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".jsonl":
            entries = {}
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    entry = json.loads(line)
                    if not isinstance(entry, dict) or not isinstance(entry.get("image_path"), str):
                        raise DiscoveryError(f"metadata file {path} line {number}: expected an object with "
                                             "image_path")
                    entries[entry["image_path"]] = entry
            return entries
        data = json.loads(text)
    except FileNotFoundError as e:
        raise DiscoveryError(f"metadata file {path} not found") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiscoveryError(f"metadata file {path} is not valid UTF-8 JSON: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DiscoveryError(f"metadata file {path}: expected an object mapping image keys to objects")
    return data


def metadata_image_path(key: str, image_dir: str | None) -> Path | None:
    """The file of a metadata key: the key itself when it exists, else `image_dir/key`, else
    `image_dir/key.<image extension>` (keys are often written without extension)."""
    own = Path(key)
    if own.is_absolute() or image_dir is None:
        return own if own.is_file() else None
    joined = Path(image_dir) / key
    if joined.is_file():
        return joined
    for extension in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidate = Path(image_dir) / f"{key}{extension}"
        if candidate.is_file():
            return candidate
    return None


def metadata_caption(entry: dict, subset: SubsetConfig) -> str:
    """Caption with tags appended by caption_separator (no space); with wildcards, to every caption line;
    tags alone when there is no caption (spec 2.7)."""
    caption, tags = entry.get("caption"), entry.get("tags")
    caption = caption.strip() if isinstance(caption, str) else ""
    tags = tags.strip() if isinstance(tags, str) else ""
    lines = [line.strip() for line in caption.split("\n") if line.strip()] or [""]
    if not subset.enable_wildcard:
        lines = lines[:1]
    if tags:
        lines = [f"{line}{subset.caption_separator}{tags}" if line else tags for line in lines]
    return "\n".join(lines)


def discover_metadata_subset(subset: SubsetConfig) -> tuple[list[FoundImage], list[BadFile]]:
    """The images of a fine-tuning subset, each with the caption of its own metadata entry. Images are
    kept per subset, so two subsets listing the same relative name never overwrite each other."""
    metadata_path = Path(subset.metadata_file or "")
    try:
        entries = read_metadata(metadata_path)
    except DiscoveryError as e:
        return [], [BadFile(metadata_path, f"{subset.where('metadata_file')}: {e}")]
    found, bad = [], []
    for key, entry in entries.items():
        path = metadata_image_path(key, subset.image_dir or None)
        if path is None:
            where = f" in {subset.image_dir}" if subset.image_dir else " (set image_dir for relative keys)"
            bad.append(BadFile(Path(key), f"{subset.key_path}: {metadata_path}: image {key!r} not found{where}"))
            continue
        try:
            found.append(FoundImage(path, metadata_caption(entry, subset), image_size(path)))
        except DiscoveryError as e:
            bad.append(BadFile(path, f"{subset.key_path}: {e}"))
    return found, bad
