"""Print the requirement lines a service image installs: the service and every lineloop-*
package it needs, as repository paths (with the extras asked for, e.g. `./libs/model[torch]`).

Service packages depend on each other by distribution name (`lineloop-runtime`); pip can only
resolve those names when the local paths are given in the same command, so the image build runs
`python deploy/docker/local_requirements.py services/<name> > requirements.local.txt` and then
one `pip install -r requirements.local.txt`. Reading the pyproject files keeps each image at
exactly the libraries its service declares.

Usage: python deploy/docker/local_requirements.py services/<name> [--root REPO]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# Where installable lineloop packages live; deploy/local (the embedded stack) never goes in an image.
PACKAGE_GLOBS = ("libs/*/pyproject.toml", "services/*/pyproject.toml")
# name, optional [extra,...]; version specifiers and markers after that are not needed here.
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project(pyproject: Path) -> dict:
    with pyproject.open("rb") as f:
        return tomllib.load(f)["project"]


def requirements(package_dir: Path, extras: frozenset[str] = frozenset()) -> list[tuple[str, frozenset[str]]]:
    """(normalized name, extras) of a package's runtime dependencies, plus those of `extras`."""
    project = _project(package_dir / "pyproject.toml")
    lines = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in sorted(extras):
        if extra not in optional:
            raise ValueError(f"{package_dir} has no extra [{extra}]")
        lines += optional[extra]
    parsed = []
    for line in lines:
        match = _REQUIREMENT.match(line)
        if match is None:
            raise ValueError(f"{package_dir}: unparsable dependency {line!r}")
        wanted = frozenset(_normalize(e) for e in (match.group(2) or "").split(",") if e.strip())
        parsed.append((_normalize(match.group(1)), wanted))
    return parsed


def dependency_names(package_dir: Path, extras: frozenset[str] = frozenset()) -> list[str]:
    """Normalized distribution names a package needs (with the given extras)."""
    return [name for name, _ in requirements(package_dir, extras)]


def local_packages(root: Path) -> dict[str, Path]:
    """Distribution name -> package directory (relative to root) for every package in the repo."""
    packages = {}
    for pattern in PACKAGE_GLOBS:
        for pyproject in sorted(root.glob(pattern)):
            packages[_normalize(_project(pyproject)["name"])] = pyproject.parent.relative_to(root)
    return packages


def local_closure_with_extras(root: Path, package_dir: Path) -> dict[Path, frozenset[str]]:
    """The package and every local package it needs, transitively, with the extras each is asked for."""
    packages = local_packages(root)
    wanted: dict[Path, frozenset[str]] = {}
    pending: list[tuple[Path, frozenset[str]]] = [(Path(package_dir), frozenset())]
    while pending:
        current, extras = pending.pop()
        if current in wanted and extras <= wanted[current]:
            continue
        wanted[current] = wanted.get(current, frozenset()) | extras
        for name, needed_extras in requirements(root / current, wanted[current]):
            if name in packages:
                pending.append((packages[name], needed_extras))
    first = Path(package_dir)
    return {first: wanted[first], **{path: wanted[path] for path in sorted(wanted) if path != first}}


def local_closure(root: Path, package_dir: Path) -> list[Path]:
    """The package and every local package it needs, transitively, in a stable order."""
    return list(local_closure_with_extras(root, package_dir))


def requirement_lines(root: Path, package_dir: Path) -> list[str]:
    lines = []
    for path, extras in local_closure_with_extras(root, package_dir).items():
        suffix = f"[{','.join(sorted(extras))}]" if extras else ""
        lines.append(f"./{path.as_posix()}{suffix}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", type=Path, help="e.g. services/ingest")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    args = parser.parse_args(argv)
    if not (args.root / args.package_dir / "pyproject.toml").is_file():
        parser.error(f"{args.package_dir} has no pyproject.toml under {args.root}")
    print("\n".join(requirement_lines(args.root, args.package_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
