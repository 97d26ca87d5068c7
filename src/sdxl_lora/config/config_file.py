"""--config_file and --output_config (spec 1.14): a flat TOML of option values, read and written.

Reading keeps sd-scripts' semantics (".toml" appended when missing, every table flattened into one key space,
later duplicates win, unknown keys ignored, but here with one warning each) and reads every value as sd-scripts
can use it: a number written as a string is read like the same text on the command line, an empty value
("", [], or false for an option that is unset by default) means unset, `dynamo_backend = "no"` means no
compile backend. What sd-scripts would fail on is an error naming the file and key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import tomli

from sdxl_lora.common.files import atomic_path
from sdxl_lora.config.errors import ConfigError, Problems, did_you_mean
from sdxl_lora.config.options import OPTIONS, OPTIONS_BY_NAME, Option

logger = logging.getLogger(__name__)

NOT_IN_FILE = ("config_file", "output_config")
"""Options that only make sense on the command line."""

_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def config_path(config_file: str | Path) -> Path:
    """The file sd-scripts reads for --config_file: '.toml' is appended unless the name ends with it."""
    text = str(config_file)
    return Path(text if text.endswith(".toml") else text + ".toml")


def load_config_file(config_file: str | Path) -> dict[str, object]:
    """Option values of a --config_file (see read_config_file); its warnings are logged here."""
    values, warnings = read_config_file(config_file)
    for warning in warnings:
        logger.warning("%s", warning)
    return values


def read_config_file(config_file: str | Path) -> tuple[dict[str, object], list[str]]:
    """Option values of a --config_file, converted to their option's type, and one warning per unknown key
    (ignored, as sd-scripts does). Keys whose value means unset are left out. All bad keys are reported at once.
    """
    path = config_path(config_file)
    problems = Problems()
    values: dict[str, object] = {}
    warnings: list[str] = []
    for key_path, key, value in _flatten(_read_toml(path)):
        option = OPTIONS_BY_NAME.get(key)
        if option is None:
            warnings.append(f"{path}: {key_path}: unknown option, ignored (as sd-scripts does)"
                            f"{did_you_mean(key, OPTIONS_BY_NAME)}")
            continue
        if key in NOT_IN_FILE and value in ("", False):
            continue  # written out empty by some tools: nothing asked for
        if key in NOT_IN_FILE:
            problems.add(f"{path}: {key_path}: --{key} is only allowed on the command line")
            continue
        values.pop(key, None)  # a later duplicate wins, also when it unsets the option
        if means_unset(option, value):
            continue
        try:
            values[key] = convert_toml_value(option, value)
        except ValueError as error:
            problems.add(f"{path}: {key_path}: {error}")
    problems.raise_if_any()
    return values, warnings


def means_unset(option: Option, value: object) -> bool:
    """A value that leaves the option unset, as in sd-scripts, which tests these values for truth: "" and [] for
    any option taking a value, false for a string option unset by default (`resume = false`), and
    dynamo_backend "no" (accelerate's name for no compile backend; kohya_ss GUI configs carry it). A number
    option given false stays an error: sd-scripts would read it as 0 in some places and as set in others."""
    if option.kind == "flag":
        return False
    if value == "" or value == []:
        return True
    if value is False and option.default is None and option.kind == "str":
        return True
    return option.name == "dynamo_backend" and isinstance(value, str) and value.lower() == "no"


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as file:
            return tomli.load(file)
    except FileNotFoundError:
        raise ConfigError(f"--config_file: {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"--config_file: {path} is a folder, not a TOML file") from None
    except (tomli.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None


def _flatten(document: dict) -> list[tuple[str, str, object]]:
    """(key path, key, value) of top-level values and of each top-level table's keys, in file order."""
    entries = []
    for name, value in document.items():
        if isinstance(value, dict):
            entries += [(f"{name}.{key}", key, inner) for key, inner in value.items()]
        else:
            entries.append((name, name, value))
    return entries


def convert_toml_value(option: Option, value: object) -> object:
    """A TOML value as the option's type. An option taking several values also accepts one bare value."""
    if option.nargs == "*":
        items = value if isinstance(value, list) else [value]
        return [_convert_one(option, item) for item in items]
    return _convert_one(option, value)


def _convert_one(option: Option, value: object) -> object:
    kind = option.kind
    if isinstance(value, str) and kind in ("int", "float", "int_or_float"):
        return _convert_number_text(option, value)
    if kind == "flag" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return check_choice(option, value)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return check_choice(option, value)
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "int_or_float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _int_or_fraction(value)
    expected = {"flag": "true or false", "str": "a string", "int": "an integer", "float": "a number",
                "int_or_float": "an integer, a fraction below 1 or 'N%'"}[kind]
    raise ValueError(f"expected {expected}, got {_describe(value)}")


def _convert_number_text(option: Option, text: str) -> object:
    """A number written as a string (`max_grad_norm = "1.0"`), read as the same text on the command line."""
    if option.kind == "int_or_float":
        return parse_int_or_float(text.strip())
    try:
        number = int(text) if option.kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"expected {'an integer' if option.kind == 'int' else 'a number'}, "
                         f"got {_describe(text)}") from None
    return check_choice(option, number)


