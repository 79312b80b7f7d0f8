"""The monitor service: watches what ingest and labeling report, detects drift, asks for retraining."""

from __future__ import annotations

from lineloop.monitor import state
from lineloop.monitor.api import MonitorApi
from lineloop.monitor.camera_watch import CameraWatch
from lineloop.monitor.dashboard import Dashboard
from lineloop.monitor.handlers_frames_ingested import make_handler
from lineloop.monitor.handlers_frames_rejected import make_handler as make_rejected_handler
from lineloop.monitor.handlers_labels_created import on_label_created
from lineloop.monitor.handlers_models_promoted import on_model_promoted
from lineloop.monitor.retention import Pruner
from lineloop.monitor.settings import MonitorSettings
from lineloop.runtime import Service
from lineloop.v1 import events_pb2, monitor_pb2_grpc


def build(settings: MonitorSettings) -> Service:
    service = Service("monitor", settings)
    service.migrate("lineloop.monitor", state.SCHEMA_VERSION, state.metadata)
    bus = service.bus
    bus.handler(events_pb2.FrameIngested, group=settings.consumer_group)(make_handler(settings))
    bus.handler(events_pb2.FrameRejected, group=settings.consumer_group)(make_rejected_handler(settings))
    bus.handler(events_pb2.LabelCreated, group=settings.consumer_group)(on_label_created)
    bus.handler(events_pb2.ModelPromoted, group=settings.consumer_group)(on_model_promoted)
    service.add_grpc(monitor_pb2_grpc.add_MonitorServiceServicer_to_server, MonitorApi(service.db, settings))
    pruner = Pruner(service.db, settings)
    service.on_start(pruner.start)
    service.on_stop(pruner.stop)
    camera_watch = CameraWatch(service.db, bus, settings)
    service.on_start(camera_watch.start)
    service.on_stop(camera_watch.stop)
    # The page starts last and stops first: it only reads what the rest keeps.
    dashboard = Dashboard(service.db, settings)
    service.on_start(dashboard.start)
    service.on_stop(dashboard.stop)
    service.dashboard = dashboard  # its bound port (http_port 0 in tests): service.dashboard.port
    return service


def main() -> None:
    build(MonitorSettings()).run()


if __name__ == "__main__":
    main()
