"""Optuna's RDB storage, read in bulk and written in batches.

Optuna's :class:`~optuna.storages.RDBStorage` builds every trial it reads through the
SQLAlchemy ORM, one object per parameter, value and attribute, and parses each
parameter's distribution twice: reading a 5,000-trial study (80,000 parameters, 60,000
attributes) takes about 11 CPU seconds on a 2-core machine, and every process that looks
at a study pays it. It writes each trial attribute and each sampled parameter in its own
transaction (on a loaded machine's disk, 15-30 ms a commit on SQLite). Both are what this
module changes, and only that:

* :class:`BulkRDBStorage` reads trials with one plain query per table over the same
  tables, each distinct distribution parsed once (about 8x less CPU). It replaces
  ``RDBStorage._get_trials``, the one method Optuna's per-process trial cache
  (``_CachedStorage``) calls with the trials it still needs (the new ones and the
  unfinished ones), so a process reads the study in full once and then incrementally.
* :meth:`BulkRDBStorage.set_trial_attrs` writes any number of a trial's user and system
  attributes in one transaction, through Optuna's own per-attribute upsert.
* What the sampler writes while it samples a trial (each parameter, TPE's shared relative
  parameters) and the trial's system attributes (its constraints) are held in this
  process until :meth:`BulkRDBStorage.flush`, the trial's next attribute write or its
  ``tell``, and then written in one transaction. This process reads them back at once (its
  reads merge them in); other processes see them at the flush, which the objective makes
  as soon as sampling ends. A worker that dies before that leaves a trial without
  parameters, which its retry samples afresh.

Both rely on parts of Optuna's RDB storage that are not public, gathered (with why) in one
function, :func:`_optuna_rdb`. Everything else is Optuna's RDBStorage unchanged, and
``tests/test_scale.py`` checks that a bulk read equals Optuna's own, field by field.
"""
from __future__ import annotations

import datetime
import functools
import json
import threading
from types import SimpleNamespace
from typing import Any, Container, Sequence

import optuna
import sqlalchemy as sa
from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

__all__ = ["BulkRDBStorage"]

_IN_LIMIT = 500          # unfinished trials named in one IN (...); more are filtered in Python


