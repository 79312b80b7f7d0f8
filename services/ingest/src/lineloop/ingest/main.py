"""Wiring: the ingest service on lineloop.runtime."""

from __future__ import annotations

from lineloop.ingest import handlers_frames_captured, handlers_models_promoted, reconcile, state
from lineloop.ingest.api import IngestApi
from lineloop.ingest.pipeline import Pipeline
from lineloop.ingest.scoring import ServingPicture, TritonScorer
from lineloop.ingest.settings import IngestSettings
from lineloop.runtime import Service
from lineloop.v1.events_pb2 import FrameCaptured, ModelPromoted
from lineloop.v1.ingest_pb2_grpc import add_IngestServiceServicer_to_server


def build(settings: IngestSettings | None = None) -> Service:
    settings = settings or IngestSettings()
    service = Service("ingest", settings)
    service.migrate(state.SCHEMA_COMPONENT, state.SCHEMA_VERSION, state.metadata)

    serving = ServingPicture(service.db, settings.deployment_refresh_s)
    scorer = TritonScorer(
        settings.stack.triton_grpc, serving, timeout_s=settings.triton_timeout_s,
        max_batch=settings.score_max_batch, max_delay_ms=settings.score_max_delay_ms,
    )
    pipeline = Pipeline(settings, service.objects, scorer, service.db)
    prefetch = handlers_frames_captured.BatchPrefetch(pipeline, settings.max_concurrent_frames)

    group = settings.consumer_group
    service.bus.handler(FrameCaptured, group=group, middlewares=[prefetch.middleware()])(
        handlers_frames_captured.make_handler(pipeline, prefetch)
    )
    service.bus.handler(ModelPromoted, group=group)(handlers_models_promoted.make_handler(serving, scorer))
    service.add_grpc(
        add_IngestServiceServicer_to_server,
        IngestApi(settings, pipeline, service.db, service.bus, service.objects.aio,
                  uploads=settings.stack.object_store(endpoint=settings.upload_endpoint).aio
                  if settings.upload_endpoint else service.objects.aio),
    )

    @service.on_stop
    async def close_scoring() -> None:
        await scorer.close()
        pipeline.close()

    reconcile.schedule(service, settings)  # off unless LINELOOP_INGEST_RECONCILE_INTERVAL_S > 0
    return service


def main() -> None:
    build().run()


if __name__ == "__main__":
    main()
