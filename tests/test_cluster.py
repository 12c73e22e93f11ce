"""What a cluster does to a run: SIGTERM (Slurm, Kubernetes, ``timeout``), a killed worker,
the database failing under a running trial. Each ends in one line and a known exit code, the
running trial is re-queued, and the same command run again finishes the study without
waiting out the heartbeat's grace period.

The studies here beat every 100 s, so a trial left RUNNING would be failed by the heartbeat
check only 300 s later: a rerun that finishes within ``finish``'s 240 s did not wait for it.
The PostgreSQL test starts a private server (``initdb``, ``pg_ctl``) that it may stop; it is
marked ``postgres`` and skipped where the server's programs are not installed.
"""
from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from studies import lineage_counts
from studies.claims import local_process
from studies.storage import sqlite_path
from test_workers import ROOT, finish, launch, slow_trials, trials_of

BEAT = ["--heartbeat", "100"]          # grace period 300 s: longer than a rerun may take here
WAIT = 240                             # s: a loaded 2-core machine takes 10 s to import torch


def wait_running(p: subprocess.Popen, url: str, name: str, numbers: set[int]) -> dict[int, int]:
    """Wait until trials ``numbers`` are RUNNING and sampled, in their slow part (``slow_trials``);
    their workers' pids."""
    deadline = time.time() + WAIT
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.5)
        path = sqlite_path(url)
        if path is not None and not path.exists():      # reading would create it: the command's to make
            continue
        try:
            running = {t.number: t for t in trials_of(url, name)
                       if t.number in numbers and t.state.name == "RUNNING"
                       and (t.params or t.user_attrs.get("preset"))}     # a preset samples nothing
        except Exception:  # noqa: BLE001 - the study may not exist yet
            continue
        if set(running) == numbers:
            time.sleep(1.0)                                  # beating, mid-trial
            return {n: int(t.user_attrs["worker"].rsplit(":", 1)[1]) for n, t in running.items()}
    p.kill()
    pytest.fail(f"trials {sorted(numbers)} never reached their slow part:\n{p.communicate()[0]}")


def gone(pid: int, within: float = 10.0) -> bool:
    """True once ``pid`` is no longer a live process of this machine (waiting up to ``within`` s)."""
    deadline = time.time() + within
    while local_process(f"{socket.gethostname()}:{pid}") and time.time() < deadline:
        time.sleep(0.2)
    return not local_process(f"{socket.gethostname()}:{pid}")


def stopped_output(p: subprocess.Popen, code: int) -> list[str]:
    """The run's exit code is ``code``; its lines other than the trials' own."""
    try:
        out, _ = p.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"the run did not stop in {WAIT} s:\n{p.communicate()[0]}")
    assert p.returncode == code, out
    assert "Traceback" not in out and "leaked" not in out, out
    return [ln for ln in out.splitlines() if ln.strip() and not ln.startswith(("trial ", "[w"))]


def assert_requeued(url: str, name: str, numbers, status: str | None) -> None:
    """Trials ``numbers`` failed (with ``status``), each re-queued once with the same parameters."""
    trials = {t.number: t for t in trials_of(url, name)}
    for n in numbers:
        assert trials[n].state.name == "FAIL" and trials[n].user_attrs.get("status") == status, trials[n]
        (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == n]
        assert retry.params == trials[n].params


# ----------------------------------------------------------------------------- SIGTERM
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_fails_the_trials_as_interrupted_and_stops_the_workers(tmp_path, workers):
    """SIGTERM to `run` (to the launcher only, as `kill`, `timeout` and Kubernetes send it):
    exit 143 and one line; every running trial failed as interrupted and re-queued; no worker
    left running; the same command again finishes the study at once."""
    url, name, n = f"sqlite:///{tmp_path / 'term.db'}", "term", 3
    slow = set(range(workers))                  # every worker in a slow trial when the signal comes
    p = launch(url, name, n, "--workers", str(workers), *BEAT,
               env=slow_trials(tmp_path, ",".join(map(str, slow)), 120), home=tmp_path)
    pids = wait_running(p, url, name, slow)
    p.send_signal(signal.SIGTERM)
    lines = stopped_output(p, 143)
    assert lines == ["terminated (SIGTERM); re-run the same command to resume"]
    assert all(gone(pid) for pid in pids.values()), pids          # the workers stopped with their launcher
    assert_requeued(url, name, slow, "interrupted")
    t0 = time.time()
    finish(launch(url, name, n, *BEAT, home=tmp_path), timeout=WAIT)
    c = lineage_counts(trials_of(url, name))
    assert c["finished"] == c["total"] == n and c["retried"] == workers, c
    assert time.time() - t0 < WAIT


