"""lineloop-training: datasets and requests in, trained models out."""

from __future__ import annotations

from lineloop.runtime import Service
from lineloop.training import handlers_datasets_versioned, handlers_training_requested, state
from lineloop.training.api import TrainingApi
from lineloop.training.settings import TrainingSettings
from lineloop.training.worker import RunWorker
from lineloop.v1.events_pb2 import DatasetVersioned, TrainingRequested
from lineloop.v1.training_pb2_grpc import add_TrainingServiceServicer_to_server


def build(settings: TrainingSettings | None = None) -> Service:
    settings = settings or TrainingSettings()
    service = Service("training", settings)
    service.migrate("training", state.SCHEMA_VERSION, state.metadata)
    worker = RunWorker(service, settings)
    service.bus.handler(DatasetVersioned, group=settings.consumer_group)(handlers_datasets_versioned.make_handler(settings, worker.wake))
    service.bus.handler(TrainingRequested, group=settings.consumer_group)(handlers_training_requested.make_handler(settings, worker.wake))
    service.add_grpc(add_TrainingServiceServicer_to_server, TrainingApi(service, settings, worker.wake))
    service.on_start(worker.start)
    service.on_stop(worker.stop)
    return service


def main() -> None:
    build().run()


if __name__ == "__main__":
    main()
