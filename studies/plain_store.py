"""A study in a storage that is not a relational database: Optuna's public storage API only,
heartbeats through the study's claims.

:class:`PlainStore` is the :class:`~studies.storage.Store` of Optuna's journal file
(``journal:///...``, :mod:`studies.journal`) and of its gRPC storage proxy
(``grpc://HOST:PORT?claims=...``, :mod:`studies.grpc_proxy`). Neither of them has
Optuna's heartbeats (``BaseHeartbeat``, Optuna 4.0-5.1), and neither has the bulk
reader and batched writes of :mod:`studies.rdb`; what a worker asks of a store is
done here with the public API instead:

* **Heartbeats.** A running trial's worker takes claim ``beat:STUDY_ID:NUMBER`` at its
  first beat, whoever held it, and renews it every ``--heartbeat`` seconds. The stale-trial check fails a RUNNING trial whose claim has been silent for
  three beats (or that has none and started three beats ago) and re-queues it with the
  same parameters, as Optuna's ``fail_stale_trials`` and
  ``RetryHeartbeatStaleTrialCallback`` do for a database.
* **Reads** go through the study's trial cache (the journal replays only the log it has
  not read yet), **writes** one attribute at a time (one log record each).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from .file_claims import FileClaims
from .grpc_proxy import claims_for, is_grpc, open_proxy, parse_grpc
from .journal import check_journal, claims_folder, is_journal, journal_path, open_journal
from .storage import DEFAULT_GRACE_FACTOR, StorageError, Store

__all__ = ["PlainStore", "check_plain", "is_plain", "open_plain", "optuna_storage", "storage_file", "study_names"]


@dataclass
class PlainStore(Store):
    """A store over any Optuna storage, through its public API (see the module)."""

    closer: Callable[[], None] | None = None
    interval: int = 0               # seconds between heartbeats; 0: none armed
    max_retry: int = 3
    _beating: set = field(default_factory=set, repr=False)    # trial numbers whose beat claim this store took

    def attrs(self) -> dict:
        return self.storage.get_study_user_attrs(self.study_id)

    def read_trials(self) -> list:
        return self.study().get_trials(deepcopy=False)

    def write_trial(self, number: int, user_attrs: dict | None = None, system_attrs: dict | None = None) -> None:
        if not user_attrs and not system_attrs:
            return                  # nothing held back: the sampled parameters are written as sampled
        trial_id = self.trial_id(number)
        for key, value in (user_attrs or {}).items():
            self.storage.set_trial_user_attr(trial_id, key, value)
        for key, value in (system_attrs or {}).items():
            self.storage.set_trial_system_attr(trial_id, key, value)

    def arm_heartbeat(self, interval: int, max_retry: int) -> None:
        self.interval, self.max_retry = int(interval), int(max_retry)

    def heartbeat_interval(self) -> int:
        return self.interval

    def _beat_key(self, number: int) -> str:
        return f"beat:{self.study_id}:{number}"

    def record_heartbeat(self, number: int) -> None:
        key = self._beat_key(number)
        if number in self._beating:
            self.claims.beat(key)
        else:
            # the first beat takes the claim whoever held it (stale after 0 s); the stale check only reads it
            self.claims.try_claim(key, 0.0)
            self._beating.add(number)

    def end_heartbeat(self, number: int) -> None:
        self._beating.discard(number)
        self.claims.release(self._beat_key(number))

    def fail_stale_trials(self, study: optuna.Study, spare: set[int] = frozenset()) -> None:
        if not self.interval:
            return
        grace = DEFAULT_GRACE_FACTOR * self.interval
        now = time.time()
        beats = {r["key"]: r["heartbeat"] for r in self.claims.rows(f"beat:{self.study_id}:")}
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in spare:
                continue
            last = beats.get(self._beat_key(t.number))
            if last is None:        # taken and not yet beating (or never): judged from its start
                last = t.datetime_start.timestamp() if t.datetime_start else now
            if now - last <= grace:
                continue
            self.requeue(study, t.number, self.max_retry)

    def close(self) -> None:
        self.claims.close()
        if self.closer is not None:
            self.closer()


# --------------------------------------------------------------------------
# the URLs of such storages
# --------------------------------------------------------------------------

def is_plain(url: str | None) -> bool:
    """A journal or gRPC proxy URL (the storages this module serves)."""
    return is_journal(url) or is_grpc(url)


def check_plain(url: str, *, create: bool) -> None:
    """:func:`studies.storage.check_url` for a journal or a proxy: one line when unusable."""
    if is_journal(url):
        check_journal(url, create=create)
    else:
        parse_grpc(url)


def storage_file(url: str) -> Path | None:
    """The journal file of a journal URL (None for a proxy)."""
    return journal_path(url) if is_journal(url) else None


def optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's storage of a journal or proxy URL (the study's claims aside)."""
    if is_journal(url):
        return open_journal(journal_path(url))
    return open_proxy(url)


def open_plain(name: str, url: str, *, create: bool, heartbeat: int | None, max_retry: int,
               owner: str) -> PlainStore:
    """The store of study ``name`` in journal or proxy ``url``; a journal file is created only
    with ``create``."""
    check_plain(url, create=create)
    if is_journal(url):
        path = journal_path(url)
        storage = open_journal(path)
        claims, closer = FileClaims(claims_folder(path), owner), None
    else:
        claims = claims_for(url, owner)
        try:
            storage = open_proxy(url)
        except StorageError:
            claims.close()
            raise
        closer = storage.close
    store = PlainStore(name, url, storage, claims, closer=closer)
    if heartbeat:
        store.arm_heartbeat(heartbeat, max_retry)
    return store


def study_names(url: str) -> list[str]:
    """The studies of a journal or proxy URL ([] when it cannot be read)."""
    try:
        check_plain(url, create=False)
        storage = optuna_storage(url)
    except StorageError:
        return []
    try:
        return sorted(optuna.get_all_study_names(storage=storage))
    finally:
        if is_grpc(url):
            storage.close()
