"""`make chaos`: faults injected into a running loop, one at a time, under steady gateway traffic.

For each fault: a gateway run of --frames-per-fault frames starts, the fault is injected a
few seconds in, held for its pause, undone (the process restarted, SIGCONT, the disk freed),
and the harness waits until every frame of the run is in effect (ingest's index, the monitor,
the labeling queue), then proves it with the checker (tests/chaos/chaoslib.py). One table row
per fault; exit 1 when any row lost a frame, counted one twice or raised drift falsely, or the
final check over the whole ledger is not clean.

    .venv/bin/python tests/chaos/run_chaos.py                # the full set (see docs/chaos.md)
    .venv/bin/python tests/chaos/run_chaos.py --faults kill9:ingest,sigstop:monitor --frames-per-fault 200
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaoslib import SERVERS, SERVICES, Checker, Loop, Traffic, read_ledger  # noqa: E402
from served import ControlPlane, Retraining, ServedModel, check_scoring, serve_line  # noqa: E402

log = logging.getLogger("chaos")

LINE = "chaos-line"
# A stopping service's bound: gRPC grace (5 s), the in-flight batch, the outbox flushed, the
# hooks; Kubernetes' default terminationGracePeriodSeconds is 30.
SIGTERM_BOUND_S = 30.0
# How long the stack's watchdog may take to make a store that refuses writes write again.
STORE_HEAL_S = 60.0
FULL_FAULTS = (
    ["none"]
    + [f"kill9:{s}" for s in SERVICES]
    + [f"kill9:{s}" for s in ("kafka", "s3", "triton")]
    + [f"sigterm:{s}" for s in SERVICES]  # training, registry, compiler with a retraining run in flight
    + ["sigstop:ingest", "sigstop:monitor", "diskfull"]
)
# `--postgres`: every service on PostgreSQL with a second replica (`--replicas`): one of the two
# killed in turn, then PostgreSQL itself.
POSTGRES_FAULTS = ["none"] + [f"kill9:{s}-r2" for s in SERVICES] + ["kill9:postgres"]


@dataclasses.dataclass
class Row:
    fault: str
    sent: int = 0
    lost: int = 0
    duplicates: int = 0
    catch_up_s: float | None = None
    alerts: int = 0
    false_drift: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.note.startswith("DEFECT") and self.lost == 0 and self.duplicates == 0 and self.false_drift == 0 and self.catch_up_s is not None


class Fault:
    """inject() a few seconds into a run, undo() after `pause` seconds."""

    def __init__(self, name: str, loop: Loop, pause: float) -> None:
        self.name = name
        self.loop = loop
        self.pause = pause
        kind, _, target = name.partition(":")
        self.kind, self.target = kind, target
        self._balloon: Path | None = None
        self.failed = ""  # why the fault itself showed a defect (SIGTERM not honoured)

    def inject(self) -> str:
        if self.kind == "none":
            return ""
        if self.kind == "kill9":
            pid = self.loop.pid(self.target)
            self.loop.kill9(self.target)
            return f"pid {pid} killed"
        if self.kind == "sigterm":
            proc = self.loop.process(self.target)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=SIGTERM_BOUND_S)
            except psutil.TimeoutExpired:
                self.loop.kill9(self.target)
                self.failed = f"still running {SIGTERM_BOUND_S:.0f} s after SIGTERM (killed)"
                return self.failed
            if code != 0:
                self.failed = f"exited {code} on SIGTERM"
            return f"pid {proc.pid} exited {code} in {time.monotonic() - started:.1f} s"
        if self.kind == "sigstop":
            self.pid = self.loop.pid(self.target)
            os.kill(self.pid, signal.SIGSTOP)
            return f"pid {self.pid} stopped"
        if self.kind == "diskfull":
            return self._fill()
        raise ValueError(f"unknown fault {self.name!r}")

    def undo(self) -> None:
        if self.kind in ("kill9", "sigterm"):
            self.loop.restart(self.target)
        elif self.kind == "sigstop":
            os.kill(self.pid, signal.SIGCONT)
        elif self.kind == "diskfull":
            self._balloon.unlink(missing_ok=True)
            # Does the object store write again, now the space is back? SeaweedFS's filer store keeps
            # the failed write's error until restarted; the stack's watchdog restarts it after three
            # refused probes (5 s apart). Only if it has not by then does the harness, as an operator
            # would, so the proof still runs, and the row fails saying so.
            deadline = time.monotonic() + STORE_HEAL_S
            while not self.loop.stack.store_writes():  # the watchdog's own probe, every metadata database
                if time.monotonic() > deadline:
                    self.failed = f"object store still failing writes {STORE_HEAL_S:.0f} s after the disk was freed; restarted it by hand"
                    break
                time.sleep(1.0)
            else:
                return
            self.loop.kill9("s3")
            self.loop.restart("s3")

    def _fill(self) -> str:
        """Fill the state directory's filesystem until a write fails (ENOSPC)."""
        self._balloon = self.loop.state_dir / "chaos-balloon"
        chunk = b"\0" * (1 << 20)
        written = 0
        with open(self._balloon, "wb") as f:
            try:
                while True:
                    f.write(chunk)
                    f.flush()
                    written += 1
            except OSError as exc:
                if exc.errno != 28:
                    raise
        free = shutil.disk_usage(self.loop.state_dir).free
        return f"filled {written} MiB, {free} bytes free"


