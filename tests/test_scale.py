"""A study of thousands of trials: read once, written in a few transactions, resolved once.

* the bulk reader returns exactly what Optuna's own RDB reader returns, and a refresh only
  the trials asked for;
* what sampling writes is held and written in one transaction, visible at once to this
  process; a trial's results go to the database in a few transactions, not one per
  attribute, and a worker that dies between them leaves nothing a reader needs half-written;
* ``run`` resolves one session (the storage opened once) that its workers take, pickled to
  spawned ones; the sampler sees every finished trial even when the next trial is prepared
  on another thread;
* ``show``, ``dashboard`` and the retrain's selection read the trials once, ``show`` without
  importing torch.

Timings are not tested here: ``benchmarks/bench_scale.py`` measures them.
"""
from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

import studies
from studies import rdb, worker
from studies.claims import Claims, RDBClaims
from studies.config import StudySettings
from studies.session import Session
from studies.storage import open_store

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(budget="60k", tolerance=0.1, synthetic=True, synthetic_images=64, synthetic_image_size=8,
            proxy_hparams={"batch_size": 32}, device="cpu", rungs=1, progress=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'scale.db'}"
    pg = os.environ.get("STACKNAS_PG_URL")
    if not pg:
        pytest.skip("STACKNAS_PG_URL is not set (a PostgreSQL database for the tests)")
    return pg


