"""The compiler service: `models.registered.v1` -> verified, signed builds per target -> `models.compiled.v1`."""

from __future__ import annotations

from lineloop.compiler import handlers_models_registered, state
from lineloop.compiler.api import CompilerApi
from lineloop.compiler.builds import BuildEnvironment
from lineloop.compiler.profiles import load_profiles
from lineloop.compiler.settings import CompilerSettings
from lineloop.compiler.signing import load_signer
from lineloop.compiler.worker import BuildWorker
from lineloop.edge import load_fleets
from lineloop.runtime import Service
from lineloop.v1.compiler_pb2_grpc import add_CompilerServiceServicer_to_server


def build_service(settings: CompilerSettings | None = None) -> Service:
    settings = settings or CompilerSettings()
    service = Service("compiler", settings)
    service.migrate(state.SCHEMA_COMPONENT, state.SCHEMA_VERSION, state.metadata)
    catalogue = load_profiles(settings.profiles_file)
    fleets = load_fleets(settings.fleets_file)
    for fleet in fleets:
        catalogue.get(fleet.target)  # a fleet naming an unknown profile stops the start, with the names
    env = BuildEnvironment(
        objects=service.objects,
        signer=load_signer(settings.signing_key_file, settings.stack.state_dir),
        work_dir=settings.stack.state_dir / "compiler",
        verification_frames=settings.verification_frames,
        threads=settings.build_threads,
    )
    worker = BuildWorker(
        service.db, service.bus, env, catalogue, concurrency=settings.build_workers,
        poll_interval_s=settings.poll_interval_s, claim_timeout_s=settings.claim_timeout_s,
    )
    handlers_models_registered.subscribe(service.bus, settings.consumer_group, catalogue, fleets, worker)
    service.add_grpc(add_CompilerServiceServicer_to_server, CompilerApi(service.db, catalogue, worker, settings.compile_wait_s))
    service.on_start(worker.start)
    service.on_stop(worker.stop)
    return service


def main() -> None:
    build_service().run()


if __name__ == "__main__":
    main()
