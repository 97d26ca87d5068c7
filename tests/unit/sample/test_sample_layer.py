"""sample/ sits beside data/models/network: from the package it imports only config, common and itself."""

from __future__ import annotations

import ast
from pathlib import Path

import sdxl_lora.sample

SAMPLE = Path(sdxl_lora.sample.__file__).parent
ALLOWED = ("sdxl_lora.config", "sdxl_lora.common", "sdxl_lora.sample")


def test_sample_imports_only_config_and_common():
    offenders = []
    for path in sorted(SAMPLE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names
                          if n.startswith("sdxl_lora") and not n.startswith(ALLOWED)]
    assert offenders == []
