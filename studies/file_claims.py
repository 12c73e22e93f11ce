"""Claims as files in a folder of a shared filesystem (a journal study's ``NAME.claims/``).

The same :class:`~studies.claims.Claims` as :class:`~studies.claims.RDBClaims`, with
what a POSIX filesystem makes atomic, NFS included:

* a **new claim** is a file written under a temporary name and hard-linked to the
  claim's name: ``link`` fails for a name that exists, so one caller wins. (On NFS a
  retransmitted ``link`` can report failure for a link it made; the temporary file's
  link count tells the truth, the classic recipe.)
* a **change** of a claim (a beat, a take-over, done, a release) is made under the
  claim's own mutex, a symbolic link created beside it (Optuna's
  ``JournalFileSymlinkLock``; one left by a killed process is broken after 30 s), and
  written whole to a temporary file renamed over the claim, so a reader sees the old
  claim or the new one, never half of one.

A claim's heartbeat is the unix time of the machine that wrote it: machines sharing a
study need clocks within a heartbeat interval of each other (NTP), as they do for
Optuna's own heartbeats in a database.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from optuna.storages.journal import JournalFileSymlinkLock

from .claims import Claims, owner_is_dead

__all__ = ["FileClaims"]

_SUFFIX = ".claim"
_MUTEX_GRACE = 30     # seconds a claim's mutex may stay before it is broken (its holder died holding it)


class FileClaims(Claims):
    """Claims of ``owner`` (``host:pid``) as files in ``folder`` (created if missing)."""

    def __init__(self, folder: Path, owner: str):
        self.folder, self.owner = Path(folder), owner
        self.folder.mkdir(exist_ok=True)

    # ------------------------------------------------------------- files

    def _path(self, key: str) -> Path:
        name = quote(key, safe="")
        if len(name) > 200:         # a file name holds 255 bytes; the key itself is inside the file
            name = name[:80] + "-" + hashlib.sha256(key.encode()).hexdigest()
        return self.folder / (name + _SUFFIX)

    def _temp(self, row: dict) -> Path:
        tmp = self.folder / f".{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(row))
        return tmp

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def _create(self, path: Path, row: dict) -> bool:
        """Publish ``row`` at ``path`` unless a claim is there: True when this call made it."""
        tmp = self._temp(row)
        try:
            os.link(tmp, path)
            return True
        except OSError:
            # EEXIST: another claim is there - unless NFS retried a link that had succeeded
            return tmp.stat().st_nlink == 2
        finally:
            tmp.unlink()

    def _write(self, path: Path, row: dict) -> None:
        os.replace(self._temp(row), path)

    @contextlib.contextmanager
    def _mutex(self, path: Path):
        lock = JournalFileSymlinkLock(str(path), grace_period=_MUTEX_GRACE)
        lock.acquire()
        try:
            yield
        finally:
            with contextlib.suppress(RuntimeError):     # broken as stale by another: nothing to release
                lock.release()

    def _row(self, key: str, **fields) -> dict:
        return {"key": key, "owner": self.owner, "heartbeat": time.time(), "done": 0, **fields}

    def _change(self, key: str, change) -> None:
        """Under the claim's mutex, ``change(row)`` on this owner's claim of ``key``: a new row to
        write, or None to remove it."""
        path = self._path(key)
        with self._mutex(path):
            row = self._read(path)
            if row is None or row["owner"] != self.owner:
                return
            new = change(row)
            if new is None:
                path.unlink()
            else:
                self._write(path, new)

    # ------------------------------------------------------------- Claims

    def try_claim(self, key: str, stale_after: float) -> bool:
        path = self._path(key)
        if self._create(path, self._row(key)):
            return True
        with self._mutex(path):
            row = self._read(path)
            if row is None:                     # released meanwhile
                return self._create(path, self._row(key))
            if row["done"]:
                return False
            if row["heartbeat"] < time.time() - stale_after or owner_is_dead(row["owner"]):
                self._write(path, self._row(key))
                return True
            return False

    def holder(self, key: str) -> dict | None:
        row = self._read(self._path(key))
        return None if row is None else {k: row[k] for k in ("owner", "heartbeat", "done")}

    def beat(self, key: str) -> None:
        self._change(key, lambda row: {**row, "heartbeat": time.time()})

    def finish(self, key: str) -> None:
        self._change(key, lambda row: {**row, "heartbeat": time.time(), "done": 1})

    def release(self, key: str) -> None:
        self._change(key, lambda row: None)

    def rows(self, prefix: str) -> list[dict]:
        out = []
        for path in self.folder.glob("*" + _SUFFIX):
            row = self._read(path)
            if row is not None and row["key"].startswith(prefix):
                out.append(row)
        return out
