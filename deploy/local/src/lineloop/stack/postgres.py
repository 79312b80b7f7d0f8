"""A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's binaries: initdb, pg_ctl).

PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user,
in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from lineloop.stack.config import HOST, free_ports

SUPERUSER = "lineloop"


def find_bin_dir() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


class PostgresCluster:
    def __init__(self, bin_dir: Path, base_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir
        self.port = free_ports(1)[0]
        self.run_as = "postgres" if os.geteuid() == 0 else None
        # Not under pytest's tmp dirs: those are private to root, the server user must own its dir.
        self.base_dir = Path(tempfile.mkdtemp(prefix="lineloop-pg-", dir=base_dir))
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        kwargs = {}
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.base_dir, **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({result.returncode}): {result.stderr or result.stdout}")

    def start(self) -> None:
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chown(self.base_dir, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-h {HOST} -p {self.port} -k {self.base_dir} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def admin_dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/postgres"

    def create_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
