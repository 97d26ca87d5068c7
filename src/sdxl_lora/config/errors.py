"""The one exception type the CLI turns into 'one clear line per problem, exit status 2'."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


class UserInputError(Exception):
    """Base of every error caused by what the user gave us (not a bug): the CLI prints it and exits 2."""

    problems: list[str]


class ConfigError(UserInputError):
    """Bad user input: every problem found, each naming its flag, TOML key path or file."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects problems so validation can report all of them at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def extend(self, messages: list[str]) -> None:
        self.items.extend(messages)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def did_you_mean(word: str, known: Iterable[str], show: Callable[[str], str] = str) -> str:
    """' (did you mean <closest known name>?)', or '' when nothing is close; `show` formats the name."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {show(close[0])}?)" if close else ""
