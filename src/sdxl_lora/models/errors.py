"""The loader's one error type: a user-facing, one-line reason that names the file (and the flag, when known)."""

from __future__ import annotations

from sdxl_lora.config.errors import UserInputError


class ModelLoadError(UserInputError):
    """The base model cannot be loaded; the message is one line naming the flag and the path."""

    def __init__(self, message: str):
        self.problems = [message]
        super().__init__(message)

    def for_flag(self, flag: str) -> ModelLoadError:
        """The same problem, prefixed with the command-line flag that named the file."""
        return ModelLoadError(f"{flag} {self}")
