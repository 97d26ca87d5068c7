"""common/ is a leaf: every layer may import it, so it imports nothing from sdxl_lora."""

from __future__ import annotations

import ast
from pathlib import Path

import sdxl_lora.common

COMMON = Path(sdxl_lora.common.__file__).parent


def test_common_imports_nothing_from_the_package():
    offenders = []
    for path in sorted(COMMON.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else ["." * node.level] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("sdxl_lora", "."))]
    assert offenders == []
    assert (COMMON / "__init__.py").read_text() == (
        '"""Leaf helpers shared by every layer; they import nothing from sdxl_lora."""\n')