def run_fault(loop: Loop, checker: Checker, ledger: Path, fault: Fault, *, frames: int, rate: float,
              seed: int, catch_up_timeout: float, served: ServedModel | None = None,
              control: ControlPlane | None = None) -> Row:
    row = Row(fault.name)
    before = checker.check(read_ledger(ledger), verify_bytes=False) if fault.kind != "none" else None
    drift_before = before.drift_reports if before else 0
    alerts_before = before.alerts if before else collections.Counter()
    dlq_before = before.dlq_records if before else 0
    # Training, the registry and the compiler are killed with work of a retraining run in flight:
    # the traffic starts once it is (the registry's gate and the compiler's build take seconds),
    # so frames flow through the fault all the same.
    work = Retraining(control, served, fault.target).start() if served and Retraining.wanted(fault.target) else None
    waited = work.wait_in_flight(timeout=300) + "; " if work else ""
    traffic = Traffic(loop, ledger, line=LINE, frames=frames, rate=rate, seed=seed).start()
    # A quarter of the way in: frames are flowing through every stage when the fault lands.
    if not work or work.target == "training":  # a run trains for a minute or so
        time.sleep(frames / rate / 4)
    fault_from = datetime.now(UTC)
    row.note = waited + fault.inject()
    log.info("%s: injected (%s); undo in %.0f s", fault.name, row.note, fault.pause)
    time.sleep(fault.pause)
    fault.undo()
    undone = time.monotonic()
    undone_at = datetime.now(UTC)
    log.info("%s: undone", fault.name)
    traffic.join(timeout=frames / rate * 4 + 300)
    entries = [e for e in read_ledger(ledger) if e["run_id"] == traffic.run_id]
    ids = {e["frame_id"] for e in entries}
    waited = checker.wait_caught_up(ids, catch_up_timeout)
    if waited is not None:
        row.catch_up_s = max(0.0, time.monotonic() - undone)
    verdict = checker.check(entries)
    row.sent = verdict.sent
    row.lost = verdict.lost
    row.duplicates = verdict.duplicates_in_effect
    # No drift is injected: any drift report, or drift alert of one camera, is false.
    alerts = verdict.alerts - alerts_before
    row.false_drift = verdict.drift_reports - drift_before + alerts["camera_drift"]
    row.alerts = alerts.total() + verdict.dlq_records - dlq_before
    if alerts:
        row.note += f"; alerts {dict(alerts)}"
    if not verdict.ok:
        row.note += f"; checker: {json.dumps(dict(verdict.details))[:600]}"
        row.lost = max(row.lost, 1) if (verdict.orphans or verdict.missing_objects or verdict.sha_mismatches) and not row.lost else row.lost
    if verdict.inconsistent:
        row.note += f"; inconsistent: {verdict.inconsistent[:3]}"
    defects = []
    if served:
        defect, note = check_scoring(loop, ledger, LINE, ids, fault_from, undone_at, seed=seed)
        defects += [defect] if defect else []
        row.note += f"; {note}" if note else ""
    if work:
        defect, note = work.settle(timeout=600)
        defects += [defect] if defect else []
        row.note += f"; {note}" if note else ""
    if defects:
        row.note = "DEFECT: " + "; ".join(defects) + "; " + row.note
    if fault.failed:
        row.note = f"DEFECT: {fault.failed}; " + row.note
        row.catch_up_s = None if "still running" in fault.failed else row.catch_up_s
    log.info("%s: %s", fault.name, row)
    return row


def print_table(rows: list[Row], out=sys.stdout) -> None:
    head = f"{'fault':<18} {'sent':>6} {'lost':>5} {'dup':>4} {'catch-up s':>10} {'alerts':>6} {'false drift':>11}  note"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        catch = f"{r.catch_up_s:.1f}" if r.catch_up_s is not None else "NEVER"
        print(f"{r.fault:<18} {r.sent:>6} {r.lost:>5} {r.duplicates:>4} {catch:>10} {r.alerts:>6} {r.false_drift:>11}  {r.note[:200]}",
              file=out)


