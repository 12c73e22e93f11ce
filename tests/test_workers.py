"""Several workers on one study: exactly N trials, and a SIGKILLed worker's
trial failed by heartbeat, retried and finished, while a live worker's trial is never
failed for a late heartbeat - on SQLite, PostgreSQL, a journal file and the gRPC proxy
(conftest's ``storage``).

PostgreSQL tests (the proxy's too) are marked ``postgres`` and need ``STACKNAS_PG_URL`` (a
database the tests may create studies in, e.g.
``postgresql://postgres@127.0.0.1:5432/stacknas``); without it they are skipped.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import studies
from conftest import load_study
from studies import lineage_counts

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--budget", "60k", "--tolerance", "0.1", "--synthetic", "--synthetic-images", "64",
        "--synthetic-image-size", "8", "--proxy-hparams", '{"batch_size": 32}', "--device", "cpu",
        "--rungs", "1", "--heartbeat", "1", "--no-progress"]


# Installed in every process of a launch (workers are spawned, so a monkeypatch in the test
# process would not reach them): trials SLOW_TRIALS=N1,N2:SECONDS sleep after sampling, with
# their heartbeat running, so a test can kill a worker mid-trial. Production code has no hook.
_SLOW_TRIALS = """
import os
if os.environ.get("SLOW_TRIALS"):
    import time
    import studies.objective as objective
    numbers, _, seconds = os.environ["SLOW_TRIALS"].rpartition(":")
    numbers = {int(n) for n in numbers.split(",")}
    sampled = objective.spec_for_trial

    def slow(trial, ctx):
        try:
            return sampled(trial, ctx)
        finally:                        # pruned or not: the parameters are sampled by now
            if trial.number in numbers:
                time.sleep(float(seconds))
    objective.spec_for_trial = slow
