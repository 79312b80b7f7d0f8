"""Compiler settings: `LINELOOP_COMPILER_*` (shared addresses: `LINELOOP_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from lineloop.runtime import ServiceSettings, service_config


class CompilerSettings(ServiceSettings):
    service_name: ClassVar[str] = "compiler"
    model_config = service_config("compiler")

    # Target profiles and edge fleets (YAML); empty: the packaged embedded defaults.
    profiles_file: Path | None = None
    fleets_file: Path | None = None
    # Ed25519 private key (PEM) that signs manifests; empty: a dev key generated under the state dir.
    signing_key_file: Path | None = None
    verification_frames: int = 256  # held-out frames each build is checked on
    build_workers: int = 1  # builds at once in this replica (each is CPU-heavy)
    build_threads: int = 1  # onnxruntime threads per build (verification timing runs here too)
    poll_interval_s: float = 5.0  # how often idle workers look for builds queued by other replicas
    claim_timeout_s: float = 1800.0  # a claimed build not finished by then is taken by another worker
    compile_wait_s: float = 300.0  # Compile waits this long (or the call's deadline) for its builds