def _varied_study(url: str, name: str) -> optuna.Study:
    """Trials of every state with every kind of field Optuna stores."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    dists = {"c": CategoricalDistribution(["a", "b", None]), "f": FloatDistribution(1e-3, 1.0, log=True),
             "i": IntDistribution(1, 9, step=2), "g": FloatDistribution(0.0, 1.0, step=0.25)}
    for k in range(12):
        params = {"c": ["a", "b", None][k % 3], "f": 10 ** -(k % 3), "i": 1 + 2 * (k % 5), "g": 0.25 * (k % 5)}
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING][k % 4]
        values = [0.1 * k, math.inf if k == 4 else 1e6 * k] if state == TrialState.COMPLETE else None
        chosen = {n: params[n] for n in list(params)[: 1 + k % 4]}
        study.add_trial(create_trial(state=state, values=values, params=chosen,
                                     distributions={n: dists[n] for n in chosen},
                                     user_attrs={"k": k, "spec": '{"stages": []}', "nested": {"a": [1, 2.5, None]}},
                                     system_attrs={"constraints:budget": 0.1 * k, "failed_trial": k - 1} if k else {}))
    running = study.ask()                                    # a RUNNING trial with a parameter
    running.suggest_int("i", 1, 9, step=2)
    running.set_user_attr("worker", "h:1")
    return study


def test_the_bulk_reader_returns_what_optuna_reads(url):
    name = "bulk-" + uuid.uuid4().hex[:8]
    _varied_study(url, name)
    try:
        ours, theirs = rdb.BulkRDBStorage(url), optuna.storages.RDBStorage(url)
        sid = theirs.get_study_id_from_name(name)
        want = theirs.get_all_trials(sid, deepcopy=False)
        got = ours.get_all_trials(sid, deepcopy=False)
        assert got == want and [list(t.params) for t in got] == [list(t.params) for t in want]
        # a refresh as Optuna's cache asks for it: the new trials and the unfinished ones named
        ids = [t._trial_id for t in want]
        assert ours._get_trials(sid, None, {ids[3], ids[7]}, ids[9]) == \
            theirs._get_trials(sid, None, {ids[3], ids[7]}, ids[9])
        states = (TrialState.COMPLETE, TrialState.RUNNING)
        assert ours.get_all_trials(sid, deepcopy=False, states=states) == \
            theirs.get_all_trials(sid, deepcopy=False, states=states)
        bare = ours.read_trials(sid, params=False)
        assert [t.params for t in bare] == [{}] * len(want)
        assert [(t.number, t.state, t.values, t.user_attrs, t.system_attrs) for t in bare] == \
            [(t.number, t.state, t.values, t.user_attrs, t.system_attrs) for t in want]
        assert ours.get_study_user_attrs(sid) == theirs.get_study_user_attrs(sid)
        with pytest.raises(KeyError):
            ours.read_trials(sid + 1000)
    finally:
        optuna.delete_study(study_name=name, storage=url)


class _Writes:
    """Counts, per committed transaction, the tables it wrote."""

    def __init__(self):
        self.transactions: list[set[str]] = []
        self._open: dict[int, set[str]] = {}

    def __enter__(self):
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._statement)
        sa.event.listen(sa.engine.Engine, "commit", self._commit)
        return self

    def __exit__(self, *exc):
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", self._statement)
        sa.event.remove(sa.engine.Engine, "commit", self._commit)

    def _statement(self, conn, cursor, statement, params, context, executemany):
        words = statement.split()
        if words and words[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            table = words[2] if words[0].upper() in ("INSERT", "DELETE") else words[1]
            self._open.setdefault(id(conn.connection.dbapi_connection), set()).add(table.strip('"'))

    def _commit(self, conn):
        tables = self._open.pop(id(conn.connection.dbapi_connection), None)
        if tables:
            self.transactions.append(tables)

    def touching(self, table: str) -> int:
        return sum(table in t for t in self.transactions)


def test_sampling_writes_are_held_and_written_in_one_transaction(tmp_path):
    url = f"sqlite:///{tmp_path / 'held.db'}"
    store = open_store("held", url, create=True, owner="h:1")
    study = store.create_study(["maximize", "minimize"])
    trial = study.ask()
    with _Writes() as w:
        for k in range(6):
            trial.suggest_int(f"p{k}", 0, 10)
        trial.set_constraint("budget", 0.0)
        # this process sees them at once; another one not until the flush
        assert store.storage.get_trial(trial._trial_id).params == trial.params
        assert set(study.get_trials(deepcopy=False)[0].params) == {f"p{k}" for k in range(6)}
        assert optuna.load_study(study_name="held", storage=url).trials[0].params == {}
        store.write_trial(trial.number, {"spec": "{}", "params": 123})
    assert len(w.transactions) == 1 and {"trial_params", "trial_system_attributes",
                                         "trial_user_attributes"} <= w.transactions[0]
    seen = optuna.load_study(study_name="held", storage=url).trials[0]
    assert seen.params == trial.params and seen.constraints == {"budget": 0.0} and seen.user_attrs["params"] == 123
    store.close()


_TRIAL_TABLES = {"trials", "trial_params", "trial_values", "trial_user_attributes", "trial_system_attributes",
                 "trial_heartbeats", "trial_intermediate_values"}


def test_a_trials_results_take_a_few_transactions(home):
    """A whole study of 4 trials. A trained trial's rows are written in 6 transactions: created
    RUNNING with its ticket and worker, its first heartbeat, its sampled parameters, its
    measurements (with its budget constraint), its proxy's figures, its state and values; a
    pruned one or a duplicate (nothing trained) in 5, a failed one in 7 (its reason apart).
    (Optuna writes one transaction per attribute and per parameter: about 45 a trial.) Taking
    the trial under the ticket lock adds 2 transactions of the claims table."""
    with _Writes() as w:
        counts = studies.run("batched", 4, seed=4, say=lambda m: None, **TINY)
    trials = studies.open_study("batched").get_trials()
    assert counts["finished"] == 4 and any(t.state == TrialState.COMPLETE for t in trials)
    writes = {TrialState.COMPLETE: 6, TrialState.PRUNED: 5, TrialState.FAIL: 7}
    want = sum(5 if "duplicate_of" in t.user_attrs else writes[t.state] for t in trials)
    assert sum(bool(tables & _TRIAL_TABLES) for tables in w.transactions) == want
    n = len(trials)
    assert w.touching("trial_user_attributes") <= 3 * n
    assert w.touching("trial_params") <= n
    assert w.touching("trial_values") == sum(t.state == TrialState.COMPLETE for t in trials)
    assert all(len(t.user_attrs) >= 10 for t in trials if t.state == TrialState.COMPLETE)


_DIE = r"""
import os, sys
import studies, studies.rdb as rdb
marker, presets = sys.argv[3], sys.argv[4:]
write = rdb.BulkRDBStorage.set_trial_attrs
def dying(self, trial_id, user_attrs=None, system_attrs=None):
    write(self, trial_id, user_attrs, system_attrs)
    # the worker dies right after this write: the one that wrote attribute `marker`, or for
    # "params" the first one without attributes (the sampled parameters held while sampling)
    if marker in (user_attrs or {}) or (marker == "params" and not user_attrs):
        os._exit(9)
rdb.BulkRDBStorage.set_trial_attrs = dying
studies.run(sys.argv[1], 1, storage=sys.argv[2], enqueue_presets=presets or None, heartbeat=1, say=print,
            budget="60k", tolerance=0.1, synthetic=True, synthetic_images=64, synthetic_image_size=8,
            proxy_hparams={"batch_size": 32}, device="cpu", rungs=1, progress=False)
