"""sd-scripts' command line (spec 1), built from config.options.OPTIONS, plus --config_file precedence.

Effective value of each option: explicit command line > --config_file > sd-scripts' default. Every argparse
error becomes a one-line ConfigError naming the flag; only --help exits.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from sdxl_lora.config.config_file import (
    check_choice,
    config_path,
    means_unset,
    parse_int_or_float,
    read_config_file,
    write_config_file,
)
from sdxl_lora.config.errors import ConfigError, did_you_mean
from sdxl_lora.config.options import GROUPS, OPTIONS, OPTIONS_BY_NAME, WORKS, Option

PROG = "sdxl_train_network.py"
DESCRIPTION = ("Train an SDXL LoRA with kohya-ss sd-scripts' command line. Options marked [not yet ...] are "
               "accepted but refused when set; docs/options.md lists every option and its status.")
_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(\.\d*)?[eE][-+]?\d+$")


@dataclass(frozen=True)
class ParsedArgs:
    """The command line after --config_file is applied."""

    values: dict[str, object]
    """Every option name -> effective value (command line > config file > default)."""
    given: frozenset[str]
    """Names set explicitly on the command line or in the config file."""
    output_config_path: Path | None = None
    """Where --output_config must write the values (the caller writes it and exits); None without the flag."""
    warnings: tuple[str, ...] = ()
    """One line per --config_file key that was ignored (unknown option), for the caller to log."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting."""

    def error(self, message: str):
        raise ConfigError(_one_line(message))

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            raise ConfigError(_unrecognized(extras))
        return namespace


def build_parser(*, defaults: bool = True) -> argparse.ArgumentParser:
    """The sdxl_train_network.py parser; with defaults=False, options not given are absent from the result."""
    parser = _Parser(prog=PROG, usage="%(prog)s [options]", description=DESCRIPTION, allow_abbrev=True)
    for group_name in GROUPS:
        group = parser.add_argument_group(group_name)
        for option in OPTIONS:
            if option.group == group_name:
                _add_option(group, option, defaults)
    return parser


def _add_option(group, option: Option, defaults: bool) -> None:
    kwargs: dict = {"help": help_text(option), "default": option.default if defaults else argparse.SUPPRESS}
    if option.kind == "flag":
        kwargs["action"] = "store_true"
    else:
        kwargs["type"] = _value_parser(option)
        kwargs["nargs"] = option.nargs
        if option.choices is not None:
            kwargs["metavar"] = "{" + ",".join(str(choice) for choice in option.choices) + "}"
    group.add_argument(f"--{option.name}", **kwargs)


def _value_parser(option: Option):
    """argparse `type` for one value: converts by kind, then checks choices; errors are one short phrase."""

    def parse(text: str) -> object:
        try:
            return check_choice(option, _convert_text(option.kind, text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = option.kind
    return parse


def _convert_text(kind: str, text: str) -> object:
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"invalid {'integer' if kind == 'int' else 'number'} {text!r}") from None
    if kind == "int_or_float":
        return parse_int_or_float(text)
    return text


def help_text(option: Option) -> str:
    """--help line: the option's help, its default when it has one, and its status unless it works."""
    text = option.help
    if option.kind != "flag" and option.default not in (None, ""):
        text += f" (default: {option.default})"
    if option.status != WORKS:
        text += f" [{status_text(option)}]"
    return text.replace("%", "%%")


def status_text(option: Option) -> str:
    """'works', 'not yet (<roadmap capability>)' or 'refused: <reason>'."""
    if option.status == WORKS or option.status.startswith("refused"):
        return option.status
    return f"{option.status} ({option.roadmap})" if option.roadmap else option.status


def _one_line(message: str) -> str:
    """argparse's message, shortened: 'argument --x: ...' -> '--x: ...'."""
    message = message.removeprefix("argument ")
    message = message.replace(": expected one argument", ": expects a value")
    return message.replace(": ignored explicit argument ", ": is a flag and takes no value, got ")


def _unrecognized(extras: list[str]) -> list[str]:
    """'unknown option --x (did you mean --y?)' per unknown option; without any, the first stray value."""
    flags = [extra.split("=", 1)[0] for extra in extras if extra.startswith("-") and not _NUMBER.match(extra)]
    if not flags:
        return [f"unexpected argument {extras[0]!r} (each option takes one value; quote values with spaces)"]
    names = [option.name for option in OPTIONS]
    return [f"unknown option {flag}{did_you_mean(flag.lstrip('-'), names, '--{}'.format)}" for flag in flags]


def parse_command_line(argv: list[str]) -> ParsedArgs:
    """sd-scripts flags -> effective values. --output_config only records where to write (see ParsedArgs)."""
    explicit = vars(build_parser(defaults=False).parse_args(argv))
    # An empty value ('--resume ""', '--network_args' with no value) leaves the option unset, as in sd-scripts.
    explicit = {name: value for name, value in explicit.items() if not means_unset(OPTIONS_BY_NAME[name], value)}
    output_path = _output_config_path(explicit)
    # sd-scripts writes the command line alone with --output_config; the file named there must not exist yet.
    from_file, warnings = {}, []
    if "config_file" in explicit and output_path is None:
        from_file, warnings = read_config_file(explicit["config_file"])
    values = {option.name: option.default for option in OPTIONS} | from_file | explicit
    return ParsedArgs(values, frozenset(from_file) | frozenset(explicit), output_path, tuple(warnings))


def _output_config_path(explicit: dict[str, object]) -> Path | None:
    if not explicit.get("output_config"):
        return None
    if "config_file" not in explicit:
        raise ConfigError("--output_config needs --config_file (the path to write)")
    path = config_path(explicit["config_file"])
    if path.exists():
        raise ConfigError(f"--output_config: {path} already exists; remove it or name another --config_file")
    return path


def write_output_config(parsed: ParsedArgs, path: Path | None = None) -> Path:
    """--output_config: write the non-default values (never secrets) as a flat TOML file; returns its path."""
    target = path if path is not None else parsed.output_config_path
    if target is None:
        raise ConfigError("--output_config needs --config_file (the path to write)")
    return write_config_file(parsed.values, target)