"""


def slow_trials(home: Path, numbers: str, seconds: float) -> dict:
    """Environment that makes trials ``numbers`` (e.g. "0" or "0,3") of a launch sleep ``seconds``."""
    hooks = home / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(_SLOW_TRIALS)
    path = os.pathsep.join([str(hooks), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {"SLOW_TRIALS": f"{numbers}:{seconds}", "PYTHONPATH": path}


def launch(url: str, name: str, trials: int, *extra: str, env: dict | None = None, home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "search.py"), "run", "--study", name, "--storage", url,
         "--trials", str(trials), *TINY, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "STACKNAS_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})})


def finish(p: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        pytest.fail(f"run did not finish in {timeout}s:\n{out}")
    assert p.returncode == 0, out
    return out


def trials_of(url: str, name: str):
    return load_study(url, name).get_trials()


def test_two_processes_finish_exactly_n_trials(storage, tmp_path):
    """Two `run` commands started together (as on two machines) share the study:
    exactly N trials, numbered 0..N-1, each evaluated once."""
    url, name = storage
    n = 5
    procs = [launch(url, name, n, "--seed", str(i), home=tmp_path) for i in range(2)]
    outs = [finish(p) for p in procs]
    trials = trials_of(url, name)
    assert sorted(t.number for t in trials) == list(range(n)), outs
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), [(t.number, t.state) for t in trials]
    assert lineage_counts(trials) == {"total": n, "finished": n, "retried": 0,
                                      **{s: sum(t.state.name == s for t in trials) for s in
                                         {t.state.name for t in trials}}}
    reported = [line.split(":")[0] for out in outs for line in out.splitlines() if line.startswith("trial ")]
    assert sorted(reported) == sorted(f"trial {i}" for i in range(n))      # no trial evaluated twice


def test_killed_worker_trial_is_retried(storage, tmp_path):
    """--workers 2; trial 0 sleeps and its worker is SIGKILLed: the heartbeat fails it,
    the retry (same parameters) is run by the other worker, and the study still ends
    with N finished trials."""
    url, name = storage
    n = 3
    p = launch(url, name, n, "--workers", "2", env=slow_trials(tmp_path, "0", 120), home=tmp_path)
    deadline, pid = time.time() + 120, None
    while time.time() < deadline and pid is None and p.poll() is None:
        time.sleep(0.5)
        try:
            t0 = [t for t in trials_of(url, name) if t.number == 0]
        except (KeyError, Exception):  # noqa: BLE001 - the study may not exist yet
            continue
        if t0 and t0[0].state.name == "RUNNING" and t0[0].user_attrs.get("worker"):
            pid = int(t0[0].user_attrs["worker"].rsplit(":", 1)[1])
    assert pid is not None, "trial 0 never started"
    time.sleep(1.5)                       # beating, mid-trial
    os.kill(pid, signal.SIGKILL)
    out = finish(p)
    trials = trials_of(url, name)
    by = {t.number: t for t in trials}
    assert by[0].state.name == "FAIL", (pid, out, [(t.number, t.state.name, t.user_attrs) for t in trials])
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1, out
    r = retries[0]
    assert r.state.name in ("COMPLETE", "PRUNED") and r.params == by[0].params
    assert len(trials) == n + 1 and sorted(by) == list(range(n + 1))
    c = lineage_counts(trials)
    assert c["finished"] == c["total"] == n and c["retried"] == 1
    assert "worker 0 exited with -9" in out or "worker 1 exited with -9" in out
    df = studies.trials_table(load_study(url, name))
    assert df.loc[0, "status"] == "lost" and f"retried as trial {r.number}" in df.loc[0, "fail_reason"]
    assert df.loc[r.number, "retried_from"] == 0


def test_ctrl_c_fails_the_trial_as_interrupted_and_a_rerun_finishes(tmp_path):
    """SIGINT while trial 1 trains: it is failed as "interrupted" and re-queued with the same
    parameters; the same command run again finishes the requested total."""
    url, name, n = f"sqlite:///{tmp_path / 'int.db'}", "interrupted", 3
    p = launch(url, name, n, env=slow_trials(tmp_path, "1", 60), home=tmp_path)
    deadline = time.time() + 240                     # a loaded 2-core machine: imports alone take 10 s
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.5)
        try:
            t1 = [t for t in trials_of(url, name) if t.number == 1]
        except Exception:  # noqa: BLE001 - the study may not exist yet
            continue
        if t1 and t1[0].state.name == "RUNNING" and t1[0].params:   # sampled: in its slow part now
            break
    else:                                            # not a Ctrl-C at some other moment: say so
        p.kill()
        pytest.fail(f"trial 1 never reached its slow part:\n{p.communicate()[0]}")
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    trials = {t.number: t for t in trials_of(url, name)}
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["status"] == "interrupted", out
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == 1]
    assert retry.state.name == "WAITING" and retry.params == trials[1].params
    finish(launch(url, name, n, home=tmp_path))
    c = lineage_counts(trials_of(url, name))
    assert c["finished"] == c["total"] == n and c["retried"] == 1


def test_the_stale_check_spares_a_live_worker_of_this_machine(storage):
    """Three RUNNING trials whose heartbeats went silent past the grace period (as a loaded
    machine can starve a heartbeat thread): the one whose worker is a live process here is
    not failed, its heartbeat renewed; the ones of a dead process here and of a process on
    another machine are failed and retried."""
    from optuna.trial import TrialState, create_trial

    from studies.config import RunOptions, StudySettings
    from studies.session import Session
    from studies.storage import open_store
    from studies.worker import fail_stale_trials

    url, name = storage
    store = open_store(name, url, create=True, owner=f"{socket.gethostname()}:{os.getpid()}")
    try:
        study = store.create_study(["maximize", "minimize"])
        options = RunOptions(study=name, trials=3, budget="60k", synthetic=True, heartbeat=1)
        settings = StudySettings.from_options(options, "cpu")
        settings.save(study)
        session = Session.resolve(store, settings, "cpu")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        workers = [f"{socket.gethostname()}:{os.getpid()}", f"{socket.gethostname()}:{dead.pid}", "elsewhere:4242"]
        for w in workers:
            trial_id = store.storage.create_new_trial(store.study_id, create_trial(
                state=TrialState.RUNNING, user_attrs={"ticket": True, "worker": w}))
            store.record_heartbeat(store.storage.get_trial(trial_id).number)
        time.sleep(3 * 1 + 1.5)                        # past the grace period of 3 beats of 1 s
        fail_stale_trials(session)
        trials = trials_of(url, name)
        assert [t.state.name for t in trials[:3]] == ["RUNNING", "FAIL", "FAIL"]
        assert sorted(t.system_attrs.get("failed_trial") for t in trials[3:]) == [1, 2]
        assert all(t.state.name == "WAITING" for t in trials[3:])
    finally:
        store.close()


def test_a_trial_whose_preparation_stops_the_worker_stops_beating(tmp_path, monkeypatch):
    """The database refuses a write while a trial is prepared: the worker stops with one line
    and the trial's heartbeat thread stops with it (it went on beating, for a trial already
    failed, in the process that called ``run``)."""
    import sqlite3
    import threading

    import sqlalchemy as sa

    from studies import objective

    def full(trial, ctx):
        raise sa.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full"))
    monkeypatch.setattr(objective, "prepare", full)
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path))
    before = set(threading.enumerate())
    with pytest.raises(studies.StorageError, match="database or disk is full"):
        studies.run("leak", 2, storage=f"sqlite:///{tmp_path / 'leak.db'}", budget="60k", tolerance=0.1,
                    synthetic=True, synthetic_images=64, synthetic_image_size=8, device="cpu", rungs=1,
                    heartbeat=1, progress=False, say=lambda m: None)
    time.sleep(0.2)
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive() and t.name != "tqdm_monitor"]
    assert left == []
