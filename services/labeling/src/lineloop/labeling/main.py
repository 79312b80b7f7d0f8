"""lineloop-labeling: review queue, labels, dataset versions, Label Studio interop."""

from __future__ import annotations

from lineloop.labeling import handlers_drift_detected, handlers_frames_ingested, handlers_models_promoted, handlers_models_registered, state
from lineloop.labeling.api import LabelingApi
from lineloop.labeling.datasets import Datasets
from lineloop.labeling.settings import LabelingSettings
from lineloop.runtime import Service
from lineloop.v1.events_pb2 import DriftDetected, FrameIngested, ModelPromoted, ModelRegistered
from lineloop.v1.labeling_pb2_grpc import add_LabelingServiceServicer_to_server

def build(settings: LabelingSettings | None = None) -> Service:
    cfg = settings or LabelingSettings()
    service = Service("labeling", cfg)
    service.migrate(state.SCHEMA_COMPONENT, state.SCHEMA_VERSION, state.metadata)
    service.bus.handler(FrameIngested, group=cfg.consumer_group)(handlers_frames_ingested.make_handler(cfg))
    service.bus.handler(DriftDetected, group=cfg.consumer_group)(handlers_drift_detected.make_handler(cfg))
    service.bus.handler(ModelRegistered, group=cfg.consumer_group)(handlers_models_registered.on_model_registered)
    service.bus.handler(ModelPromoted, group=cfg.consumer_group)(handlers_models_promoted.on_model_promoted)
    datasets = Datasets(cfg, service.db, service.bus, service.objects)
    service.add_grpc(
        add_LabelingServiceServicer_to_server, LabelingApi(cfg, service.db, service.bus, service.objects, datasets)
    )
    service.on_start(datasets.start_policy)
    service.on_stop(datasets.stop_policy)
    return service


def main() -> None:
    build().run()


if __name__ == "__main__":
    main()