def test_workers_die_with_a_killed_launcher(tmp_path):
    """SIGKILL to the launcher, which cannot pass anything on: its workers get SIGTERM from the
    kernel, fail their trials as interrupted and re-queue them, and are gone."""
    url, name = f"sqlite:///{tmp_path / 'orphans.db'}", "orphans"
    p = launch(url, name, 3, "--workers", "2", *BEAT, env=slow_trials(tmp_path, "0,1", 120), home=tmp_path)
    pids = wait_running(p, url, name, {0, 1})
    p.kill()
    p.communicate(timeout=WAIT)
    assert all(gone(pid, within=60) for pid in pids.values()), pids
    assert_requeued(url, name, {0, 1}, "interrupted")


def test_sigterm_stops_retrain_with_one_line_and_releases_its_claim(tmp_path):
    """SIGTERM during `retrain`: exit 143, one line; the network's claim is released, so the
    same command again retrains it (no "being retrained by" a process that is gone)."""
    url, name = f"sqlite:///{tmp_path / 'rt.db'}", "rt"
    finish(launch(url, name, 2, home=tmp_path))
    hooks, marker = tmp_path / "epoch-hooks", tmp_path / "in-epoch"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SLOW_EPOCHS)
    cmd = [sys.executable, str(ROOT / "search.py"), "retrain", "--study", name, "--storage", url, "--epochs", "3",
           "--no-progress"]
    env = {**os.environ, "STACKNAS_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "SLOW_EPOCH": str(marker),
           "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    deadline = time.time() + WAIT
    while not marker.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.3)
    assert marker.exists(), p.communicate()[0]
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=WAIT)
    assert p.returncode == 143, out
    assert out.strip().splitlines()[-1] == "terminated (SIGTERM); re-run the same command to resume", out
    assert "Traceback" not in out
    env.pop("SLOW_EPOCH")
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=WAIT)
    assert again.returncode == 0 and "being retrained by" not in again.stdout, again.stdout + again.stderr


# Installed in the retrain's process (as test_workers' hook): the first training epoch sleeps,
# after writing SLOW_EPOCH's marker file, so the test signals it mid-epoch.
_SLOW_EPOCHS = """
import json
import os
if os.environ.get("SLOW_EPOCH"):
    import importlib, pathlib, time
    train = importlib.import_module("trainers.train")     # the module; `trainers.train` names its function
    epoch = train._train_epoch

    def slow(*args, **kwargs):
        pathlib.Path(os.environ["SLOW_EPOCH"]).touch()
        time.sleep(120)
        return epoch(*args, **kwargs)
    train._train_epoch = slow
"""


# ----------------------------------------------------------------------------- a killed worker
def test_a_killed_workers_trials_are_requeued_at_once_and_stderr_stays_clean(tmp_path):
    """Both workers SIGKILLed mid-trial after each trained trials: no "leaked semaphore" warning
    (tqdm's default lock is a named semaphore a killed process leaves behind); the next run
    re-queues the dead workers' trials at once, without the 300 s of heartbeat grace."""
    url, name, n = f"sqlite:///{tmp_path / 'killed.db'}", "killed", 5
    p = launch(url, name, n, "--workers", "2", *BEAT, env=slow_trials(tmp_path, "3,4", 120), home=tmp_path)
    pids = wait_running(p, url, name, {3, 4})
    trained = {t.user_attrs.get("worker") for t in trials_of(url, name) if t.state.name == "COMPLETE"}
    assert trained, "no trial was trained before the kill: the semaphore would not exist"
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    out = finish(p, timeout=WAIT)
    assert "leaked" not in out and "resource_tracker" not in out, out
    t0 = time.time()
    finish(launch(url, name, n, *BEAT, home=tmp_path), timeout=WAIT)
    assert_requeued(url, name, {3, 4}, None)        # "lost": failed by the check, not by the worker
    c = lineage_counts(trials_of(url, name))
    assert c["finished"] == c["total"] == n and c["retried"] == 2, c
    assert time.time() - t0 < WAIT