@functools.cache
def _optuna_rdb() -> SimpleNamespace:
    """The parts of Optuna's RDB storage this module uses that are not its public API, and why.

    Optuna's public API reads a trial only as ORM objects, one per parameter, value and
    attribute (11 CPU seconds for a 5,000-trial study, paid by every process that looks at
    it), and writes each attribute in a transaction of its own. Reading the same tables in
    bulk and writing a trial's rows in one transaction takes:

    * ``models``: its table definitions and the decoding of its stored values
      (``optuna.storages._rdb.models``), so that the bulk read reads exactly what it stores;
    * ``session``: its transaction helper (commit or rollback, errors raised as Optuna's);
    * ``set_param`` and ``set_attr``: its own upsert of one parameter or attribute row,
      without the commit, so that several run in one transaction.

    :class:`BulkRDBStorage` also overrides two of its private methods, ``_get_trials`` (what
    its per-process trial cache calls for the trials it needs) and ``_set_trial_param`` (what
    ``set_trial_param`` calls). ``tests/test_scale.py`` compares the bulk read with Optuna's
    field by field and counts the transactions, so an Optuna release that changes these
    fails there first."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import RDBStorage, _create_scoped_session
    return SimpleNamespace(models=models, session=_create_scoped_session,
                           set_param=RDBStorage._set_trial_param_without_commit,
                           set_attr=RDBStorage._set_trial_attr_without_commit)


class _Loads:
    """``json.loads`` for the values Optuna stored with ``json.dumps`` (no surrounding blanks
    to skip), a value that is not a container parsed once per read: a study repeats many
    (a status, a device, a family)."""

    _decode = json.JSONDecoder().raw_decode

    def __init__(self):
        self.seen: dict[str, Any] = {}

    def __call__(self, text: str) -> Any:
        try:
            return self.seen[text]
        except KeyError:
            value = self._decode(text)[0]
            if not isinstance(value, (dict, list)):     # immutable: safe to share
                self.seen[text] = value
            return value


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """Optuna stores naive UTC and hands out naive local time (``TrialModel.datetime_start``)."""
    return None if utc is None else utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


class BulkRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage with a bulk trial reader and batched trial writes."""

    _dists: dict[str, distributions.BaseDistribution]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._held_lock = threading.Lock()
        # trial id -> {"params": [(name, internal value, distribution, previous distribution)],
        #              "system": {key: value}}: written at the trial's next flush
        self._held: dict[int, dict] = {}

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_held_lock", None)
        state["_held"] = {}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._held_lock = threading.Lock()

    # ---------------------------------------------------------------- held writes

    def _hold(self, trial_id: int) -> dict:
        return self._held.setdefault(trial_id, {"params": [], "system": {}})

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: distributions.BaseDistribution,
                         previous_distribution: distributions.BaseDistribution | None) -> None:
        with self._held_lock:
            self._hold(trial_id)["params"].append((param_name, param_value_internal, distribution,
                                                   previous_distribution))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._held_lock:
            self._hold(trial_id)["system"][key] = value

    def _take_held(self, trial_id: int) -> dict | None:
        with self._held_lock:
            return self._held.pop(trial_id, None)

    def _write_held(self, session, trial_id: int, held: dict | None) -> None:
        if not held:
            return
        rdb = _optuna_rdb()
        for name, value, dist, previous in held["params"]:
            rdb.set_param(self, session, trial_id, name, value, dist, previous)
        for key, value in held["system"].items():
            rdb.set_attr(self, session, rdb.models.TrialSystemAttributeModel, trial_id, key, value)

    def _merge_held(self, trial: FrozenTrial, trial_id: int) -> FrozenTrial:
        """``trial`` (a fresh copy, storage id ``trial_id``) with this process's held writes."""
        with self._held_lock:
            held = self._held.get(trial_id)
            if held:
                for name, value, dist, _ in held["params"]:
                    trial.params[name] = dist.to_external_repr(value)
                    trial.distributions[name] = dist
                trial.system_attrs.update(held["system"])
        return trial

    def flush(self, trial_id: int) -> None:
        """Write what is held for ``trial_id`` (its parameters, system attributes), one transaction."""
        self.set_trial_attrs(trial_id)

    def set_trial_attrs(self, trial_id: int, user_attrs: dict | None = None, system_attrs: dict | None = None) -> None:
        """Write ``user_attrs`` and ``system_attrs`` of a running trial, with what is held for
        it, in one transaction (Optuna's ``set_trial_user_attr`` commits each one on its own)."""
        held = self._take_held(trial_id)      # a write that fails loses them, as a worker that dies would
        if not held and not user_attrs and not system_attrs:
            return
        rdb = _optuna_rdb()
        with rdb.session(self.scoped_session, True) as session:
            self._write_held(session, trial_id, held)
            for model, attrs in ((rdb.models.TrialUserAttributeModel, user_attrs or {}),
                                 (rdb.models.TrialSystemAttributeModel, system_attrs or {})):
                for key, value in attrs.items():
                    rdb.set_attr(self, session, model, trial_id, key, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.set_trial_attrs(trial_id, {key: value})

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        self.flush(trial_id)
        return super().set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.flush(trial_id)
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._merge_held(super().get_trial(trial_id), trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        attrs = super().get_trial_system_attrs(trial_id)
        with self._held_lock:
            attrs.update(self._held.get(trial_id, {}).get("system", {}))
        return attrs

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        with self._held_lock:
            for name, value, _, _ in reversed(self._held.get(trial_id, {}).get("params", [])):
                if name == param_name:
                    return value
        return super().get_trial_param(trial_id, param_name)

    # ---------------------------------------------------------------- bulk reads

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        """The study's user attributes: one plain query, each value parsed once per process
        while it is unchanged (a worker reads them before every trial, and a study holds an
        attribute per promotion). The values are shared between calls: do not change them."""
        models = _optuna_rdb().models
        a = models.StudyUserAttributeModel.__table__
        parsed = self.__dict__.setdefault("_study_attrs", {})
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(a.c.key, a.c.value_json).where(a.c.study_id == study_id)).all()
            if not rows:
                s = models.StudyModel.__table__
                if conn.execute(sa.select(s.c.study_id).where(s.c.study_id == study_id)).first() is None:
                    raise KeyError(models.NOT_FOUND_MSG)
        out = {}
        for key, text in rows:
            seen = parsed.get((study_id, key))
            if seen is None or seen[0] != text:
                seen = parsed[(study_id, key)] = (text, json.loads(text))
            out[key] = seen[1]
        return out

    def _distribution(self, text: str) -> distributions.BaseDistribution:
        cache = self.__dict__.setdefault("_dists", {})
        d = cache.get(text)
        if d is None:
            d = cache[text] = distributions.json_to_distribution(text)
        return d

    def _get_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        """What Optuna's ``RDBStorage._get_trials`` returns, read in bulk (:meth:`read_trials`)."""
        return self.read_trials(study_id, states, included_trial_ids, trial_id_greater_than)

    def read_trials(self, study_id: int, states: Container[TrialState] | None = None,
                    included_trial_ids: Container[int] = (), trial_id_greater_than: int = -1, *,
                    params: bool = True) -> list[FrozenTrial]:
        """The trials of ``study_id`` in ``states`` (None: all) whose id is above
        ``trial_id_greater_than`` or in ``included_trial_ids`` (those at most that bound), by
        id. Without ``params`` their parameters are left out (empty), which is what readers
        of results need: a parameter is a sixth of a trial's rows and half the time."""
        models = _optuna_rdb().models
        included = sorted(i for i in included_trial_ids if i <= trial_id_greater_than)
        t = models.TrialModel.__table__
        where = [t.c.study_id == study_id]
        if states is not None:
            where.append(t.c.state.in_(list(states)))
        if trial_id_greater_than > -1:
            if not included:
                where.append(t.c.trial_id > trial_id_greater_than)
            elif len(included) <= _IN_LIMIT:
                # a union, not an OR: an OR makes SQLite walk the study's whole index (2.5 ms at
                # 5,000 trials, against 0.2 ms), and the sampler refreshes the cache ~20 times a trial
                where.append(t.c.trial_id.in_(sa.union_all(
                    sa.select(t.c.trial_id).where(t.c.trial_id > trial_id_greater_than),
                    sa.select(t.c.trial_id).where(t.c.trial_id.in_(included)))))
            else:
                where.append(t.c.trial_id >= included[0])
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start,
                                          t.c.datetime_complete).where(*where).order_by(t.c.trial_id)).all()
            if included and len(included) > _IN_LIMIT:
                keep = set(included)
                rows = [r for r in rows if r.trial_id > trial_id_greater_than or r.trial_id in keep]
            if not rows:
                s = models.StudyModel.__table__          # none: Optuna raises for a study that is not there
                if conn.execute(sa.select(s.c.study_id).where(s.c.study_id == study_id)).first() is None:
                    raise KeyError(models.NOT_FOUND_MSG)
                return []

            # a few trials (a refresh: the new and the unfinished ones) are named; a study's worth
            # is selected again (naming thousands would exceed what a statement may carry)
            chosen = [r.trial_id for r in rows] if len(rows) <= _IN_LIMIT else sa.select(t.c.trial_id).where(*where)

            def children(model, *cols):
                c = model.__table__.c
                key = next(iter(model.__table__.primary_key.columns))
                return conn.execute(sa.select(c.trial_id, *(c[x] for x in cols))
                                    .where(c.trial_id.in_(chosen)).order_by(key)).all()

            params = children(models.TrialParamModel, "param_name", "param_value", "distribution_json") \
                if params else []
            values = children(models.TrialValueModel, "objective", "value", "value_type")
            user = children(models.TrialUserAttributeModel, "key", "value_json")
            system = children(models.TrialSystemAttributeModel, "key", "value_json")
            inter = children(models.TrialIntermediateValueModel, "step", "intermediate_value",
                             "intermediate_value_type")
        ids = {r.trial_id for r in rows}
        loads = _Loads()
        ps: dict[int, dict] = {}
        ds: dict[int, dict] = {}
        for tid, name, value, dist_json in params:
            if tid in ids:
                d = self._distribution(dist_json)
                ps.setdefault(tid, {})[name] = d.to_external_repr(value)
                ds.setdefault(tid, {})[name] = d
        vs: dict[int, dict] = {}
        for tid, objective, value, kind in values:
            vs.setdefault(tid, {})[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
        us: dict[int, dict] = {}
        for tid, key, value_json in user:
            us.setdefault(tid, {})[key] = loads(value_json)
        ss: dict[int, dict] = {}
        for tid, key, value_json in system:
            ss.setdefault(tid, {})[key] = loads(value_json)
        iv: dict[int, dict] = {}
        for tid, step, value, kind in inter:
            iv.setdefault(tid, {})[step] = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                value, kind)
        out = []
        for r in rows:
            i = r.trial_id
            vals = vs.get(i)
            out.append(self._merge_held(FrozenTrial(
                number=r.number, state=r.state, value=None,
                values=[vals[k] for k in range(len(vals))] if vals else None,
                datetime_start=_local(r.datetime_start), datetime_complete=_local(r.datetime_complete),
                params=ps.get(i, {}), distributions=ds.get(i, {}), user_attrs=us.get(i, {}),
                system_attrs=ss.get(i, {}), intermediate_values=iv.get(i, {}), trial_id=i), i))
        return out

    def arm_heartbeat(self, interval: int, grace_period: int, callback) -> None:
        """Heartbeats for running trials, set once the study's stored settings are known
        (the same fields ``RDBStorage.__init__`` sets, so the storage is opened only once)."""
        self.heartbeat_interval, self.grace_period = int(interval), int(grace_period)
        self.heartbeat_stale_trial_callback = self.failed_trial_callback = callback
