"""Sample prompt files (spec 8.1) -> SamplePrompt objects, read before any model loads.

Three formats, as sd-scripts reads them:
- `.txt`: one prompt per line; blank lines and lines starting with `#` are skipped. A line is cut at each " --";
  the first piece is the prompt, each other piece an option: `--w`, `--h` (size), `--d` (seed), `--s` (steps),
  `--l` (CFG scale), `--n` (negative prompt), `--ss` (sampler). Option letters are case-insensitive.
- `.toml`: `[prompt]` holds defaults, each `[[prompt.subset]]` entry is one prompt (a key may be in only one of the
  two). Keys: prompt, negative_prompt, width, height, seed, sample_steps, scale, sample_sampler.
- `.json`: a list whose entries are such tables or `.txt`-style lines.

Differences from sd-scripts: the default size is SDXL's 1024x1024 (sd-scripts uses 512x512 even for SDXL) and the
default sampler is the run's --sample_sampler (euler_a by default); a value that does not parse is an error naming
the file and line or key (sd-scripts logs it and carries on); unknown options and keys, and the options that SDXL
LoRA sampling does not use (`--g --ctr --rcfg --fs --cn`, `controlnet_image`), are reported as warnings (sd-scripts
is silent). A seed of -1 means a random seed, as in the web UIs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import tomli

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.sample.samplers import DEFAULT_SAMPLER, MIN_STEPS, SCHEDULER_CLASSES, missing_package

DEFAULT_SIZE = 1024
"""SDXL's native size, used when a prompt gives no width or height (sd-scripts: 512)."""
DEFAULT_STEPS, DEFAULT_SCALE = 30, 7.5
MIN_SIZE, SIZE_MULTIPLE, MAX_STEPS = 64, 8, 1000
FLAG = "--sample_prompts"

LINE_OPTIONS = {"w": "width", "h": "height", "d": "seed", "s": "steps", "l": "scale", "n": "negative_prompt",
                "ss": "sampler"}
"""`.txt` per-line option -> SamplePrompt field."""
IGNORED_LINE_OPTIONS = {"g": "guidance scale", "ctr": "CFG truncation", "rcfg": "renormalised CFG",
                        "fs": "flow shift", "cn": "ControlNet image"}
"""Per-line options sd-scripts parses for other model families; SDXL LoRA sampling does not use them."""
FILE_KEYS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "width": "width", "height": "height",
             "seed": "seed", "sample_steps": "steps", "scale": "scale", "sample_sampler": "sampler"}
"""`.toml` / `.json` key -> SamplePrompt field."""
IGNORED_FILE_KEYS = {"controlnet_image": "ControlNet image"}
_INT_FIELDS = ("width", "height", "seed", "steps")
_EMPHASIS = re.compile(r"[()\[\]]")


@dataclass(frozen=True)
class SamplePrompt:
    """One image to sample, with every setting resolved."""

    prompt: str
    """Text for both encoders."""
    negative_prompt: str | None = None
    """Negative prompt; None: SDXL's zero negative conditioning."""
    width: int = DEFAULT_SIZE
    """Pixels; a multiple of 8, at least 64."""
    height: int = DEFAULT_SIZE
    """Pixels; a multiple of 8, at least 64."""
    seed: int | None = None
    """Noise seed; None draws a random one (and the file name carries no seed)."""
    steps: int = DEFAULT_STEPS
    """Denoising steps, 1 to 1000."""
    scale: float = DEFAULT_SCALE
    """Classifier-free guidance scale; 1 or less turns guidance off."""
    sampler: str = DEFAULT_SAMPLER
    """A name of samplers.SCHEDULER_CLASSES."""
    index: int = 0
    """Position in the file (0-based, counting prompts only): the `_NN_` of the file name."""