"""


def _die(name: str, url: str, after: str, *presets: str) -> None:
    p = subprocess.run([sys.executable, "-c", _DIE, name, url, after, *presets], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert p.returncode == 9, p.stdout + p.stderr


@pytest.mark.parametrize("after", ["spec", "val_accuracy"])
def test_a_worker_dying_between_its_writes_leaves_nothing_half_written(home, tmp_path, after):
    """The worker is killed right after the trial's measurements are written ("spec") or
    right after its proxy's figures ("val_accuracy"), before its state: the trial stays
    RUNNING, readers count it as no network, and the next worker fails it as lost and
    retries it to completion; no COMPLETE trial ever lacks what a reader needs."""
    url, name = f"sqlite:///{tmp_path / 'die.db'}", "die-" + after.replace("_", "")
    _die(name, url, after, "resnet-20")
    dead = studies.read_study(name, url)
    (t,) = dead.get_trials()
    assert t.state == TrialState.RUNNING and after in t.user_attrs
    assert dead.summary()["networks"] == 0 and not dead.table()["pareto"].any()

    studies.run(name, 1, storage=url, heartbeat=1, device="cpu", progress=False, say=lambda m: None)
    snap = studies.read_study(name, url)
    lost, retry = snap.get_trials()
    assert lost.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == lost.number and retry.user_attrs["preset"] == "resnet-20"
    table = snap.table()
    assert table.loc[lost.number, "status"] == "lost" and f"retried as trial {retry.number}" in \
        table.loc[lost.number, "fail_reason"]
    row = table.loc[retry.number]
    assert row["state"] == "COMPLETE" and row["pareto"] and row["params"] == 269_722
    assert all(k in retry.user_attrs for k in ("spec", "architecture", "val_accuracy", "inference_bytes_per_image",
                                               "proxy_seconds", "status"))
    assert snap.summary()["networks"] == 1 and snap.summary()["pareto"] == [retry.number]


def test_a_worker_dying_after_the_sampled_parameters_leaves_them_to_its_retry(home, tmp_path):
    """Killed right after the first write of a sampled trial's own (its parameters, held while
    TPE sampled them): the trial is RUNNING with its parameters and nothing else, no network;
    its retry takes the same parameters and finishes."""
    url, name = f"sqlite:///{tmp_path / 'die.db'}", "die-params"
    _die(name, url, "params")
    (t,) = studies.open_study(name, url).get_trials()
    assert t.state == TrialState.RUNNING and t.params and "spec" not in t.user_attrs
    assert studies.read_study(name, url).summary()["networks"] == 0

    studies.run(name, 1, storage=url, heartbeat=1, device="cpu", progress=False, say=lambda m: None)
    lost, retry = studies.open_study(name, url).get_trials()
    assert lost.state == TrialState.FAIL and retry.system_attrs["failed_trial"] == lost.number
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED) and retry.params == lost.params
    assert "spec" in retry.user_attrs and retry.user_attrs["status"] in ("ok", "infeasible")


def test_run_resolves_one_session_that_its_workers_take(home, monkeypatch):
    opened = []
    real = studies.storage.open_store

    def counting(*a, **k):
        opened.append(a[0])
        return real(*a, **k)
    for module in ("launch", "session"):
        monkeypatch.setattr(f"studies.{module}.open_store", counting)
    taken = []
    work = worker.work
    monkeypatch.setattr("studies.launch.work", lambda session, opts, **k: taken.append(session) or work(session, opts, **k))
    studies.run("once", 2, seed=1, say=lambda m: None, **TINY)
    assert opened == ["once"]                                   # the storage opened once for the whole run
    (session,) = taken
    assert isinstance(session.settings.budget, int) and session.settings.budget == 60_000
    assert session.device == "cpu" and session.data["kind"] == "synthetic"
    # pickled to a spawned worker: the resolved facts travel, the open storage does not
    copy = pickle.loads(pickle.dumps(session))
    assert copy._store is None and copy.settings == session.settings and copy.data == session.data
    assert copy.store.study().study_name == "once" and copy.store.storage.get_heartbeat_interval() == 60
    copy.close()


def test_the_sampler_sees_trials_finished_while_it_waited_on_another_thread(tmp_path):
    """A trial prepared ahead is sampled on another thread than the one that tells; Optuna
    refreshes a sampler's view of the trials only on the thread that asks or tells."""
    url = f"sqlite:///{tmp_path / 'view.db'}"
    store = open_store("view", url, create=True, owner="h:1")
    study = store.create_study(["maximize", "minimize"])
    settings = StudySettings.from_options(studies.RunOptions(study="view", trials=9, **TINY), "cpu")
    settings.save(study)
    session = Session.resolve(store, settings, "cpu")
    seen = []

    class Spy(optuna.samplers.RandomSampler):
        def infer_relative_search_space(self, study, trial):
            seen.append(len(study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)))
            return {}
    study.sampler = Spy(seed=0)

    def take():
        trial_id = store.storage.create_new_trial(store.study_id, create_trial(state=TrialState.RUNNING))
        taken = worker._Taken(session, trial_id, False)
        taken.trial.suggest_int("x", 0, 3)                      # the sampler runs at the first suggestion
        taken.close()
    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as ahead:   # as the worker prepares ahead
        ahead.submit(take).result()
        for k in range(3):
            study.add_trial(create_trial(values=[0.1 * k, 1.0 + k]))
        ahead.submit(take).result()
        ahead.submit(take).result()
    assert seen == [0, 3, 3]
    store.close()


