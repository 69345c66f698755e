#!/usr/bin/env python3
"""Generate the Python gRPC stubs in rover/backend/proto/ from protos/.

Run after editing a .proto file and commit the result:

    .venv/bin/python scripts/gen_protos.py

pprof's profile.proto (protos/pprof/) is not part of the SkyWalking protocol: it
is generated on its own into rover/export/pprof_pb/ (see :func:`generate_pprof`),
and tests/test_export_pprof_stubs.py checks that copy.

protoc emits imports relative to the proto root (``from common import
Command_pb2``), which only work with that root on sys.path; they are rewritten
to package imports (``from rover.backend.proto.common import Command_pb2``) so
the stubs import from anywhere. tests/test_protos.py regenerates into a
temporary directory and fails when the committed stubs are stale.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
DEFAULT_OUT = REPO / "rover" / "backend" / "proto"
PACKAGE = "rover.backend.proto"
PPROF_DIR = "pprof"  # under PROTO_ROOT
PPROF_OUT = REPO / "rover" / "export" / "pprof_pb"
PPROF_PACKAGE = "rover.export.pprof_pb"

# Generated code is neither formatted nor linted: it is rewritten on every run.
HEADER = "# ruff: noqa\n# fmt: off\n"
PACKAGE_DOC = '"""Generated protobuf/gRPC stubs; regenerate with scripts/gen_protos.py."""\n'

# "from common import X_pb2" / "from ebpf.profiling import X_pb2" (protoc's module path)
_IMPORT = re.compile(
    r"^from ((?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*) import (\w+_pb2)\b", re.M
)


def proto_files(root: Path = PROTO_ROOT) -> list[str]:
    """Every .proto under ``root``, relative to it, in a stable order (pprof's apart)."""
    files = (p.relative_to(root).as_posix() for p in root.rglob("*.proto"))
    return sorted(f for f in files if not f.startswith(f"{PPROF_DIR}/"))


def _rewrite(text: str, local_modules: set[str], package: str = PACKAGE) -> str:
    def package_import(match: re.Match[str]) -> str:
        module, name = match.group(1), match.group(2)
        if module.split(".")[0] not in local_modules:
            return match.group(0)  # google.protobuf and the like
        return f"from {package}.{module} import {name}"

    text = _IMPORT.sub(package_import, text)
    # the module name protoc records for the message classes (their __module__)
    text = re.sub(
        r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')([\w.]+_pb2')",
        lambda m: f"{m.group(1)}{package}.{m.group(2)}",
        text,
    )
    return HEADER + text


def generate_pprof(out_dir: Path = PPROF_OUT) -> list[Path]:
    """Generate pprof's profile_pb2 into ``out_dir`` (the package rover.export.pprof_pb)."""
    root = PROTO_ROOT / PPROF_DIR
    return generate(out_dir, root, package=PPROF_PACKAGE)


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT, package: str = PACKAGE) -> list[Path]:
    """Generate the stubs into ``out_dir`` (replacing its contents); returns the files written."""
    from grpc_tools import protoc  # a test/dev dependency only

    files = proto_files(proto_root)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")

        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        local_modules = {p.name for p in raw.iterdir() if p.is_dir()}
        written: list[Path] = []
        for src in sorted(raw.rglob("*")):
            if not src.is_file():
                continue
            text = src.read_text()
            # protos without services still get a *_pb2_grpc.py holding only a version check
            if src.name.endswith("_pb2_grpc.py") and "Stub" not in text:
                continue
            dst = out_dir / src.relative_to(raw)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(_rewrite(text, local_modules, package))
            written.append(dst)

    for package_dir in [out_dir, *sorted(p for p in out_dir.rglob("*") if p.is_dir())]:
        init = package_dir / "__init__.py"
        init.write_text(PACKAGE_DOC)
        written.append(init)
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output package directory")
    args = parser.parse_args(argv)
    written = generate(args.out)
    print(f"wrote {len(written)} files to {args.out}")
    written = generate_pprof()
    print(f"wrote {len(written)} files to {PPROF_OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
