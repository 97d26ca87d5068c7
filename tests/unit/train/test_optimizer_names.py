"""--optimizer_type / --lr_scheduler: one table in config says which names work; train builds exactly those."""

from __future__ import annotations

from sdxl_lora.config.options import OPTIMIZERS, WORKS
from sdxl_lora.config.rules import check_rules
from sdxl_lora.train.optim import OPTIMIZER_CLASSES


def test_train_builds_exactly_the_optimizers_config_marks_working():
    assert set(OPTIMIZER_CLASSES) == {name.lower() for name, status in OPTIMIZERS.items() if status == WORKS}


def _choice_problems(**values) -> list[str]:
    return [p for p in check_rules(values) if p.startswith(("--optimizer_type", "--lr_scheduler"))]


def test_every_optimizer_name_and_class_path_passes_config():
    for name in ("adamw", "AdamW8Bit", "PRODIGY", "pytorch_optimizer.CAME", "RAdam"):
        assert _choice_problems(optimizer_type=name) == []


def test_scheduler_names_not_working_are_refused_with_the_list():
    assert _choice_problems(lr_scheduler="cosine") == []
    problems = _choice_problems(lr_scheduler="Cosine")
    assert problems and problems[0].startswith("--lr_scheduler Cosine: not supported yet")
