"""Edge fleets (configuration, not code): which target each fleet runs and how it rolls out.

Read by the compiler (which targets to build for a model) and the registry (which rollouts
to publish). The packaged `fleets.yaml` is the embedded default; deployments point
`LINELOOP_COMPILER_FLEETS_FILE` / `LINELOOP_REGISTRY_FLEETS_FILE` at their own file.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from importlib import resources
from pathlib import Path

import yaml


@dataclasses.dataclass(frozen=True)
class Fleet:
    name: str
    target: str  # a compiler profile name
    models: tuple[str, ...] = ("*",)  # model-name patterns this fleet runs
    pilot_gateways: tuple[str, ...] = ()  # the first stage of a rollout; empty: no pilot stage

    def runs(self, model_name: str) -> bool:
        return any(fnmatch.fnmatchcase(model_name, pattern) for pattern in self.models)


def load_fleets(path: Path | None = None) -> list[Fleet]:
    """Fleets from a YAML file (`fleets: {name: {target, models, pilot_gateways}}`), else the default."""
    text = Path(path).read_text() if path else (resources.files("lineloop.edge") / "fleets.yaml").read_text()
    body = yaml.safe_load(text) or {}
    fleets = []
    for name, spec in (body.get("fleets") or {}).items():
        if not isinstance(spec, dict) or not spec.get("target"):
            raise ValueError(f"fleet {name!r} needs a target profile")
        fleets.append(
            Fleet(
                name=name,
                target=str(spec["target"]),
                models=tuple(spec.get("models") or ("*",)),
                pilot_gateways=tuple(spec.get("pilot_gateways") or ()),
            )
        )
    return fleets
