#!/usr/bin/env python
"""What Optuna's gRPC storage proxy changes for K workers on one PostgreSQL database.

K worker processes share one study, each taking trials the way ``studies.worker`` does
(the ticket lock, a new RUNNING trial, a heartbeat, 16 sampled parameters, the trial's
attributes in one write, ``tell``) and "training" each for ``--train`` seconds (a sleep:
the database sees what it would see from a study whose trials take that long). Run twice
on a database of its own (``stacknas_bench``, created in the server of ``STACKNAS_PG_URL``):

* ``direct``: the workers open ``postgresql://`` (Optuna's RDB storage, the project's
  claims in the same pool);
* ``proxy``: ``search.py proxy`` in front of the same database, the workers open
  ``grpc://127.0.0.1:PORT?claims=postgresql://...``.

Reported per mode: the connections to the database (``pg_stat_activity``, sampled every
0.1 s from the moment every worker has opened the study to the moment the first one is
done: median and max; the proxy's own included, the claims' own apart), the storage
seconds per trial (everything but the sleep: median and max over all trials), wall
seconds, and the load average (``os.getloadavg``) before and after. RandomSampler: the
figures are the storage's, not TPE's. Writes ``benchmarks/results/bench_grpc-<UTC>.json``::

    STACKNAS_PG_URL=postgresql://postgres@127.0.0.1:5432/stacknas python benchmarks/bench_grpc.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState, create_trial

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studies.grpc_proxy import CLAIMS_APPLICATION  # noqa: E402 - after the checkout is on the path
from studies.storage import driver_url, open_store, quiet_optuna  # noqa: E402

BENCH_DB = "stacknas_bench"


def worker(url: str, name: str, target: int, train: float, out: str, seed: int) -> None:
    """One worker process: trials until the study holds ``target``; each trial's storage seconds to ``out``."""
    quiet_optuna()
    owner = f"{socket.gethostname()}:{os.getpid()}"
    store = open_store(name, url, heartbeat=60, max_retry=1, owner=owner)
    study = store.study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.get_trials(deepcopy=False)
    Path(out + ".ready").touch()          # the connections are counted while every worker is at work
    rng, times = random.Random(seed), []
    while True:
        t0 = time.perf_counter()
        with store.claims.lock(f"{name}:ticket-lock"):
            if len(study.get_trials(deepcopy=False)) >= target:
                break
            trial_id = store.storage.create_new_trial(store.study_id, create_trial(
                state=TrialState.RUNNING, user_attrs={"ticket": True, "worker": owner}))
        study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        trial = optuna.Trial(study, trial_id)
        store.record_heartbeat(trial.number)
        for i in range(16):
            trial.suggest_int(f"p{i}", 0, 10)
        store.write_trial(trial.number, {f"a{i}": rng.random() for i in range(10)})
        taken = time.perf_counter() - t0
        time.sleep(train)
        t1 = time.perf_counter()
        study.tell(trial, [rng.random(), rng.random()])
        store.end_heartbeat(trial.number)
        times.append(taken + time.perf_counter() - t1)
    store.close()
    Path(out).write_text(json.dumps(times))


def _connections(watch: sa.engine.Engine) -> tuple[int, int]:
    """Connections to the benchmark's database now (this one aside): all, and the claims' own."""
    with watch.connect() as conn:
        row = conn.execute(sa.text("SELECT count(*), count(*) FILTER (WHERE application_name = :a) "
                                   "FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                           {"d": BENCH_DB, "a": CLAIMS_APPLICATION}).first()
    return int(row[0]), int(row[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(mode: str, db_url: str, args, tmp: Path) -> dict:
    name = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    proxy = None
    url = db_url
    if mode == "proxy":
        port = _free_port()
        proxy = subprocess.Popen([sys.executable, str(ROOT / "search.py"), "proxy", "--storage", db_url,
                                  "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"grpc://127.0.0.1:{port}?claims={db_url}"
    try:
        store = open_store(name, url, create=True, owner="bench:0")
        store.create_study(["maximize", "minimize"])
        store.close()
        watch = sa.create_engine(driver_url(db_url), poolclass=sa.pool.NullPool)
        samples, stop = [], threading.Event()

        outs = [tmp / f"{mode}-{i}.json" for i in range(args.workers)]

        def sample():
            # only while every worker is at work: from the last one ready to the first one done
            while not stop.wait(0.1):
                if all(Path(f"{o}.ready").exists() for o in outs) and not any(o.exists() for o in outs):
                    samples.append(_connections(watch))
        load_before = [round(x, 2) for x in os.getloadavg()]
        t0 = time.perf_counter()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, name, str(args.trials), str(args.train),
                                   str(o), str(i)], cwd=ROOT) for i, o in enumerate(outs)]
        codes = [p.wait() for p in procs]
        stop.set()
        sampler.join()
        wall = time.perf_counter() - t0
        if any(codes):
            raise SystemExit(f"{mode}: a worker failed: {codes}")
        times = [t for o in outs for t in json.loads(o.read_text())]
        study = optuna.load_study(study_name=name, storage=driver_url(db_url))
        finished = sum(t.state == TrialState.COMPLETE for t in study.get_trials())
        optuna.delete_study(study_name=name, storage=driver_url(db_url))
        watch.dispose()
        return {"mode": mode, "workers": args.workers, "trials": finished, "wall_seconds": round(wall, 1),
                "connections": {"median": statistics.median(a for a, _ in samples), "max": max(a for a, _ in samples),
                                "claims_median": statistics.median(c for _, c in samples),
                                "claims_max": max(c for _, c in samples), "samples": len(samples)},
                "storage_seconds_per_trial": {"median": round(statistics.median(times), 4),
                                              "max": round(max(times), 4), "n": len(times)},
                "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, name, target, train, out, seed = sys.argv[2:8]
        worker(url, name, int(target), float(train), out, int(seed))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--trials", type=int, default=160, help="trials of the study (shared by the workers)")
    p.add_argument("--train", type=float, default=0.5, help="seconds each trial 'trains' (a sleep)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    base = os.environ.get("STACKNAS_PG_URL")
    if not base:
        raise SystemExit("set STACKNAS_PG_URL (a PostgreSQL server; the benchmark creates database stacknas_bench)")
    server = sa.engine.make_url(driver_url(base))
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": BENCH_DB}).first():
            conn.execute(sa.text(f"CREATE DATABASE {BENCH_DB}"))
    admin.dispose()
    db_url = server.set(database=BENCH_DB).render_as_string(hide_password=False)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_grpc-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = [run_mode(m, db_url, args, tmp) for m in ("direct", "proxy")]
    for r in results:
        print(json.dumps(r))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"bench_grpc-{stamp}.json"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out.write_text(json.dumps({"results": results, "settings": vars(args), "commit": commit,
                               "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                        "optuna": optuna.__version__}}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