@contextlib.contextmanager
def state_directory(size_mb: int | None) -> Iterator[Path]:
    """A fresh state directory; on a tmpfs of `size_mb` when the disk-full fault runs (needs root)."""
    base = Path(tempfile.mkdtemp(prefix="lineloop-chaos-"))
    mounted = False
    try:
        if size_mb:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(base)], check=True)
            mounted = True
        yield base / "state"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", default=None,
                   help="comma-separated; default: the full set (with --postgres: the replica set)")
    p.add_argument("--frames-per-fault", type=int, default=400)
    p.add_argument("--rate", type=float, default=8.0, help="frames/s the gateway sends")
    p.add_argument("--pause", type=float, default=10.0, help="seconds a killed process stays down")
    p.add_argument("--sigstop-s", type=float, default=30.0)
    p.add_argument("--catch-up-timeout", type=float, default=300.0)
    p.add_argument("--tmpfs-mb", type=int, default=1024, help="state directory tmpfs size (diskfull); 0: no tmpfs")
    p.add_argument("--postgres", action="store_true",
                   help="services on PostgreSQL, with a second replica of --replicas (kill9:ingest-r2, kill9:postgres)")
    p.add_argument("--replicas", default=",".join(SERVICES))
    p.add_argument("--keep", type=Path, default=None, help="copy the state directory's logs here at the end")
    p.add_argument("--table", type=Path, default=None, help="also write the table (and JSON rows) here")
    p.add_argument("--served", action=argparse.BooleanOptionalAction, default=True,
                   help="first turn the loop once so the chaos line is scored by a production model "
                        "(tests/chaos/served.py); --no-served: no model, Triton faults touch nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    faults = [f for f in (args.faults or ",".join(POSTGRES_FAULTS if args.postgres else FULL_FAULTS)).split(",") if f]
    needs_tmpfs = "diskfull" in faults and args.tmpfs_mb > 0
    started = time.monotonic()
    rows: list[Row] = []
    with state_directory(args.tmpfs_mb if needs_tmpfs else None) as state_dir:
        loop = Loop.on_postgres(state_dir) if args.postgres else Loop(state_dir)
        ledger = state_dir.parent / "ledger.jsonl"
        try:
            log.info("starting the loop in %s", state_dir)
            loop.up()
            if args.postgres:
                for service in filter(None, args.replicas.split(",")):
                    loop.start_replica(service)
            log.info("loop up in %.0f s", time.monotonic() - started)
            checker = Checker(loop)
            control = ControlPlane(loop) if args.served else None
            served = serve_line(loop, control, ledger, LINE, seed=900) if args.served else None
            for i, name in enumerate(faults):
                pause = args.sigstop_s if name.startswith("sigstop") else args.pause
                fault = Fault(name, loop, pause)
                try:
                    rows.append(run_fault(loop, checker, ledger, fault, frames=args.frames_per_fault, rate=args.rate,
                                          seed=1000 + i, catch_up_timeout=args.catch_up_timeout,
                                          served=served, control=control))
                except Exception as exc:
                    log.exception("%s failed", name)
                    rows.append(Row(name, note=f"harness error: {exc!r}"[:300]))
                    with contextlib.suppress(Exception):
                        fault.undo()
                        loop.up()
            final = checker.check(read_ledger(ledger))
        finally:
            loop.down()
            if args.keep:
                shutil.copytree(state_dir / "logs", args.keep, dirs_exist_ok=True)
                shutil.copy(ledger, args.keep / "ledger.jsonl")
    minutes = (time.monotonic() - started) / 60
    print()
    print_table(rows)
    print(f"\nall runs: {final.sent} frames sent, lost {final.lost}, duplicates in effect {final.duplicates_in_effect}, "
          f"orphans {final.orphans}, missing objects {final.missing_objects}, sha mismatches {final.sha_mismatches}, "
          f"redeliveries {final.topic_redeliveries} (harmless), inconsistent {len(final.inconsistent)}; "
          f"{minutes:.1f} min")
    if args.table:
        with open(args.table, "w") as f:
            print_table(rows, f)
            json.dump({"rows": [dataclasses.asdict(r) for r in rows], "final": final.summary(), "minutes": minutes}, f, indent=1)
    return 0 if rows and all(r.ok for r in rows) and final.ok else 1


if __name__ == "__main__":
    sys.exit(main())
