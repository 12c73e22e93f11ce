"""Claims: who does a piece of shared work, decided atomically in the study's storage.

A promotion, a retrain or the top-up of a study's trial tickets must be done by exactly
one worker even when many processes on many machines share the study. A claim is a key
taken by one owner (``host:pid``); it carries a heartbeat, and one whose holder stopped
beating (or, on this machine, no longer exists) is taken over.

:class:`Claims` is the interface the study's code uses; :class:`RDBClaims` implements it
with table ``stacknas_claims`` in the study's relational database (inserting a row is an
atomic claim in SQLite and PostgreSQL alike: the key is the primary key);
:class:`studies.file_claims.FileClaims` implements it with files beside a journal study.
"""
from __future__ import annotations

import abc
import os
import socket
import threading
import time

import sqlalchemy as sa

__all__ = ["Beating", "Claims", "RDBClaims", "local_process", "owner_is_dead", "worker_name"]


def worker_name() -> str:
    """``host:pid`` of this process: the owner its claims and trials name (what a test kills)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def local_process(owner: str) -> bool | None:
    """Whether ``owner`` (``host:pid``) is a live process of this machine: True, False (gone, or
    a killed child its parent has not reaped yet), or None for another machine's process,
    which cannot be checked from here."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # alive, another user's
        return True
    try:                         # a zombie still answers a signal; /proc tells (Linux)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def owner_is_dead(owner: str) -> bool:
    """True when ``owner`` (``host:pid``) is a process of this machine that no longer exists;
    a process elsewhere cannot be checked, so it is never called dead here."""
    return local_process(owner) is False


class Claims(abc.ABC):
    """Atomic, heart-beating claims of one storage, held by ``owner`` (``host:pid``).

    ``try_claim(key)``: exactly one caller wins a new key; a claim that is not ``done``
    and whose holder has not beaten for ``stale_after`` seconds (or is a dead process of
    this machine) may be taken over, again by one caller.
    """

    owner: str

    @abc.abstractmethod
    def try_claim(self, key: str, stale_after: float) -> bool:
        """Claim ``key``; True when this owner holds it now."""

    @abc.abstractmethod
    def holder(self, key: str) -> dict | None:
        """The claim of ``key`` (``owner``, ``heartbeat`` in unix seconds, ``done``), or None."""

    @abc.abstractmethod
    def beat(self, key: str) -> None:
        """Renew this owner's claim of ``key``."""

    @abc.abstractmethod
    def finish(self, key: str) -> None:
        """Mark this owner's claim of ``key`` done: it is never taken over."""

    @abc.abstractmethod
    def release(self, key: str) -> None:
        """Give up this owner's claim of ``key`` (another may take it at once)."""

    @abc.abstractmethod
    def rows(self, prefix: str) -> list[dict]:
        """Every claim whose key starts with ``prefix``: key, owner, heartbeat, done."""

    def close(self) -> None:
        """Free what the claims hold open (connections)."""

    def held(self, key: str, interval: float) -> "Beating":
        """Context manager beating ``key`` every ``interval`` seconds in a thread."""
        return Beating(lambda: self.beat(key), interval)

    def lock(self, key: str, stale_after: float = 60.0, poll: float = 0.2, timeout: float = 120.0):
        """A short mutual-exclusion section across processes (released on exit)."""
        return _Lock(self, key, stale_after, poll, timeout)


class RDBClaims(Claims):
    """Claims in table ``stacknas_claims`` of a relational database, through ``engine``
    (shared with the study's storage: one pool of connections per process)."""

    def __init__(self, engine: sa.engine.Engine, owner: str):
        self.owner, self.engine = owner, engine
        meta = sa.MetaData()
        self.table = sa.Table(
            "stacknas_claims", meta,
            sa.Column("key", sa.String(512), primary_key=True),
            sa.Column("owner", sa.String(256), nullable=False),
            sa.Column("heartbeat", sa.Float, nullable=False),   # unix time of the last beat
            sa.Column("done", sa.Integer, nullable=False, default=0),
        )
        try:
            meta.create_all(self.engine, checkfirst=True)
        except sa.exc.DBAPIError:   # another process created it at the same moment
            meta.create_all(self.engine, checkfirst=True)

    def try_claim(self, key: str, stale_after: float) -> bool:
        now = time.time()
        t = self.table
        try:
            with self.engine.begin() as conn:
                conn.execute(t.insert().values(key=key, owner=self.owner, heartbeat=now, done=0))
            return True
        except sa.exc.IntegrityError:
            pass
        with self.engine.begin() as conn:
            res = conn.execute(t.update()
                               .where(t.c.key == key, t.c.done == 0, t.c.heartbeat < now - stale_after)
                               .values(owner=self.owner, heartbeat=now))
            if res.rowcount == 1:
                return True
            row = conn.execute(t.select().where(t.c.key == key)).first()
            if row is None or row.done or not owner_is_dead(row.owner):
                return False
            res = conn.execute(t.update().where(t.c.key == key, t.c.done == 0, t.c.owner == row.owner)
                               .values(owner=self.owner, heartbeat=now))
            return res.rowcount == 1

    def holder(self, key: str) -> dict | None:
        t = self.table
        with self.engine.connect() as conn:
            row = conn.execute(t.select().where(t.c.key == key)).first()
        return dict(row._mapping) if row is not None else None

    def beat(self, key: str) -> None:
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.key == key, t.c.owner == self.owner).values(heartbeat=time.time()))

    def finish(self, key: str) -> None:
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.key == key, t.c.owner == self.owner)
                         .values(done=1, heartbeat=time.time()))

    def release(self, key: str) -> None:
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.key == key, t.c.owner == self.owner))

    def rows(self, prefix: str) -> list[dict]:
        t = self.table
        with self.engine.connect() as conn:
            res = conn.execute(t.select().where(t.c.key.startswith(prefix, autoescape=True)))
            return [dict(r._mapping) for r in res]


class Beating:
    """Calls ``beat`` now and then every ``interval`` seconds in a daemon thread, while entered."""

    def __init__(self, beat, interval: float):
        self._beat, self._interval = beat, max(0.2, float(interval))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
                pass

    def __enter__(self):
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


class _Lock:
    def __init__(self, claims: Claims, key: str, stale_after: float, poll: float, timeout: float):
        self.claims, self.key = claims, key
        self.stale_after, self.poll, self.timeout = stale_after, poll, timeout

    def __enter__(self):
        deadline = time.time() + self.timeout
        while not self.claims.try_claim(self.key, self.stale_after):
            if time.time() > deadline:
                raise TimeoutError(f"timed out waiting for lock {self.key!r} held by another process")
            time.sleep(self.poll)
        return self

    def __exit__(self, *exc):
        self.claims.release(self.key)
        return False