def load_prompts(path: str | Path, default_sampler: str = DEFAULT_SAMPLER) -> tuple[list[SamplePrompt], list[str]]:
    """The prompts of a .txt, .toml or .json file and one warning per thing ignored or changed; raises ConfigError
    (one line naming the file and line or key) on a file that cannot be read or a value that does not parse."""
    path = Path(path)
    readers = {".txt": _read_txt, ".toml": _read_toml, ".json": _read_json}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"{FLAG} {path}: expected a .txt, .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{FLAG} {path}: cannot be read ({error})") from None
    warnings: list[str] = []
    entries = reader(path, text, warnings)
    prompts = [_finish(fields, where, i, default_sampler.lower(), warnings) for i, (where, fields) in
               enumerate(entries)]
    return prompts, warnings


def _read_txt(path: Path, text: str, warnings: list[str]) -> list[tuple[str, dict]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            where = f"{path}:{number}"
            entries.append((where, parse_line(line, where, warnings)))
    return entries


def parse_line(line: str, where: str, warnings: list[str]) -> dict:
    """The fields a `.txt` line sets (prompt first, then its options; a later repeat wins)."""
    prompt, *options = line.split(" --")
    fields: dict = {"prompt": prompt.strip()}
    for option in options:
        name, _, value = option.strip().partition(" ")
        name, value = name.lower(), value.strip()
        if name in LINE_OPTIONS:
            field = LINE_OPTIONS[name]
            fields[field] = _parse_text(field, value, f"{where}: --{name}")
        elif name in IGNORED_LINE_OPTIONS:
            warnings.append(f"{where}: --{name} ({IGNORED_LINE_OPTIONS[name]}) is not used for SDXL; ignored")
        else:
            warnings.append(f"{where}: unknown option --{name}, ignored (known: "
                            f"{', '.join('--' + key for key in LINE_OPTIONS)})")
    return fields


def _parse_text(field: str, value: str, where: str):
    if field in ("negative_prompt", "sampler"):
        return value
    try:
        number = int(value) if field in _INT_FIELDS else float(value)
    except ValueError:
        kind = "an integer" if field in _INT_FIELDS else "a number"
        raise ConfigError(f"{FLAG} {where}: expected {kind}, got {value!r}") from None
    return _check_number(field, number, where)


def _check_number(field: str, number, where: str):
    if field == "scale" and not (math.isfinite(number) and number >= 0):
        raise ConfigError(f"{FLAG} {where}: the CFG scale must be a finite number, not negative; got {number}")
    if field == "seed" and number != -1 and not 0 <= number < 2**64:
        raise ConfigError(f"{FLAG} {where}: a seed must be in [0, 2^64), or -1 for a random one; got {number}")
    return number


def _read_toml(path: Path, text: str, warnings: list[str]) -> list[tuple[str, dict]]:
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as error:
        raise ConfigError(f"{FLAG} {path}: not valid TOML ({error})") from None
    table = data.get("prompt")
    subsets = table.get("subset") if isinstance(table, dict) else None
    if not isinstance(subsets, list) or not all(isinstance(entry, dict) for entry in subsets):
        raise ConfigError(f"{FLAG} {path}: expected a [prompt] table of defaults and [[prompt.subset]] entries, "
                          "one per prompt")
    warnings += [f"{path}: {key}: unknown table or key, ignored" for key in data if key != "prompt"]
    defaults = {key: value for key, value in table.items() if key != "subset"}
    base = _file_fields(defaults, f"{path}: prompt", warnings)
    entries = []
    for i, subset in enumerate(subsets):
        where = f"{path}: prompt.subset[{i}]"
        for key in subset:
            if key in defaults:
                raise ConfigError(f"{FLAG} {where}.{key}: also set in [prompt]; a key may be in only one of them")
        entries.append((where, base | _file_fields(subset, where, warnings)))
    return entries


def _read_json(path: Path, text: str, warnings: list[str]) -> list[tuple[str, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{FLAG} {path}: not valid JSON ({error})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{FLAG} {path}: expected a JSON list of prompts (objects or strings)")
    entries = []
    for i, entry in enumerate(data):
        where = f"{path}: [{i}]"
        if isinstance(entry, str):
            entries.append((where, parse_line(entry.strip(), where, warnings)))
        elif isinstance(entry, dict):
            entries.append((where, _file_fields(entry, where, warnings)))
        else:
            raise ConfigError(f"{FLAG} {where}: expected an object or a string, got {type(entry).__name__}")
    return entries


def _file_fields(table: dict, where: str, warnings: list[str]) -> dict:
    """The fields a .toml / .json table sets, each value type-checked."""
    fields = {}
    for key, value in table.items():
        if key in IGNORED_FILE_KEYS:
            warnings.append(f"{where}.{key} ({IGNORED_FILE_KEYS[key]}) is not used for SDXL; ignored")
        elif key not in FILE_KEYS:
            warnings.append(f"{where}.{key}: unknown key, ignored (known: {', '.join(FILE_KEYS)})")
        else:
            fields[FILE_KEYS[key]] = _file_value(FILE_KEYS[key], value, f"{where}.{key}")
    return fields


def _file_value(field: str, value, where: str):
    if field in ("prompt", "negative_prompt", "sampler"):
        if not isinstance(value, str):
            raise ConfigError(f"{FLAG} {where}: expected a string, got {value!r}")
        return value
    if isinstance(value, float) and field in _INT_FIELDS and value.is_integer():
        value = int(value)
    wanted = int if field in _INT_FIELDS else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted):
        kind = "an integer" if field in _INT_FIELDS else "a number"
        raise ConfigError(f"{FLAG} {where}: expected {kind}, got {value!r}")
    return _check_number(field, value, where)


def _finish(fields: dict, where: str, index: int, default_sampler: str, warnings: list[str]) -> SamplePrompt:
    """Defaults filled in and values brought into range (each change reported)."""
    width, height = (_size(fields.get(name, DEFAULT_SIZE), f"{where}: {name}", warnings)
                     for name in ("width", "height"))
    steps = fields.get("steps", DEFAULT_STEPS)
    if not 1 <= steps <= MAX_STEPS:
        warnings.append(f"{where}: {steps} steps brought into 1..{MAX_STEPS}")
        steps = min(max(steps, 1), MAX_STEPS)
    sampler = fields.get("sampler", default_sampler).lower()
    if sampler not in SCHEDULER_CLASSES:
        warnings.append(f"{where}: unknown sampler {sampler!r}, using {default_sampler} "
                        f"(known: {', '.join(SCHEDULER_CLASSES)})")
        sampler = default_sampler
    from_file = str(fields.get("sampler", "")).lower() == sampler
    given = f"{FLAG} {where}: sampler {sampler}" if from_file else f"--sample_sampler {sampler}"
    package = missing_package(sampler)
    if package:
        raise ConfigError(f"{given} needs {package}: pip install {package}")
    if steps < MIN_STEPS.get(sampler, 1):
        raise ConfigError(f"{given} needs at least {MIN_STEPS[sampler]} steps; {where} asks for {steps}")
    prompt = fields.get("prompt", "")
    negative = (fields.get("negative_prompt") or "").strip() or None
    for text in (prompt, negative or ""):
        if _EMPHASIS.search(text):
            warnings.append(f"{where}: brackets are passed to the text encoders as written; prompt weighting "
                            "such as (word:1.2) is not interpreted here (sd-scripts interprets it)")
            break
    if "prompt" not in fields:
        warnings.append(f"{where}: no prompt; sampling an empty prompt")
    seed = fields.get("seed")
    return SamplePrompt(prompt=prompt, negative_prompt=negative, width=width, height=height,
                        seed=None if seed == -1 else seed, steps=steps, scale=float(fields.get("scale", DEFAULT_SCALE)),
                        sampler=sampler, index=index)


def _size(value: int, where: str, warnings: list[str]) -> int:
    """Floored to a multiple of 8, at least 64 (spec 8.1)."""
    size = max(MIN_SIZE, value - value % SIZE_MULTIPLE)
    if size != value:
        warnings.append(f"{where} {value} -> {size} (a multiple of {SIZE_MULTIPLE}, at least {MIN_SIZE})")
    return size
