"""Service state on SQLite and PostgreSQL: versioned schemas, transactions."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from lineloop.storage.sql import Database, SchemaTooNew

meta_v1 = MetaData()
things_v1 = Table("things", meta_v1, Column("id", Integer, primary_key=True), Column("name", String(32)))

meta_v2 = MetaData()
Table("things", meta_v2, Column("id", Integer, primary_key=True), Column("name", String(32)))
things_log = Table("things_log", meta_v2, Column("id", Integer, primary_key=True), Column("what", String(32)))


def test_schema_is_created_versioned_and_upgraded_by_adding_tables(database_url):
    db = Database(database_url)
    db.migrate("things", 1, meta_v1)
    assert db.schema_version("things") == 1
    with db.transaction() as s:
        s.execute(things_v1.insert().values(name="kept"))
    db.migrate("things", 1, meta_v1)  # a restart changes nothing
    db.migrate("things", 2, meta_v2)
    assert db.schema_version("things") == 2
    with db.session() as s:
        assert s.execute(select(things_v1.c.name)).scalar_one() == "kept"
        assert s.execute(select(func.count()).select_from(things_log)).scalar_one() == 0
    db.dispose()


def test_a_database_from_a_newer_release_is_refused(database_url):
    db = Database(database_url)
    db.migrate("things", 2, meta_v2)
    with pytest.raises(SchemaTooNew, match="things schema v2, this code knows v1"):
        db.migrate("things", 1, meta_v1)
    assert db.schema_version("things") == 2
    db.dispose()


def test_a_failed_transaction_leaves_nothing(database_url):
    db = Database(database_url)
    db.migrate("things", 1, meta_v1)
    with pytest.raises(RuntimeError), db.transaction() as s:
        s.execute(things_v1.insert().values(name="half"))
        raise RuntimeError("crash mid-way")
    with db.session() as s:
        assert s.execute(select(func.count()).select_from(things_v1)).scalar_one() == 0
    db.dispose()


async def test_writers_on_one_event_loop_take_turns(database_url):
    """Read-then-write transactions interleaved on one loop neither deadlock nor lose updates."""
    db = Database(database_url)
    db.migrate("things", 1, meta_v1)
    with db.transaction() as s:
        s.execute(things_v1.insert().values(id=1, name="0"))

    async def increment() -> None:
        async with db.write() as s:
            current = int(s.execute(select(things_v1.c.name).where(things_v1.c.id == 1)).scalar_one())
            await asyncio.sleep(0.001)  # a handler awaiting I/O mid-transaction
            s.execute(things_v1.update().where(things_v1.c.id == 1).values(name=str(current + 1)))

    await asyncio.gather(*(increment() for _ in range(20)))
    with db.session() as s:
        assert s.execute(select(things_v1.c.name).where(things_v1.c.id == 1)).scalar_one() == "20"
    db.dispose()


def test_replicas_migrating_at_once_do_not_trip_over_each_other(database_url):
    """Several service replicas start together against one fresh database."""
    import threading

    errors: list[BaseException] = []

    def start_replica() -> None:
        db = Database(database_url)
        try:
            db.migrate("things", 2, meta_v2)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=start_replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert Database(database_url).schema_version("things") == 2
