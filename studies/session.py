"""The session: a study resolved once by ``run`` and handed to its workers.

``run`` checks the storage, the device and the data, creates or resumes the study and
settles its settings (:class:`~studies.config.StudySettings`, the budget as an int). What
came out of that is one :class:`Session`: the study's name and storage URL, its settings,
the device, the description of the data the proxies train on, and, in the process that
resolved it, the storage opened once (:class:`~studies.storage.Store`: the study loaded
once, its claims, heartbeats armed). The worker loop, the promotions and the objective
take the session instead of opening the storage or reading the settings again.

A session is pickled to the worker processes ``run --workers K`` spawns: the resolved
facts travel, the open storage does not (a database connection belongs to one process);
each process opens the storage on first use, once, and loads its dataset once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from .claims import worker_name
from .config import StudySettings
from .storage import Store, open_store

__all__ = ["Session"]


@dataclass
class Session:
    """A resolved study. ``data`` is the dataset description the proxies train on:
    ``settings.data`` with its folder on this machine (``run --data``)."""

    name: str
    url: str
    settings: StudySettings
    device: str
    data: dict
    progress: bool = True
    # per process, never pickled: the open storage, the dataset, small caches of the workers
    _store: Store | None = field(default=None, repr=False, compare=False)
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def resolve(cls, store: Store, settings: StudySettings, device: str, data_root: str | None = None,
                progress: bool = True) -> "Session":
        """The session of ``store``'s study, whose ``settings`` were just settled; arms the
        store's heartbeats (the storage stays the one opened to settle them)."""
        data = dict(settings.data)
        if data_root and data.get("kind") != "synthetic":
            data["root"] = data_root
        store.arm_heartbeat(settings.heartbeat_interval, settings.max_retry)
        return cls(store.name, store.url, settings, device, data, progress, _store=store)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"], state["_memo"] = None, {}
        return state

    @property
    def store(self) -> Store:
        """The study's storage in this process, opened on first use with heartbeats."""
        if self._store is None:
            self._store = open_store(self.name, self.url, heartbeat=self.settings.heartbeat_interval,
                                     max_retry=self.settings.max_retry, owner=worker_name())
        return self._store

    @property
    def study(self) -> optuna.Study:
        """The study, loaded once in this process (one cache of its trials)."""
        return self.store.study()

    @property
    def owner(self) -> str:
        """``host:pid`` of this process: what its claims and trials name."""
        return self.store.claims.owner

    @property
    def image_size(self) -> int:
        return self.settings.image_size

    @property
    def num_classes(self) -> int:
        return self.settings.num_classes

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """A per-process value of this session (the dataset, an index of the trials), made
        by ``make()`` on first use."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