def test_a_new_trial_is_known_to_the_workers_cache(tmp_path):
    """A trial created under the ticket lock can take parameters at once, even from a sampler
    that reads no trials before it suggests (Optuna's cache maps only trials it has read)."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    store = open_store("new", url, create=True, owner="h:1")
    study = store.create_study(["maximize", "minimize"])
    settings = StudySettings.from_options(studies.RunOptions(study="new", trials=2, **TINY), "cpu")
    settings.save(study)
    study.set_user_attr(worker.TARGET_ATTR, 2)
    session = Session.resolve(store, settings, "cpu")
    study.sampler = optuna.samplers.RandomSampler(seed=0)
    taken = worker._Taken(session, *worker._take_trial(session))
    assert 0 <= taken.trial.suggest_int("x", 0, 3) <= 3 and taken.trial.user_attrs["ticket"]
    taken.close()
    store.close()


def test_claims_are_an_interface_with_an_rdb_implementation(tmp_path):
    assert {m for m in Claims.__abstractmethods__} == {"try_claim", "holder", "beat", "finish", "release", "rows"}
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'claims.db'}")
    a, b = RDBClaims(engine, "h:1"), RDBClaims(engine, "h:2")
    assert a.try_claim("k", 60) and not b.try_claim("k", 60) and a.holder("k")["owner"] == "h:1"
    a.finish("k")
    assert [r["done"] for r in b.rows("k")] == [1] and not b.try_claim("k", 0)


def _reads(monkeypatch) -> list:
    """Full reads of a study's trials (refreshes of a process's cache not counted)."""
    calls = []
    real = rdb.BulkRDBStorage.read_trials

    def counting(self, study_id, states=None, included_trial_ids=(), trial_id_greater_than=-1, **k):
        if trial_id_greater_than == -1:
            calls.append(k.get("params", True))
        return real(self, study_id, states, included_trial_ids, trial_id_greater_than, **k)
    monkeypatch.setattr(rdb.BulkRDBStorage, "read_trials", counting)
    return calls


@pytest.fixture(scope="module")
def small(home):
    studies.run("readers", 3, seed=2, say=lambda m: None, **TINY)
    return "readers"


@pytest.mark.parametrize("command, params", [("show", False), ("dashboard", True)])
def test_readers_read_the_trials_once(small, home, monkeypatch, command, params, capsys):
    """Once; ``show`` without the sampled parameters, the page with them (its importance and
    parallel coordinates are over the sampled choices)."""
    import search
    calls = _reads(monkeypatch)
    args = ["--out", str(home / "r.html")] if command == "dashboard" else []
    assert search.main([command, "--study", small, *args]) == 0
    assert calls == [params], capsys.readouterr().err


def test_the_retrain_selection_reads_the_trials_once(small, monkeypatch):
    from studies.retrain import retrain_targets
    calls = _reads(monkeypatch)
    snap = studies.read_study(small)
    assert retrain_targets(snap) and calls == [False]


@pytest.mark.parametrize("command", ["show", "dashboard"])
def test_readers_start_without_torch(small, home, command):
    """show and the page name and draw networks from their specs: PyTorch (2-3 s) is never imported."""
    args = ", '--out', 'r.html'" if command == "dashboard" else ""
    code = (f"import sys, search; rc = search.main(['{command}', '--study', 'readers'{args}]); "
            "sys.exit(rc or 100 * ('torch' in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=home, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "STACKNAS_HOME": str(home)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "study 'readers': 3 trials" in p.stdout or "3 networks scored" in p.stdout, p.stdout