# ----------------------------------------------------------------------------- the database fails
@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
@pytest.mark.parametrize("workers", [1, 2])
def test_sqlite_failing_under_a_running_trial_is_one_line_and_a_rerun_requeues_it(tmp_path, workers):
    """The database file stops taking writes while trials run (a file-size limit of 1 byte put
    on the worker processes from outside: every write that grows a file fails as on a full
    disk, and root is not exempt): exit 2, one line naming the file and the cause (with
    --workers 2, one per worker and the launcher's); the next run re-queues those trials at
    once and finishes."""
    db = tmp_path / "failing.db"
    url, name, n = f"sqlite:///{db}", "failing", 4
    slow = {1} if workers == 1 else {1, 2}           # trial 0 written whole before the failure
    p = launch(url, name, n, "--workers", str(workers), *BEAT,
               env=slow_trials(tmp_path, ",".join(map(str, slow)), 4), home=tmp_path)
    pids = wait_running(p, url, name, slow)
    for pid in pids.values():
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
    cause = f"error: storage {db}: disk I/O error"
    if workers == 1:
        (line,) = stopped_output(p, 2)
        assert line.startswith(cause), line
    else:
        out, _ = p.communicate(timeout=WAIT)
        assert p.returncode == 2 and "Traceback" not in out, out
        said = sorted(ln for ln in out.splitlines() if ln.startswith("[w") and "error:" in ln)
        assert [ln.split(" ", 1)[1][:len(cause)] for ln in said] == [cause, cause], out
        assert out.strip().splitlines()[-1] == ("error: the storage failed under worker(s) 0, 1 (their lines above); "
                                                "re-run the same command once it is back"), out
    t0 = time.time()
    finish(launch(url, name, n, *BEAT, home=tmp_path), timeout=WAIT)
    assert time.time() - t0 < WAIT
    trials = {t.number: t for t in trials_of(url, name)}
    assert trials[0].state.name in ("COMPLETE", "PRUNED")      # nothing else lost
    assert_requeued(url, name, slow, None)          # "lost": nothing could be written for them
    c = lineage_counts(trials.values())
    assert c["finished"] == c["total"] == n and c["retried"] == len(slow), c


def _pg_bin(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{program}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of this test's own, which it may stop: (URL, start, stop). As root
    the server runs as user postgres (it refuses root), in a folder that user can reach."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("initdb / pg_ctl not installed")
    as_user = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no user postgres to run the server")
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser to start the server as user postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = tempfile.TemporaryDirectory(prefix="stacknas-pg-")
    data = Path(folder.name)
    data.chmod(0o755)
    if as_user:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *argv: subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)  # noqa: E731
    made = run(initdb, "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
    if made.returncode:
        pytest.skip(f"initdb failed: {made.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"

    def start():
        r = run(pg_ctl, "-D", str(data / "db"), "-o", opts, "-l", str(data / "log"), "-w", "start")
        assert r.returncode == 0, r.stderr + (data / "log").read_text()

    def stop():
        run(pg_ctl, "-D", str(data / "db"), "-m", "immediate", "-w", "stop")

    start()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", start, stop
    finally:
        stop()
        folder.cleanup()


@pytest.mark.postgres
def test_postgres_stopped_under_a_running_trial_is_one_line_and_a_rerun_requeues_it(tmp_path, private_postgres):
    """The PostgreSQL server stops while trial 1 runs: exit 2, one line naming the server (no
    password) and the cause; once it is back, the next run re-queues trial 1 at once."""
    url, start, stop = private_postgres
    name, n = "pg-" + uuid.uuid4().hex[:6], 3
    p = launch(url, name, n, *BEAT, env=slow_trials(tmp_path, "1", 4), home=tmp_path)
    wait_running(p, url, name, {1})
    stop()
    (line,) = stopped_output(p, 2)
    assert line.startswith(f"error: storage {url}: "), line
    start()
    finish(launch(url, name, n, *BEAT, home=tmp_path), timeout=WAIT)
    trials = {t.number: t for t in trials_of(url, name)}
    assert trials[0].state.name in ("COMPLETE", "PRUNED")
    assert_requeued(url, name, {1}, None)
    c = lineage_counts(trials.values())
    assert c["finished"] == c["total"] == n and c["retried"] == 1, c


def test_sigterm_stops_the_evidence_runner_as_ctrl_c(tmp_path):
    """SIGTERM while benchmarks/evidence.py's study stage trains: exit 143, one line, the trial
    failed as interrupted and re-queued; the same command again completes the stage."""
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "evidence.py"), "--smoke", "--out", str(out), "--work",
           str(work), "--no-progress", "--stages", "study", "--trials", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**env, **slow_trials(tmp_path, "1", 120)})
    url = f"sqlite:///{out / 'study.db'}"
    wait_running(p, url, "evidence", {1})
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=WAIT)
    assert p.returncode == 143, stdout + stderr
    assert stderr.strip().splitlines() == ["evidence: terminated (SIGTERM); re-run the same command to resume"]
    assert_requeued(url, "evidence", {1}, "interrupted")
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=WAIT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((out / "evidence.json").read_text())["stages"]["study"]["status"] == "ok"
