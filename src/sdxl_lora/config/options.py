"""Every command-line option of sd-scripts' sdxl_train_network.py, as data (spec section 1).

Declarations only, no logic: `config.parser` builds argparse from this table, `docs/options.md` is generated
from it, and `config.build` rejects a non-default value of any option whose status is not WORKS.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKS = "works"
NOT_YET = "not yet"


@dataclass(frozen=True)
class Option:
    """One sd-scripts option."""

    name: str
    """Flag name without the leading '--'."""
    group: str
    """--help section (the guide's section titles)."""
    kind: str
    """'flag', 'str', 'int', 'float', 'int_or_float' (warmup style: int, fraction < 1 or 'N%')."""
    default: object = None
    """sd-scripts' default value."""
    choices: tuple | None = None
    """Allowed values, when sd-scripts restricts them."""
    nargs: str | None = None
    """'*' for options that take zero or more values."""
    help: str = ""
    """One line for --help and docs/options.md."""
    status: str = NOT_YET
    """WORKS, NOT_YET, or 'refused: <reason>'."""
    roadmap: str = ""
    """Roadmap capability that will implement it (shown in the 'not supported yet' message)."""
    secret: bool = False
    """Never written to --output_config files or logs."""
