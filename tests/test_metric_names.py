"""One metric naming convention (OpenTelemetry's): every instrument the code creates is named
`lineloop.<area>.<what>` in lower case with dots, its unit in `unit=`, never in the name; the
Prometheus exporter derives `lineloop_<area>_<what>[_<unit>][_total]` from it (docs/operations.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CREATORS = {"create_counter", "create_histogram", "create_gauge", "create_up_down_counter",
            "create_observable_gauge", "create_observable_counter", "create_observable_up_down_counter"}
NAME = re.compile(r"^lineloop(\.[a-z][a-z0-9_]*)+$")
# A unit spelled into the name (the exporter adds it from `unit=`), or Prometheus' own suffix.
UNIT_IN_NAME = re.compile(r"(_total|_seconds|_bytes|_per_second|_ms)$")


def instruments(root: Path) -> list[tuple[str, str, bool]]:
    """(where, name, has a unit) of every instrument created in the source tree."""
    found = []
    for path in root.rglob("*.py"):
        if any(part in {".venv", "tests", "__pycache__", "bench"} for part in path.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CREATORS
                    and node.args and isinstance(node.args[0], ast.Constant)):
                has_unit = any(k.arg == "unit" for k in node.keywords)
                found.append((f"{path.relative_to(root)}:{node.lineno}", node.args[0].value, has_unit))
    return found


def test_every_metric_follows_the_naming_convention():
    found = [i for d in ("libs", "services", "deploy") for i in instruments(REPO / d)]
    assert len(found) > 20  # the scan sees the instruments (ingest, bus, registry, ...)
    wrong = [f"{where}: {name}" for where, name, _ in found if not NAME.match(name) or UNIT_IN_NAME.search(name)]
    assert wrong == [], "metric names must be lineloop.<area>.<what>, the unit in unit=: " + ", ".join(wrong)
    no_unit = [f"{where}: {name}" for where, name, has_unit in found if not has_unit]
    assert no_unit == [], "give every instrument its unit (s, By, {frame}, ...): " + ", ".join(no_unit)


def test_the_scan_catches_a_prometheus_style_name(tmp_path):
    (tmp_path / "m.py").write_text('meter.create_counter("lineloop_training_runs_total")\n')
    [(_, name, has_unit)] = instruments(tmp_path)
    assert not NAME.match(name) and not has_unit


def test_the_docs_list_every_metric_and_no_other():
    documented = set(re.findall(r"^\| `(lineloop\.[a-z0-9_.]+)` \|", (REPO / "docs/metrics.md").read_text(), re.M))
    in_code = {name for d in ("libs", "services", "deploy") for _, name, _ in instruments(REPO / d)}
    assert documented == in_code, f"docs/metrics.md lacks {sorted(in_code - documented)}, lists gone {sorted(documented - in_code)}"
