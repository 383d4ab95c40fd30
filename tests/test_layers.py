"""The packages import downward only (docs/DESIGN.md, "Layers"): shards <- pipeline <- bev_model <- train/eval.

Every import statement of every module is read (also imports inside functions), so a lazy upward import
cannot hide.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "pipeline", "bev_model", "train", "eval")
ALLOWED = {
    "shards": {"shards"},
    "pipeline": {"shards", "pipeline"},
    "bev_model": {"shards", "bev_model"},
    "eval": {"shards", "pipeline", "bev_model", "eval"},
    "train": {"shards", "pipeline", "bev_model", "eval", "train"},
}
OUTSIDE = ("scripts", "benchmarks", "tests")


def imported_top_levels(path: Path) -> set[tuple[str, int]]:
    """``(top-level package, line)`` of every absolute import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add((node.module.split(".")[0], node.lineno))
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_its_own_layer_and_the_layers_below(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top, line in imported_top_levels(path):
            if (top in PACKAGES and top not in ALLOWED[package]) or top in OUTSIDE:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from train.checkpoint import list_complete\n    return list_complete\n")
    assert ("train", 2) in imported_top_levels(f)
