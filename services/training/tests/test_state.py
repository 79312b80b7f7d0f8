"""Run queue rules on SQLite and PostgreSQL: latest wins, one run per model, abandoned runs come back."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from lineloop.storage.sql import Database, utcnow
from lineloop.training import state


def enqueue(s, model: str, version: str) -> str:
    run_id, _ = state.enqueue(s, model_name=model, dataset=model, version=version, sha256="0" * 64, params={},
                              reason="test", requested_by="test")
    return run_id


def test_queue_latest_wins_one_run_per_model_and_stale_runs_requeue(database_url):
    db = Database(database_url)
    db.migrate("training", state.SCHEMA_VERSION, state.metadata)
    try:
        with db.transaction() as s:
            a1 = enqueue(s, "a", "v1")
        with db.transaction() as s:
            claimed = state.claim_next(s, "worker-1", "host-1")
        assert claimed["run_id"] == a1 and claimed["state"] == state.RUNNING
        with db.transaction() as s:
            a2, a3, b1 = enqueue(s, "a", "v2"), enqueue(s, "a", "v3"), enqueue(s, "b", "v1")
            assert state.get_run_row(s, a2)["state"] == state.CANCELLED
            assert state.get_run_row(s, a2)["error"].startswith(f"superseded by {a3}")
        with db.transaction() as s:  # model a is busy: the next claim is model b's run
            assert state.claim_next(s, "worker-2", "host-2")["run_id"] == b1
            assert state.claim_next(s, "worker-2", "host-2") is None
        with db.transaction() as s:
            state.finish(s, a1, state.SUCCEEDED)
            assert state.claim_next(s, "worker-2", "host-2")["run_id"] == a3
        # worker-2 goes silent: its runs are queued again once the heartbeat is stale, slots freed.
        with db.transaction() as s:
            s.execute(update(state.runs).where(state.runs.c.worker == "worker-2")
                      .values(heartbeat_at=utcnow() - timedelta(minutes=10)))
            requeued = state.requeue_abandoned(s, stale_before=utcnow() - timedelta(minutes=2))
            assert sorted(requeued) == sorted([a3, b1])
            assert state.get_run_row(s, a3)["state"] == state.QUEUED and state.get_run_row(s, a3)["epochs"] == []
            assert state.claim_next(s, "worker-3", "host-3")["run_id"] in (a3, b1)
        with db.session() as s:
            assert [r["run_id"] for r in state.list_run_rows(s, "a")][0] == a3
    finally:
        db.dispose()


def test_a_restart_takes_back_only_its_dead_predecessors_run_not_a_live_sibling_of_its_slot(database_url):
    # Two replicas sharing a host and frame cache (make chaos on PostgreSQL): process 101 was
    # killed, process 102 trains. The restarted one must take back 101's run only.
    db = Database(database_url)
    db.migrate("training", state.SCHEMA_VERSION, state.metadata)
    slot = f"host-1:/cache/{utcnow().timestamp()}"
    try:
        with db.transaction() as s:
            dead, live, other = enqueue(s, "dead", "v1"), enqueue(s, "live", "v1"), enqueue(s, "other", "v1")
        with db.transaction() as s:  # claimed oldest first
            assert state.claim_next(s, f"{slot}:101", "host-1")["run_id"] == dead
            assert state.claim_next(s, f"{slot}:102", "host-1")["run_id"] == live
            assert state.claim_next(s, "host-2:/cache:7", "host-2")["run_id"] == other
            s.execute(update(state.runs).where(state.runs.c.run_id.in_([dead, other]))
                      .values(heartbeat_at=utcnow() - timedelta(seconds=60)))
        with db.transaction() as s:
            # Silent for 60 s: past the slot's threshold (30 s), not yet any replica's (120 s).
            assert state.requeue_abandoned(s, utcnow() - timedelta(seconds=30), slot) == [dead]
            assert state.requeue_abandoned(s, utcnow() - timedelta(seconds=120)) == []
            assert [state.get_run_row(s, r)["state"] for r in (dead, live, other)] == [state.QUEUED, state.RUNNING, state.RUNNING]
        with db.transaction() as s:  # a shutdown hands back its own run only
            state.requeue_run(s, other)
            assert [state.get_run_row(s, r)["state"] for r in (live, other)] == [state.RUNNING, state.QUEUED]
    finally:
        db.dispose()
