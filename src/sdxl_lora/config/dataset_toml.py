"""Dataset TOML (spec 2): typed dataclasses and the subset -> dataset -> [general] -> command-line fallback.

`load_datasets` reads `--dataset_config` (TOML, or JSON by extension) or DreamBooth folders and resolves every
setting; `validate_datasets` checks the resolved values. Both report every problem at once, each naming where
the value was set (file and key path, folder, or flag).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import tomli

from sdxl_lora.config.errors import ConfigError, Problems, did_you_mean

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Image file extensions found in an image folder (also in upper case); spec 2.4. No .avif / .jxl."""

INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")
"""Names accepted by `resize_interpolation`."""


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
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Setting name -> where its value was set ('dataset.toml: general.flip_aug', '--flip_aug', ...)."""

    def where(self, key: str) -> str:
        """Where the value of `key` was set, for messages."""
        return self.origins.get(key, f"{self.key_path}.{key}")


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
    skipped: tuple[str, ...] = ()
    """What was left out of this dataset and why, one line each (shown by `sdxl-lora check`)."""
    key_path: str = ""
    """Where this dataset came from, e.g. 'datasets[0]'."""
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Setting name -> where its value was set."""

    def where(self, key: str) -> str:
        """Where the value of `key` was set, for messages."""
        return self.origins.get(key, f"{self.key_path}.{key}")

    def bucket_limits(self) -> tuple[int, int]:
        """min/max bucket side rounded to bucket_reso_steps, min down and max up (spec 2.6)."""
        step = max(1, self.bucket_reso_steps)
        low = self.min_bucket_reso - self.min_bucket_reso % step
        high = self.max_bucket_reso + (-self.max_bucket_reso) % step
        return low, high


