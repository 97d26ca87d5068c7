"""Errors of a run that started correctly (no heavy imports, so the CLI can catch them cheaply)."""


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number; continuing would only write a broken LoRA."""
