"""Print the repository paths a service image installs: the package and every lineloop-* package it needs.

Service packages depend on each other by distribution name (`lineloop-runtime`); pip can only
resolve those names when the local paths are given in the same command, so the image build runs
`pip install $(python deploy/docker/local_requirements.py services/<name>)`. Reading the
pyproject files keeps each image at exactly the libraries its service declares.

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
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project(pyproject: Path) -> dict:
    with pyproject.open("rb") as f:
        return tomllib.load(f)["project"]


def dependency_names(package_dir: Path) -> list[str]:
    """Normalized distribution names of a package's runtime dependencies (extras dropped)."""
    names = []
    for requirement in _project(package_dir / "pyproject.toml").get("dependencies", []):
        match = _NAME.match(requirement)
        if match is None:
            raise ValueError(f"{package_dir}: unparsable dependency {requirement!r}")
        names.append(_normalize(match.group(1)))
    return names


def local_packages(root: Path) -> dict[str, Path]:
    """Distribution name -> package directory (relative to root) for every package in the repo."""
    packages = {}
    for pattern in PACKAGE_GLOBS:
        for pyproject in sorted(root.glob(pattern)):
            packages[_normalize(_project(pyproject)["name"])] = pyproject.parent.relative_to(root)
    return packages


def local_closure(root: Path, package_dir: Path) -> list[Path]:
    """The package and every local package it needs, transitively, in a stable order."""
    packages = local_packages(root)
    closure: list[Path] = []
    pending = [Path(package_dir)]
    while pending:
        current = pending.pop()
        if current in closure:
            continue
        closure.append(current)
        pending.extend(packages[name] for name in dependency_names(root / current) if name in packages)
    return [closure[0], *sorted(closure[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", type=Path, help="e.g. services/ingest")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    args = parser.parse_args(argv)
    if not (args.root / args.package_dir / "pyproject.toml").is_file():
        parser.error(f"{args.package_dir} has no pyproject.toml under {args.root}")
    print(" ".join(f"./{path.as_posix()}" for path in local_closure(args.root, args.package_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