class _Wrong(Exception):
    """A value of the wrong type; carries what was expected."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


def _typed(kinds: tuple[type, ...], expected: str, convert: Callable = lambda v: v) -> Callable:
    """A checker accepting instances of `kinds` (a bool never counts as a number)."""

    def check(v: object) -> object:
        if isinstance(v, kinds) and (bool in kinds or not isinstance(v, bool)):
            return convert(v)
        raise _Wrong(expected)

    return check


_int = _typed((int,), "an integer")
# Integer literals are accepted wherever a float is expected. sd-scripts rejects `validation_split = 0` or
# `= 1` (int literals); accepting them is harmless and spares users a baffling schema error.
_float = _typed((int, float), "a number", float)
_bool = _typed((bool,), "true or false")
_str = _typed((str,), "a string")
_table = _typed((dict,), "a table", dict)


def _interpolation(v: object) -> str:
    if isinstance(v, str) and v in INTERPOLATIONS:
        return v
    raise _Wrong("one of " + ", ".join(INTERPOLATIONS))


def _pair(item: Callable[[object], object], v: object, expected: str) -> tuple:
    if isinstance(v, str):  # command line: "a,b"
        v = v.split(",")
    if isinstance(v, list | tuple) and len(v) == 2:
        try:
            return tuple(item(x) for x in v)
        except (_Wrong, ValueError):
            pass
    raise _Wrong(expected)


def _resolution(v: object) -> tuple[int, int]:
    expected = 'an integer or [width, height] ("S" or "W,H" on the command line)'
    if isinstance(v, str) and "," not in v:
        v = v.strip()
        v = int(v) if v.isdigit() else v
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    return _pair(lambda x: int(x.strip()) if isinstance(x, str) else _int(x), v, expected)


def _face_crop(v: object) -> tuple[float, float]:
    return _pair(lambda x: float(x) if isinstance(x, str) else _float(x), v, "[low, high] (two numbers)")


DATASET_KEYS: dict[str, Callable] = {
    "resolution": _resolution, "batch_size": _int, "enable_bucket": _bool, "min_bucket_reso": _int,
    "max_bucket_reso": _int, "bucket_reso_steps": _int, "bucket_no_upscale": _bool,
    "validation_split": _float, "validation_seed": _int, "network_multiplier": _float,
    "resize_interpolation": _interpolation,
}
"""Dataset-level keys: allowed in [general] and [[datasets]] (spec 2.3)."""

ASCENDABLE_KEYS: dict[str, Callable] = {
    "num_repeats": _int, "shuffle_caption": _bool, "caption_separator": _str, "keep_tokens": _int,
    "keep_tokens_separator": _str, "secondary_separator": _str, "enable_wildcard": _bool,
    "caption_prefix": _str, "caption_suffix": _str, "color_aug": _bool, "flip_aug": _bool,
    "random_crop": _bool, "face_crop_aug_range": _face_crop, "token_warmup_min": _int,
    "token_warmup_step": _float, "custom_attributes": _table, "resize_interpolation": _interpolation,
    "caption_dropout_rate": _float, "caption_dropout_every_n_epochs": _int,
    "caption_tag_dropout_rate": _float, "caption_extension": _str, "class_tokens": _str, "cache_info": _bool,
}
"""Subset-level keys allowed at all three levels."""

SUBSET_ONLY_KEYS: dict[str, Callable] = {
    "image_dir": _str, "is_reg": _bool, "alpha_mask": _bool, "metadata_file": _str,
    "conditioning_data_dir": _str,
}
"""Keys allowed only in [[datasets.subsets]]."""

CLI_NAMES = {"batch_size": "train_batch_size", "num_repeats": "dataset_repeats"}
"""Setting -> command-line option, where the names differ."""

NO_CLI = {"image_dir", "is_reg", "class_tokens", "custom_attributes", "network_multiplier", "metadata_file",
          "conditioning_data_dir"}
"""Settings without a command-line fallback (`--conditioning_data_dir` exists but is not a fallback)."""

_ALL_KEYS = {**DATASET_KEYS, **ASCENDABLE_KEYS, **SUBSET_ONLY_KEYS}
_LEVEL_KEYS = {**DATASET_KEYS, **ASCENDABLE_KEYS}
_SUBSET_KEYS = {**ASCENDABLE_KEYS, **SUBSET_ONLY_KEYS}
_NOT_IN_SUBSET_KEYS = {k: v for k, v in DATASET_KEYS.items() if k not in ASCENDABLE_KEYS}
_IN_SUBSET_ONLY = "belongs in [[datasets.subsets]]"
_NOT_IN_SUBSET = "is a dataset-level key: set it in [[datasets]] or [general], not in a subset"

Layer = tuple[str, dict]
"""(origin template containing '{key}', checked table)."""


def load_datasets(dataset_config: Path | None, cli: dict[str, object]) -> tuple[DatasetConfig, ...]:
    """Resolve the training datasets from `--dataset_config` or from DreamBooth folders (spec 2.1).

    `cli` maps sd-scripts option names to command-line values (None = not given); they are the fallback below
    [general]. Raises ConfigError listing every problem found.
    """
    datasets, problems = read_datasets(dataset_config, cli)
    if problems:
        raise ConfigError(problems)
    return datasets


def read_datasets(dataset_config: Path | None,
                  cli: dict[str, object]) -> tuple[tuple[DatasetConfig, ...], list[str]]:
    """Like load_datasets, but returns the datasets that could be built together with every problem, so that
    validation can go on checking those datasets (bucket settings, folders) and report everything at once."""
    problems = Problems()
    cli_layer = _cli_layer(cli, problems)
    datasets: tuple[DatasetConfig, ...] = ()
    if cli.get("conditioning_data_dir"):
        logger.warning("--conditioning_data_dir is ignored, as by sd-scripts' LoRA trainer: set "
                       "conditioning_data_dir in a [[datasets.subsets]] table of --dataset_config (with --masked_loss)")
    try:
        if dataset_config is not None:
            for flag in ("train_data_dir", "reg_data_dir", "in_json"):
                if cli.get(flag):
                    logger.warning("--%s is ignored because --dataset_config is given", flag)
            raw = _read_file(Path(dataset_config))
            datasets = _datasets_from_file(raw, str(dataset_config), cli_layer, problems)
        elif cli.get("in_json"):
            datasets = _dataset_from_metadata(cli, cli_layer, problems)
        elif cli.get("train_data_dir"):
            datasets = _datasets_from_folders(cli, cli_layer, problems)
        else:
            problems.add("no training data: pass --dataset_config or --train_data_dir")
    except ConfigError as err:
        problems.extend(err.problems)
    return tuple(d for d in datasets if d is not None), problems.items


def parse_dreambooth_folder(name: str) -> tuple[int, str] | None:
    """'10_sks dog' -> (10, 'sks dog'); '5_a_b' -> (5, 'a_b'); None without an integer prefix (spec 2.4)."""
    head, sep, rest = name.partition("_")
    try:
        return (int(head), rest) if sep else None
    except ValueError:
        return None


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"--dataset_config: file not found: {path}")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
        else:
            raw = tomli.loads(path.read_text(encoding="utf-8"))
    except (tomli.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table at the top level")
    return raw


def show_value(v: object) -> str:
    return json.dumps(v, default=str, ensure_ascii=False)


def _did_you_mean(key: str) -> str:
    return did_you_mean(key, _ALL_KEYS, repr)


def _check_table(table: dict, allowed: dict, path: str, file: str, problems: Problems,
                 misplaced: tuple[dict, str]) -> dict:
    """Type-check `table` against `allowed`; report wrong types, misplaced and unknown keys."""
    checked = {}
    for key, value in table.items():
        where = f"{file}: {path}.{key}"
        if key in allowed:
            if value is None:  # JSON null: not set
                continue
            try:
                checked[key] = allowed[key](value)
            except _Wrong as e:
                problems.add(f"{where}: expected {e.expected}, got {show_value(value)}")
        elif key in misplaced[0]:
            problems.add(f"{where}: {key} {misplaced[1]}")
        else:
            problems.add(f"{where}: unknown key{_did_you_mean(key)}")
    return checked


def _cli_layer(cli: dict[str, object], problems: Problems) -> dict[str, tuple[object, str]]:
    """Setting -> (command-line value, '--flag') for every setting given on the command line."""
    values = dict(cli)
    if values.get("caption_extention"):  # sd-scripts copies the legacy misspelling over
        values["caption_extension"] = values["caption_extention"]
    layer = {}
    for key, check in _ALL_KEYS.items():
        name = CLI_NAMES.get(key, key)
        if key in NO_CLI or values.get(name) is None:
            continue
        try:
            layer[key] = (check(values[name]), f"--{name}")
        except _Wrong as e:
            problems.add(f"--{name}: expected {e.expected}, got {show_value(values[name])}")
    if "validation_seed" not in layer and isinstance(values.get("seed"), int):
        layer["validation_seed"] = (values["seed"], "--seed")  # spec 2.10: the split falls back to --seed
    return layer


def _default(f) -> object:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _resolved(cls, layers: list[Layer], cli_layer: dict, default_origin: Callable[[str], str]):
    """Values and origins of every setting of `cls` (SubsetConfig or DatasetConfig)."""
    values, origins = {}, {}
    for f in fields(cls):
        if f.name in ("subsets", "key_path", "origins", "skipped"):
            continue
        key = f.name
        found = [(table[key], template.replace("{key}", key)) for template, table in layers if key in table]
        found.append(cli_layer.get(key, (_default(f), default_origin(key))))
        values[key], origins[key] = found[0]
    return values, origins


def _build_subset(layers: list[Layer], cli_layer: dict, key_path: str, default_origin) -> SubsetConfig:
    values, origins = _resolved(SubsetConfig, layers, cli_layer, default_origin)
    ext = values["caption_extension"]
    if ext and not ext.startswith("."):
        values["caption_extension"] = "." + ext
    values["image_dir"] = values["image_dir"] or ""
    return SubsetConfig(**values, key_path=key_path, origins=origins)


def _build_dataset(subsets: list[SubsetConfig], layers: list[Layer], cli_layer: dict, key_path: str,
                   default_origin, problems: Problems, skipped: tuple[str, ...] = ()) -> DatasetConfig | None:
    values, origins = _resolved(DatasetConfig, layers, cli_layer, default_origin)
    if values["resolution"] is None:
        if any("resolution: expected" in p for p in problems.items):
            return None  # present but of the wrong type: already reported
        problems.add(f"{origins['resolution']}: missing; set resolution in [[datasets]] or [general], or "
                     "pass --resolution" if key_path else "--resolution: missing; pass --resolution W,H or S")
        return None
    return DatasetConfig(subsets=tuple(subsets), **values, skipped=skipped, key_path=key_path, origins=origins)


def _datasets_from_file(raw: dict, file: str, cli_layer: dict, problems: Problems) -> tuple:
    for key in raw:
        if key not in ("general", "datasets"):
            problems.add(f"{file}: {key}: unknown top-level key; expected [general] and [[datasets]]"
                         f"{_did_you_mean(key)}")
    general = raw.get("general", {})
    if not isinstance(general, dict):
        problems.add(f"{file}: general: expected a table, got {show_value(general)}")
        general = {}
    misplaced = (SUBSET_ONLY_KEYS, _IN_SUBSET_ONLY)
    general = _check_table(general, _LEVEL_KEYS, "general", file, problems, misplaced)
    tables = raw.get("datasets")
    if not isinstance(tables, list) or not tables:
        problems.add(f"{file}: datasets: expected one or more [[datasets]] tables")
        return ()
    datasets = []
    for i, table in enumerate(tables):
        dataset = _dataset_from_table(table, f"datasets[{i}]", general, file, cli_layer, problems)
        if dataset is not None:
            datasets.append(dataset)
    return tuple(datasets)


def _dataset_from_table(table: object, path: str, general: dict, file: str, cli_layer: dict,
                        problems: Problems) -> DatasetConfig | None:
    if not isinstance(table, dict):
        problems.add(f"{file}: {path}: expected a table, got {show_value(table)}")
        return None
    own = {k: v for k, v in table.items() if k != "subsets"}
    checked = _check_table(own, _LEVEL_KEYS, path, file, problems, (SUBSET_ONLY_KEYS, _IN_SUBSET_ONLY))
    layers = [(f"{file}: {path}.{{key}}", checked), (f"{file}: general.{{key}}", general)]
    raw_subsets = table.get("subsets")
    if not isinstance(raw_subsets, list) or not raw_subsets:
        problems.add(f"{file}: {path}.subsets: expected one or more [[datasets.subsets]] tables")
        raw_subsets = []
    subsets, seen, skipped = [], set(), []
    for j, raw in enumerate(raw_subsets):
        spath = f"{path}.subsets[{j}]"
        if not isinstance(raw, dict):
            problems.add(f"{file}: {spath}: expected a table, got {show_value(raw)}")
            continue
        sub = _check_table(raw, _SUBSET_KEYS, spath, file, problems, (_NOT_IN_SUBSET_KEYS, _NOT_IN_SUBSET))
        if "image_dir" not in raw and "metadata_file" not in raw:
            problems.add(f"{file}: {spath}.image_dir: missing; every subset needs the folder of its images")
        source = sub.get("metadata_file") or sub.get("image_dir")
        if source is not None and source in seen:
            skipped.append(f"{file}: {spath}: {source} is already used by another subset of {path}; subset ignored")
            logger.warning("%s", skipped[-1])
            continue
        seen.add(source)
        subset_layers = [(f"{file}: {spath}.{{key}}", sub), *layers]
        subsets.append(_build_subset(subset_layers, cli_layer, spath, lambda k, p=spath: f"{file}: {p}.{k}"))
    if len({s.metadata_file is None for s in subsets}) > 1:
        problems.add(f"{file}: {path}: mixes fine-tuning subsets (metadata_file) with DreamBooth subsets")
    return _build_dataset(subsets, layers, cli_layer, path, lambda k: f"{file}: {path}.{k}", problems,
                          tuple(skipped))


def _flag_origin(where: str) -> Callable[[str], str]:
    """Default origins in a folder-made dataset: the flag that would set the value, else '<where>: <key>'."""

    def origin(key: str) -> str:
        if key not in NO_CLI:
            return f"--{CLI_NAMES.get(key, key)}"
        return f"{where}: {key}" if where else key

    return origin


def count_images(folder: Path) -> int:
    """Image files directly in `folder` (spec 2.4: not recursive; extensions in either case)."""
    extensions = set(IMAGE_EXTENSIONS) | {e.upper() for e in IMAGE_EXTENSIONS}
    return sum(1 for p in folder.iterdir() if p.suffix in extensions and p.is_file())


def _datasets_from_folders(cli: dict, cli_layer: dict, problems: Problems) -> tuple[DatasetConfig, ...]:
    """One DreamBooth dataset from `<N>_<class tokens>` folders (spec 2.4).

    As in sd-scripts, a folder without a repeat count of 1 or more, or without images, is skipped with a warning
    naming it and its image count; hidden folders ('.ipynb_checkpoints') are skipped silently. It is an error
    only when no training image is left.
    """
    subsets, skipped = [], []
    for flag, is_reg in (("train_data_dir", False), ("reg_data_dir", True)):
        root = cli.get(flag)
        if not root:
            continue
        root = Path(str(root))
        if not root.is_dir():
            problems.add(f"--{flag}: folder not found: {root}")
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            parsed = parse_dreambooth_folder(folder.name)
            reason = _skip_reason(folder, parsed)
            if reason:
                skipped.append(f"--{flag}: folder '{folder.name}' skipped: {reason}")
                continue
            key_path = f"--{flag} folder '{folder.name}'"
            table = {"image_dir": str(folder), "num_repeats": parsed[0], "class_tokens": parsed[1],
                     "is_reg": is_reg}
            layers = [(f"{key_path}: {{key}}", table)]
            subsets.append(_build_subset(layers, cli_layer, key_path, _flag_origin(key_path)))
    if problems.items:
        return ()
    if not any(not s.is_reg for s in subsets):
        left_out = f"; skipped: {'; '.join(skipped)}" if skipped else ""
        problems.add(f"--train_data_dir: no training images left in {cli.get('train_data_dir')} (image folders "
                     f"are named '<repeats>_<tokens>', e.g. '10_sks dog'){left_out}")
        return ()
    for line in skipped:  # when no image is left, the error above says it instead
        logger.warning("%s", line)
    dataset = _build_dataset(subsets, [], cli_layer, "", _flag_origin(""), problems, tuple(skipped))
    return (dataset,) if dataset is not None else ()


def _dataset_from_metadata(cli: dict, cli_layer: dict, problems: Problems) -> tuple[DatasetConfig, ...]:
    """One fine-tuning dataset from --in_json, relative image names under --train_data_dir (spec 2.7)."""
    if cli.get("reg_data_dir"):
        logger.warning("--reg_data_dir is ignored with --in_json (as sd-scripts: fine-tuning has no "
                       "regularisation images)")
    layers = [("--in_json", {"metadata_file": str(cli["in_json"])})]
    if cli.get("train_data_dir"):
        layers.append(("--train_data_dir", {"image_dir": str(cli["train_data_dir"])}))
    subset = _build_subset(layers, cli_layer, "--in_json", _flag_origin("--in_json"))
    dataset = _build_dataset([subset], [], cli_layer, "", _flag_origin(""), problems)
    return (dataset,) if dataset is not None else ()


def _skip_reason(folder: Path, parsed: tuple[int, str] | None) -> str:
    """Why sd-scripts leaves this DreamBooth folder out, with its image count; '' when it is used."""
    images = count_images(folder)
    count = f"{images} image{'' if images == 1 else 's'}"
    if parsed is None:
        return f"no '<repeats>_' prefix (e.g. '10_sks dog'); {count} not used"
    if parsed[0] < 1:
        return f"repeat count {parsed[0]} is below 1; {count} not used"
    if images == 0:
        return f"no images ({' '.join(IMAGE_EXTENSIONS)}) directly in it"
    return ""
