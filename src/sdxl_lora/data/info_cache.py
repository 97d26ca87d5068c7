"""cache_info (spec 2.4): a `metadata_cache.json` in a DreamBooth image folder holding each image's caption and
size, so that a later scan reads one file instead of every caption file and image header.

Same file and entry shape as sd-scripts ({image path: {"caption", "resolution": [w, h]}}), plus a "stamp" per
entry: the image's byte size and modification time, its caption file's name and modification time, and the
settings that shape the caption. sd-scripts trusts the file forever (new images are not found, edited captions
not read); here an entry is used only while its stamp matches, new images are scanned, and the file is
rewritten (atomically) when anything changed. Entries written by sd-scripts have no stamp and are rescanned.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sdxl_lora.common.files import atomic_path
from sdxl_lora.config.dataset_toml import SubsetConfig

logger = logging.getLogger(__name__)

INFO_CACHE = "metadata_cache.json"


class InfoCache:
    """The cache_info file of one subset's folder, read once, saved when an entry changed."""

    def __init__(self, subset: SubsetConfig):
        self.path = Path(subset.image_dir) / INFO_CACHE
        self.settings = [subset.caption_extension, subset.enable_wildcard, subset.class_tokens]
        self.entries: dict[str, dict] = {}
        self.changed = False
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                logger.warning("%s: unreadable (%s); the folder is scanned and the file written again", self.path, e)
                self.changed = True

    def stamp(self, image: Path, caption_file: Path | None) -> list:
        stat = image.stat()
        caption = [caption_file.name, caption_file.stat().st_mtime_ns] if caption_file else [None, None]
        return [stat.st_size, stat.st_mtime_ns, *caption, *self.settings]

    def get(self, image: Path, stamp: list) -> tuple[str, tuple[int, int]] | None:
        """(caption, (width, height)) when the entry of `image` is current, else None."""
        entry = self.entries.get(str(image))
        if not isinstance(entry, dict) or entry.get("stamp") != stamp:
            return None
        return entry["caption"], tuple(entry["resolution"])

    def put(self, image: Path, stamp: list, caption: str, size: tuple[int, int]) -> None:
        self.entries[str(image)] = {"caption": caption, "resolution": list(size), "stamp": stamp}
        self.changed = True

    def save(self, images: list[Path]) -> None:
        """Write the entries of `images` (entries of deleted images dropped) if anything changed."""
        kept = {str(p) for p in images}
        if not self.changed and kept == set(self.entries):
            return
        entries = {key: value for key, value in self.entries.items() if key in kept}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")