def _describe(value: object) -> str:
    try:
        literal = toml_value(value)
    except TypeError:
        literal = repr(value)
    return f"{_TOML_TYPES.get(type(value), type(value).__name__)} {literal}"


def check_choice(option: Option, value: object) -> object:
    """The value itself, or ValueError when the option restricts its values and this is not one of them."""
    if option.choices is not None and value not in option.choices:
        choices = ", ".join(str(choice) for choice in option.choices)
        raise ValueError(f"invalid choice {value!r} (choose from {choices})")
    return value


def parse_int_or_float(text: str) -> int | float:
    """sd-scripts' warmup-style number (spec 1.7): an int is a step count, a float a fraction of the total.

    '10' -> 10 steps; '0.1' -> 0.1; 'N%' -> N/100 whatever N is ('100%' -> 1.0, all steps; '150%' -> 1.5).
    A float is always a fraction, so '100%' can never be mistaken for 1 step (see train.steps.warmup_steps).
    """
    if text.endswith("%"):
        try:
            return float(text[:-1]) / 100
        except ValueError:
            raise ValueError(f"invalid percentage {text!r}") from None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"invalid value {text!r}: expected an integer, a fraction below 1 or 'N%'") from None
    return _int_or_fraction(number)


def _int_or_fraction(number: int | float) -> int | float:
    # sd-scripts rejects a non-integer value >= 1 (e.g. 1.5): it is neither a step count nor a fraction.
    if isinstance(number, int) or number < 1:
        return number
    raise ValueError(f"invalid value {number!r}: a step count must be an integer; a fraction must be below 1"
                     " (write 'N%' for N/100 of all steps)")


def int_or_float_text(value: int | float) -> int | float | str:
    """How a warmup-style value is written back: a fraction of 1 or more as 'N%', so that it reads back."""
    if isinstance(value, float) and value >= 1:
        return f"{round(value * 100, 10)!r}%"
    return value


def write_config_file(values: Mapping[str, object], path: str | Path) -> Path:
    """Write the non-default values as a flat TOML file at path (which must not exist); returns the path.

    Secrets, config_file and output_config are never written. The file appears at once (temp name + rename).
    """
    path = Path(path)
    if path.exists():
        raise ConfigError(f"--output_config: {path} already exists; remove it or name another --config_file")
    if not path.parent.is_dir():
        raise ConfigError(f"--output_config: folder {path.parent} does not exist")
    text = render_output_config(values)
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def render_output_config(values: Mapping[str, object]) -> str:
    """Flat TOML, one 'name = value' line per non-default option, in OPTIONS order."""
    lines = []
    for option in OPTIONS:
        value = values.get(option.name, option.default)
        if option.kind == "int_or_float" and value is not None:
            value = int_or_float_text(value)
        if option.secret or option.name in NOT_IN_FILE or value == option.default:
            continue
        try:
            lines.append(f"{option.name} = {toml_value(value)}")
        except UnicodeEncodeError:
            raise ConfigError(f"--{option.name}: the value is not valid UTF-8, cannot write it") from None
    return "".join(line + "\n" for line in lines)


def toml_value(value: object) -> str:
    """A TOML literal for a bool, int, float, string or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; 'inf', 'nan', '1e-05' and '2.0' are valid TOML floats
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def _toml_string(value: str) -> str:
    value.encode("utf-8")  # lone surrogates (undecodable argv bytes) cannot be written
    escaped = "".join(_escape_char(char) for char in value)
    return f'"{escaped}"'


def _escape_char(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char
