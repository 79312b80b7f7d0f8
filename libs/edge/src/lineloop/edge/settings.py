"""Edge agent settings: `LINELOOP_EDGE_*` (pydantic-settings, like the services')."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINELOOP_EDGE_", extra="ignore")

    # Public keys (PEM paths, comma-separated) whose signatures the agent accepts;
    # empty: the embedded compiler's development key under the state dir.
    trusted_keys: Annotated[list[Path], NoDecode] = []
    # How long each later stage of a rollout plan waits after the one before (the pilot soaks first).
    stage_delay_s: float = 10.0

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
