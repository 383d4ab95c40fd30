"""Scripts under ``benchmarks/`` and ``scripts/`` as modules for their tests (they are files, not package modules:
library code never imports them)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def script_module(relpath: str) -> Iterator[ModuleType]:
    """Import ``ROOT/relpath`` as the module named after its stem, registered in ``sys.modules`` while in use
    (dataclasses resolve string annotations through it); a generator for a fixture: ``yield from``."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)
