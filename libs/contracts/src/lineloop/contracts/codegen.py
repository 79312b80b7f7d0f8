"""Generate Python code from proto/ (``make proto``), or check it is fresh.

Usage: python -m lineloop.contracts.codegen [--check] PROTO_ROOT OUT_ROOT
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc
import grpc_tools


def generate(proto_root: Path, out_root: Path) -> None:
    protos = sorted(str(p) for p in proto_root.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _generated(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in (root / "lineloop" / "v1").glob("*_pb2*.py*")}


def stale_files(proto_root: Path, out_root: Path) -> list[str]:
    """Names of generated files that differ from what proto/ generates now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(proto_root, Path(tmp))
        fresh, current = _generated(Path(tmp)), _generated(out_root)
        names = sorted(set(fresh) | set(current))
        return [n for n in names
                if n not in fresh or n not in current or not filecmp.cmp(fresh[n], current[n], shallow=False)]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    proto_root, out_root = (Path(a) for a in argv if a != "--check")
    if check:
        stale = stale_files(proto_root, out_root)
        if stale:
            print("generated code is stale, run `make proto`:", *stale, sep="\n  ")
            return 1
        print("generated code is fresh")
        return 0
    for old in _generated(out_root).values():
        old.unlink()
    generate(proto_root, out_root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
