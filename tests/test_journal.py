"""A study in a journal file (``journal:///ABS/PATH/NAME.log``): the claims contract, held alike
by the database's claims and the files beside a journal; promotions and retrains done once
by processes sharing a journal; optuna-dashboard opening it; bad journal paths refused in one
line with nothing created. (Exact trial counts and a killed worker's retry: tests/test_workers.py,
on every storage.)"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

import studies
from conftest import ROOT, TINY_RUN, free_port, load_study, refusal
from studies.claims import RDBClaims
from studies.file_claims import FileClaims

TINY = [*TINY_RUN, "--heartbeat", "1"]


# ----------------------------------------------------------------------------- the claims contract

@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "files"])
def claims_of(request, tmp_path):
    """``claims_of(owner)``: the claims of one backend as process ``owner`` sees them."""
    made = []
    if request.param == "files":
        def make(owner):
            return FileClaims(tmp_path / "c.claims", owner)
    else:
        url = f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else os.environ.get("STACKNAS_PG_URL")
        if not url:
            pytest.skip("STACKNAS_PG_URL is not set")

        def make(owner):
            engine = sa.create_engine(studies.storage.driver_url(url))
            made.append(engine)
            return RDBClaims(engine, owner)
    prefix = uuid.uuid4().hex[:8] + ":"          # PostgreSQL's table is shared by the runs
    yield lambda owner: make(owner), prefix
    for e in made:
        e.dispose()


def _dead_owner() -> str:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return f"{socket.gethostname()}:{p.pid}"


def test_one_of_many_concurrent_claimants_wins(claims_of):
    make, prefix = claims_of
    owners = [make(f"elsewhere:{i}") for i in range(8)]
    for k in range(3):
        key, won, go = f"{prefix}race{k}", [], threading.Barrier(len(owners))

        def claim(c):
            go.wait()
            if c.try_claim(key, 60):
                won.append(c.owner)
        threads = [threading.Thread(target=claim, args=(c,)) for c in owners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        assert owners[0].holder(key)["owner"] == won[0]


def test_a_claim_is_taken_over_only_when_stale_dead_or_released_and_never_when_done(claims_of):
    make, prefix = claims_of
    a, b = make("host-a:1"), make("host-b:2")
    key = prefix + "job"
    assert a.try_claim(key, 60) and not b.try_claim(key, 60)
    assert not b.try_claim(key, 0.5)                # fresh: 0.5 s not yet past
    time.sleep(0.7)
    b.beat(key)                                     # not b's claim: changes nothing
    assert b.try_claim(key, 0.5) and b.holder(key)["owner"] == "host-b:2"
    before = b.holder(key)["heartbeat"]
    time.sleep(0.05)
    b.beat(key)
    assert b.holder(key)["heartbeat"] > before
    a.release(key)                                  # not a's claim any more: stays b's
    assert b.holder(key)["owner"] == "host-b:2"
    b.release(key)
    assert b.holder(key) is None and a.try_claim(key, 60)
    a.finish(key)
    time.sleep(0.05)
    assert not b.try_claim(key, 0.0) and a.holder(key)["done"]
    dead = make(_dead_owner())
    assert dead.try_claim(prefix + "orphan", 60)
    assert a.try_claim(prefix + "orphan", 60)      # its process is gone: taken over at once
    assert sorted(r["key"] for r in a.rows(prefix)) == [prefix + "job", prefix + "orphan"]
    assert a.rows(prefix + "j")[0]["owner"] == "host-a:1"


def test_a_lock_excludes_other_owners(claims_of, tmp_path):
    make, prefix = claims_of
    counter = tmp_path / "counter"
    counter.write_text("0")

    def add(c):
        for _ in range(10):
            with c.lock(prefix + "lock", poll=0.01):
                n = int(counter.read_text())
                time.sleep(0.002)                  # a read-modify-write that would lose counts unlocked
                counter.write_text(str(n + 1))
    threads = [threading.Thread(target=add, args=(make(f"elsewhere:{i}"),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "30"


# ----------------------------------------------------------------------------- studies on a journal

def _launch(*args: str, home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "search.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "STACKNAS_HOME": str(home), "OMP_NUM_THREADS": "1"})


def _out(p: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"did not finish in {timeout}s:\n{p.communicate()[0]}")
    return p.returncode, out


@pytest.fixture(scope="module")
def journal_study(tmp_path_factory):
    """Two `run` launches sharing a journal, with promotions (two rungs): (url, name, home, outputs)."""
    home = tmp_path_factory.mktemp("jhome")
    url, name = f"journal://{home / 'shared.log'}", "j"
    procs = [_launch("run", "--study", name, "--storage", url, "--trials", "6", *TINY, "--rungs", "2",
                     "--seed", str(i), home=home) for i in range(2)]
    outs = [_out(p) for p in procs]
    assert all(rc == 0 for rc, _ in outs), outs
    return url, name, home, [o for _, o in outs]


def test_two_launches_on_a_journal_promote_each_trial_once(journal_study):
    url, name, _, outs = journal_study
    trials = load_study(url, name).get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    promoted = studies.fidelity_results(load_study(url, name).user_attrs)
    lines = collections.Counter(m.group(1) for o in outs for m in re.finditer(r"trial (\d+) promoted to", o))
    assert promoted and all(len(v) == 1 for v in promoted.values())    # one higher rung each
    assert sorted(int(n) for n in lines) == sorted(promoted) and set(lines.values()) == {1}, outs


def test_two_retrains_of_a_journal_study_retrain_each_network_once(journal_study):
    url, name, home, _ = journal_study
    procs = [_launch("retrain", "--study", name, "--storage", url, "--epochs", "1", "--no-progress", home=home)
             for _ in range(2)]
    outs = [_out(p) for p in procs]
    started = collections.Counter(m.group(1) for _, o in outs for m in re.finditer(r"trial (\d+): .* - retrain ",
                                                                                    o, re.M))
    attrs = load_study(url, name).user_attrs
    done = {k for k, v in attrs.items() if k.startswith("retrain:") and v.get("status") == "ok"}
    assert started and set(started.values()) == {1}, outs
    assert {int(k.split(":")[1]) for k in done} == {int(n) for n in started}
    rc, out = _out(_launch("export", "--study", name, "--storage", url, "--best", "--out", str(home / "exp"),
                           home=home))
    assert rc == 0 and (home / "exp" / "weights.pt").is_file(), out


def test_show_and_optuna_dashboard_read_a_journal(journal_study):
    url, name, home, _ = journal_study
    rc, out = _out(_launch("show", "--study", name, "--storage", url, home=home))
    assert rc == 0 and f"study '{name}': 6 trials" in out, out
    port = free_port()
    path = url[len("journal://"):]
    cli = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which("optuna-dashboard")
    assert cli, "optuna-dashboard is not installed (pip install -e '.[test]')"
    p = subprocess.Popen([cli, path, "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None and p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = json.load(r)
            except OSError:
                time.sleep(0.3)
        assert body is not None, p.stdout.read1().decode() if p.poll() is not None else "no answer"
        assert [s["study_name"] for s in body["study_summaries"]] == [name]
    finally:
        p.terminate()
        p.wait(timeout=30)


# ----------------------------------------------------------------------------- bad journal paths

@pytest.mark.parametrize("path, fragment", [
    ("journal://rel/x.log", "must be absolute"),
    ("journal:/x.log", "a journal URL is journal:///"),
    ("journal://{tmp}/missing/x.log", "does not exist"),
    ("journal://{tmp}/", "name a journal file"),
])
def test_a_bad_journal_path_is_one_line_and_creates_nothing(path, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path / "home"))
    before = sorted(tmp_path.rglob("*"))
    err = refusal("run", "--study", "b", "--storage", path.format(tmp=tmp_path), "--trials", "1", *TINY)
    assert fragment in err, err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_folder_whose_filesystem_cannot_lock_is_refused(tmp_path, monkeypatch):
    """A filesystem without symbolic links (some SMB and FUSE mounts): the journal's lock cannot
    hold there; refused before anything is written."""
    def no_symlinks(*a, **k):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "symlink", no_symlinks)
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path / "home"))
    err = refusal("run", "--study", "b", "--storage", f"journal://{tmp_path}/b.log", "--trials", "1", *TINY)
    assert "cannot hold its lock" in err and "Operation not permitted" in err, err
    assert list(tmp_path.iterdir()) == []


def test_reading_a_journal_that_is_not_there_is_one_line(tmp_path):
    err = refusal("show", "--study", "b", "--storage", f"journal://{tmp_path}/none.log")
    assert err == f"error: no study journal at {tmp_path}/none.log (check --study / --storage)"
    assert list(tmp_path.iterdir()) == []
