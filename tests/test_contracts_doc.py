"""docs/CONTRACTS.md must match the code: sidecar schema, manifest keys and Batch fields.

Names (and sidecar types) come from the real objects: ``shards.schema.SIDECAR_SCHEMA``,
the dataclasses of ``shards.manifest`` and ``shards.contracts.batch.Batch``. Nothing is built; this runs in milliseconds
once the modules are imported.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pyarrow as pa
import pytest

from shards import manifest
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
    """An Arrow type in docs/CONTRACTS.md's notation."""
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


def tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text`` in order, each as the cells of its rows (header and rule excluded)."""
    out: list[list[list[str]]] = []
    prev = False
    for line in text.splitlines():
        is_row = line.startswith("|")
        if is_row and not prev:
            out.append([])
        if is_row:
            out[-1].append([c.strip() for c in line.strip().strip("|").split("|")])
        prev = is_row
    return [rows[2:] for rows in out]


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_manifest_keys(doc):
    """The three tables of the manifest section are the fields of Manifest, BuildSettings and ShardEntry
    (in order), and the source and skipped-sample keys are named in the text."""
    text = section(doc, "## manifest.json")
    top, settings, entry = ([n for cells in t for n in names(cells[0])] for t in tables(text))
    assert top == field_names(manifest.Manifest), "manifest.json keys: doc vs shards.manifest.Manifest"
    assert settings == field_names(manifest.BuildSettings), "settings: doc vs shards.manifest.BuildSettings"
    assert entry == field_names(manifest.ShardEntry), "shard entry: doc vs shards.manifest.ShardEntry"
    rows = {n: cells[2] for cells in tables(text)[0] for n in names(cells[0])}
    for key, cls in (("source", manifest.ManifestSource), ("skipped", manifest.SkippedSample)):
        missing = [f for f in field_names(cls) if f"`{f}`" not in rows[key]]
        assert not missing, f"docs/CONTRACTS.md, manifest.json: {key} keys not documented: {missing}"
    state = set(re.findall(r"`(\w+)`", text.split("|")[0]))  # the paragraph above the tables
    assert ".build.json" in text and set(field_names(manifest.BuildState)) <= state


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
