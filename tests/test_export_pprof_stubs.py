"""pprof's generated module is current, and its fields are numbered as pprof reads them."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from rover.export.pprof_pb import profile_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "rover" / "export" / "pprof_pb"


def _load_generator():  # scripts/ is not a package
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_protos", module)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_module_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "pprof_pb"
    _load_generator().generate_pprof(fresh)
    assert _tree(COMMITTED) == _tree(fresh), "run scripts/gen_protos.py and commit the result"
    stale = [p for p in sorted(_tree(fresh)) if not filecmp.cmp(COMMITTED / p, fresh / p, False)]
    assert not stale, f"stale generated files {stale}: run scripts/gen_protos.py"


def test_package_and_module_names() -> None:
    assert pb.DESCRIPTOR.package == "perftools.profiles"
    assert pb.Profile.__module__ == "rover.export.pprof_pb.profile_pb2"


# (message, field, number, type, repeated): pprof's proto/profile.proto
FIELDS = [
    ("Profile", "sample_type", 1, FieldDescriptor.TYPE_MESSAGE, True),
    ("Profile", "sample", 2, FieldDescriptor.TYPE_MESSAGE, True),
    ("Profile", "mapping", 3, FieldDescriptor.TYPE_MESSAGE, True),
    ("Profile", "location", 4, FieldDescriptor.TYPE_MESSAGE, True),
    ("Profile", "function", 5, FieldDescriptor.TYPE_MESSAGE, True),
    ("Profile", "string_table", 6, FieldDescriptor.TYPE_STRING, True),
    ("Profile", "drop_frames", 7, FieldDescriptor.TYPE_INT64, False),
    ("Profile", "keep_frames", 8, FieldDescriptor.TYPE_INT64, False),
    ("Profile", "time_nanos", 9, FieldDescriptor.TYPE_INT64, False),
    ("Profile", "duration_nanos", 10, FieldDescriptor.TYPE_INT64, False),
    ("Profile", "period_type", 11, FieldDescriptor.TYPE_MESSAGE, False),
    ("Profile", "period", 12, FieldDescriptor.TYPE_INT64, False),
    ("Profile", "comment", 13, FieldDescriptor.TYPE_INT64, True),
    ("Profile", "default_sample_type", 14, FieldDescriptor.TYPE_INT64, False),
    ("ValueType", "type", 1, FieldDescriptor.TYPE_INT64, False),
    ("ValueType", "unit", 2, FieldDescriptor.TYPE_INT64, False),
    ("Sample", "location_id", 1, FieldDescriptor.TYPE_UINT64, True),
    ("Sample", "value", 2, FieldDescriptor.TYPE_INT64, True),
    ("Sample", "label", 3, FieldDescriptor.TYPE_MESSAGE, True),
    ("Label", "key", 1, FieldDescriptor.TYPE_INT64, False),
    ("Label", "str", 2, FieldDescriptor.TYPE_INT64, False),
    ("Label", "num", 3, FieldDescriptor.TYPE_INT64, False),
    ("Label", "num_unit", 4, FieldDescriptor.TYPE_INT64, False),
    ("Mapping", "id", 1, FieldDescriptor.TYPE_UINT64, False),
    ("Mapping", "memory_start", 2, FieldDescriptor.TYPE_UINT64, False),
    ("Mapping", "memory_limit", 3, FieldDescriptor.TYPE_UINT64, False),
    ("Mapping", "file_offset", 4, FieldDescriptor.TYPE_UINT64, False),
    ("Mapping", "filename", 5, FieldDescriptor.TYPE_INT64, False),
    ("Mapping", "build_id", 6, FieldDescriptor.TYPE_INT64, False),
    ("Mapping", "has_functions", 7, FieldDescriptor.TYPE_BOOL, False),
    ("Mapping", "has_filenames", 8, FieldDescriptor.TYPE_BOOL, False),
    ("Mapping", "has_line_numbers", 9, FieldDescriptor.TYPE_BOOL, False),
    ("Mapping", "has_inline_frames", 10, FieldDescriptor.TYPE_BOOL, False),
    ("Location", "id", 1, FieldDescriptor.TYPE_UINT64, False),
    ("Location", "mapping_id", 2, FieldDescriptor.TYPE_UINT64, False),
    ("Location", "address", 3, FieldDescriptor.TYPE_UINT64, False),
    ("Location", "line", 4, FieldDescriptor.TYPE_MESSAGE, True),
    ("Location", "is_folded", 5, FieldDescriptor.TYPE_BOOL, False),
    ("Line", "function_id", 1, FieldDescriptor.TYPE_UINT64, False),
    ("Line", "line", 2, FieldDescriptor.TYPE_INT64, False),
    ("Line", "column", 3, FieldDescriptor.TYPE_INT64, False),
    ("Function", "id", 1, FieldDescriptor.TYPE_UINT64, False),
    ("Function", "name", 2, FieldDescriptor.TYPE_INT64, False),
    ("Function", "system_name", 3, FieldDescriptor.TYPE_INT64, False),
    ("Function", "filename", 4, FieldDescriptor.TYPE_INT64, False),
    ("Function", "start_line", 5, FieldDescriptor.TYPE_INT64, False),
]


@pytest.mark.parametrize("case", FIELDS, ids=lambda case: f"{case[0]}.{case[1]}")
def test_fields_match_pprof(case: tuple) -> None:
    message, name, number, kind, repeated = case
    field = pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[name]
    assert field.number == number
    assert field.type == kind
    assert field.is_repeated is repeated


def test_no_fields_beyond_pprofs() -> None:
    declared: dict[str, set[str]] = {}
    for message, name, *_ in FIELDS:
        declared.setdefault(message, set()).add(name)
    for message, names in declared.items():
        assert set(pb.DESCRIPTOR.message_types_by_name[message].fields_by_name) == names
    assert set(pb.DESCRIPTOR.message_types_by_name) == set(declared)
