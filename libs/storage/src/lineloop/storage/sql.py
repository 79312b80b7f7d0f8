"""SQL service state: SQLite (embedded default) or PostgreSQL (compose/k8s), via SQLAlchemy.

Each service owns one database. Its tables are created on start-up and the
schema version of every component (the service's own tables, the bus's
inbox/outbox) is recorded, so a service refuses to run against a database
written by a newer release instead of corrupting it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

_meta = MetaData()
schema_versions = Table(
    "schema_versions",
    _meta,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


# Any fixed 64-bit number: the advisory lock that serialises schema creation.
_MIGRATION_LOCK_KEY = 0x6C696E656C6F6F70  # "lineloop"


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer release than this code."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(ts: datetime) -> datetime:
    """SQLite returns naive datetimes; lineloop writes them in UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def sqlite_file_exists(url: str) -> bool:
    """False only for a SQLite URL whose file is not there: opening it would create an empty
    one, so a tool that only reads (`lineloop reconcile`) checks first."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return True
    return Path(parsed.database).exists()


class Database:
    """One service's SQL database: an engine, sessions and versioned schemas."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Handlers run on the event loop and the outbox relay beside them:
            # one file, several connections, so WAL and a busy timeout.
            self.engine: Engine = create_engine(
                url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Writers on one event loop take turns. The drivers block the loop, so a
        # transaction that awaits I/O while holding a row lock (PostgreSQL) or
        # the write lock (SQLite, whose read snapshot also cannot be upgraded
        # once another connection committed) would otherwise deadlock a second
        # writer's blocking call. Other processes are the database's business.
        self._write_lock = asyncio.Lock()

    def session(self) -> Session:
        """A new session; use as a context manager and commit explicitly."""
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Session]:
        """A transaction for code on the event loop: commits on success.

        Do async I/O before entering it; keep what happens inside short.
        """
        async with self._write_lock:
            with self._sessions() as session, session.begin():
                yield session

    def migrate(self, component: str, version: int, metadata: MetaData) -> None:
        """Create `metadata`'s tables and record `component` at `version`.

        Tables are only ever added in this release line, so creating what is
        missing is the whole migration; a database at a newer version is refused.
        Replicas starting together take turns (a PostgreSQL advisory lock).
        """
        with self._migration_lock():
            _meta.create_all(self.engine)
            with self.transaction() as s:
                current = s.execute(
                    select(schema_versions.c.version).where(schema_versions.c.component == component)
                ).scalar_one_or_none()
                if current is not None and current > version:
                    raise SchemaTooNew(
                        f"database {self.safe_url} has {component} schema v{current}, this code knows v{version}"
                    )
            metadata.create_all(self.engine)
            with self.transaction() as s:
                if current is None:
                    s.execute(schema_versions.insert().values(component=component, version=version, applied_at=utcnow()))
                elif current < version:
                    s.execute(
                        schema_versions.update()
                        .where(schema_versions.c.component == component)
                        .values(version=version, applied_at=utcnow())
                    )
        if current != version:
            log.info("schema %s at v%d (was %s) in %s", component, version, current, self.safe_url)

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.is_sqlite:
            # create_all checks, then creates: without a lock two processes race.
            database = make_url(self.url).database
            if not database or database == ":memory:":
                yield
                return
            with open(f"{database}.migrate-lock", "a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                conn.commit()

    def schema_version(self, component: str) -> int | None:
        with self.session() as s:
            return s.execute(
                select(schema_versions.c.version).where(schema_versions.c.component == component)
            ).scalar_one_or_none()

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
