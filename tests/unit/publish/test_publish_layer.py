"""publish/ sits beside data/models/network: it imports at most sdxl_lora.config and sdxl_lora.common."""

from __future__ import annotations

import ast
from pathlib import Path

import sdxl_lora.publish

PUBLISH = Path(sdxl_lora.publish.__file__).parent
ALLOWED = ("sdxl_lora.config", "sdxl_lora.common")


def test_publish_imports_only_config_and_common():
    offenders = []
    for path in sorted(PUBLISH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                offenders.append(f"{path.name}: relative import")
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names
                          if n.startswith("sdxl_lora") and not n.startswith(ALLOWED)]
    assert offenders == []
