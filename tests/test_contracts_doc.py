"""docs/CONTRACTS.md must match the code: sidecar schema, manifest keys and Batch fields.

Names (and sidecar types) come from the real objects: ``shards.schema.SIDECAR_SCHEMA``,
``shards.build`` and ``shards.contracts.batch.Batch``. Nothing is built; this runs in milliseconds
once the modules are imported.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from shards import build
from shards.contracts.batch import Batch
from shards.schema import CAMERA_STRUCT, SCHEMA_VERSION, SIDECAR_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
DOC_PATH = ROOT / "docs" / "CONTRACTS.md"
PACKAGES = ("shards", "pipeline", "bev_model", "train", "eval")


@pytest.fixture(scope="module")
def doc() -> str:
    assert DOC_PATH.is_file(), f"{DOC_PATH} is missing"
    return DOC_PATH.read_text()


def section(doc: str, heading: str) -> str:
    """Text under ``heading`` (a whole heading line) up to the next heading of any level."""
    lines = doc.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        pytest.fail(f"docs/CONTRACTS.md has no heading line {heading!r}")
    out = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        out.append(line)
    return "\n".join(out)


def table_rows(text: str) -> list[list[str]]:
    """Cells of the markdown table rows whose first cell names something in backticks."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0].startswith("`"):
                rows.append(cells)
    return rows


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def notation(t: pa.DataType) -> str:
    """An Arrow type in the doc's (DESIGN.md's) notation."""
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{notation(t.value_type)}, {t.list_size}>"
    if pa.types.is_list(t):
        return f"list<{notation(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct"
    if pa.types.is_floating(t):
        return f"float{t.bit_width}"
    return str(t)


def typed_rows(text: str) -> dict[str, str]:
    """``{name: type}`` of a ``| `name` | `type` | ...`` table."""
    out = {}
    for cells in table_rows(text):
        for n in names(cells[0]):
            out[n] = " ".join(names(cells[1]))
    return out


def check_same(documented, in_code, what: str) -> None:
    missing = [n for n in in_code if n not in documented]
    extra = [n for n in documented if n not in in_code]
    assert not missing and not extra, (f"docs/CONTRACTS.md {what}: missing {missing}, "
                                       f"documented but not in the code {extra}")


def test_sidecar_columns_and_types(doc):
    rows = typed_rows(section(doc, "## Sidecar columns"))
    check_same(rows, SIDECAR_SCHEMA.names, "sidecar columns")
    wrong = {f.name: (rows[f.name], notation(f.type)) for f in SIDECAR_SCHEMA if rows[f.name] != notation(f.type)}
    assert not wrong, f"sidecar column types (doc, code) differ: {wrong}"
    assert f"SCHEMA_VERSION = {SCHEMA_VERSION}" in doc


def test_camera_struct_fields_and_types(doc):
    rows = typed_rows(section(doc, "### Camera struct"))
    fields = [CAMERA_STRUCT.field(i) for i in range(CAMERA_STRUCT.num_fields)]
    check_same(rows, [f.name for f in fields], "camera struct fields")
    wrong = {f.name: (rows[f.name], notation(f.type)) for f in fields if rows[f.name] != notation(f.type)}
    assert not wrong, f"camera struct field types (doc, code) differ: {wrong}"


def literal_keys(func, var: str) -> set[str]:
    """String keys of the dict literals that ``func`` assigns to ``var`` or passes to ``var.append``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    values = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == var for t in node.targets):
            values.append(node.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == var):
            values.extend(node.args)
    keys = {k.value for v in values for d in ast.walk(v) if isinstance(d, ast.Dict)
            for k in d.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    assert keys, f"no dict literal assigned to {var!r} in {func.__name__} (update this test)"
    return keys


def test_manifest_keys(doc):
    text = section(doc, "## manifest.json")
    documented = set(re.findall(r"`(\w+)`", text))
    top = literal_keys(build.build_shards, "manifest") | literal_keys(build.build_shards, "state")
    skipped = literal_keys(build._sample_job, "missing")
    sample = build.SampleJob("s_0000", 0, [], None, None, {"scene_name": "s", "ann_tokens": []}, (1, 1))
    entry = build._shard_entry(build.ShardJob("x-000000", [sample]), 0, "", 0, "")
    for what, keys in (("manifest keys", top), ("skipped-sample keys", skipped),
                       ("settings", build.settings_fields()), ("shard entry keys", entry)):
        missing = sorted(k for k in keys if k not in documented)
        assert not missing, f"docs/CONTRACTS.md, manifest.json: {what} not documented: {missing}"


def test_batch_fields(doc):
    rows = {n: cells for cells in table_rows(section(doc, "## Batch")) for n in names(cells[0])}
    fields = dataclasses.fields(Batch)
    check_same(rows, [f.name for f in fields], "Batch fields")
    for f in fields:
        optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        cell = rows[f.name][3]
        assert cell.startswith("yes") == optional, (f"Batch.{f.name}: the doc's optional column says {cell!r}, "
                                                    f"the dataclass {'has' if optional else 'has no'} default")


def test_code_points_to_the_doc():
    bare = []
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if re.search(r"(?<!docs/)CONTRACTS\.md", line):
                    bare.append(f"{p.relative_to(ROOT)}:{i}")
    assert not bare, f"refer to docs/CONTRACTS.md, not CONTRACTS.md: {bare}"
