"""Errors of a run that started correctly (no heavy imports, so the CLI can catch them cheaply)."""


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number; continuing would only write a broken LoRA. `quiet`: another
    process (the main one) reports the same reason."""

    def __init__(self, reason: str, *, quiet: bool = False):
        super().__init__(reason)
        self.quiet = quiet
