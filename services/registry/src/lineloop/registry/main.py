"""lineloop-registry: trained models in, gated and staged versions out."""

from __future__ import annotations

from lineloop.registry import handlers_models_compiled, handlers_models_trained, state
from lineloop.registry.api import RegistryApi
from lineloop.registry.deployer import Deployer
from lineloop.registry.deployment import TritonDeployer
from lineloop.registry.settings import RegistrySettings
from lineloop.registry.stages import Stages
from lineloop.registry.worker import RegistryWorker
from lineloop.runtime import Service
from lineloop.v1.events_pb2 import ModelTrained
from lineloop.v1.registry_pb2_grpc import add_RegistryServiceServicer_to_server


def build(settings: RegistrySettings | None = None, deployer: Deployer | None = None) -> Service:
    settings = settings or RegistrySettings()
    service = Service("registry", settings)
    service.migrate("registry", state.SCHEMA_VERSION, state.metadata)
    service.migrate(handlers_models_compiled.SCHEMA_COMPONENT, handlers_models_compiled.SCHEMA_VERSION,
                    handlers_models_compiled.metadata)
    handlers_models_compiled.subscribe(service.bus, settings.consumer_group)
    stages = Stages(service, settings, deployer or TritonDeployer(service, settings.deployment))
    worker = RegistryWorker(service, settings, stages)
    service.bus.handler(ModelTrained, group=settings.consumer_group)(handlers_models_trained.make_handler(worker.wake))
    service.add_grpc(add_RegistryServiceServicer_to_server, RegistryApi(service, stages))
    service.on_start(worker.start)
    service.on_stop(worker.stop)
    return service


def main() -> None:
    build().run()


if __name__ == "__main__":
    main()
