"""Workers through Optuna's gRPC storage proxy (``grpc://HOST:PORT?claims=DATABASE_URL``): the
URL refused in one line when malformed or when no proxy answers, and a worker's claims holding
no database connection between claims. (Exact trial counts and a killed worker's retry through
the proxy: tests/test_workers.py, conftest's ``storage``; the measurement: benchmarks/bench_grpc.py.)"""
from __future__ import annotations

import uuid

import optuna
import pytest
import sqlalchemy as sa

import studies
from conftest import TINY_RUN, free_port, refusal
from studies import grpc_proxy as proxy_module
from studies.grpc_proxy import CLAIMS_APPLICATION
from studies.plain_store import open_plain

@pytest.mark.parametrize("url, fragment", [
    ("grpc://127.0.0.1:13000", "a gRPC proxy URL is grpc://HOST:PORT?claims="),
    ("grpc://127.0.0.1?claims=postgresql://u@h/db", "a gRPC proxy URL is"),
    ("grpc://127.0.0.1:70000?claims=postgresql://u@h/db", "port 70000 is not a TCP port"),
    ("grpc://127.0.0.1:13000?claims=journal:///x.log", "claims= names the database behind the proxy"),
])
def test_a_malformed_proxy_url_is_one_line(url, fragment, tmp_path, monkeypatch):
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path))
    err = refusal("run", "--study", "g", "--storage", url, "--trials", "1", *TINY_RUN)
    assert fragment in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_proxy_url_shows_without_its_database_password():
    url = "grpc://node7:13000?claims=postgresql://nas:s3cret@db.cluster/studies"
    assert studies.redact_url(url) == "grpc://node7:13000?claims=postgresql://nas:***@db.cluster/studies"


def test_no_proxy_at_the_address_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(proxy_module, "_REACH_TIMEOUT", 1)
    url = f"grpc://127.0.0.1:{free_port()}?claims=sqlite:///{tmp_path / 'claims.db'}"
    sa.create_engine(f"sqlite:///{tmp_path / 'claims.db'}").connect().close()
    err = refusal("show", "--study", "g", "--storage", url)
    assert "cannot reach the gRPC storage proxy at 127.0.0.1:" in err and "search.py proxy" in err, err


def test_a_proxy_lost_while_in_use_is_a_storage_failure_in_one_line():
    """A proxy that goes away mid-run raises grpc's RpcError from the worker's next storage call:
    it stops the worker as a database failure does (exit 2, one line), not as a bug in a trial."""
    grpc = pytest.importorskip("grpc")

    class Unavailable(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "failed to connect to all addresses\nipv4:127.0.0.1:13000: Connection refused"

    url = "grpc://127.0.0.1:13000?claims=postgresql://nas:s3cret@db/studies"
    assert studies.storage.is_storage_failure(Unavailable())
    assert not studies.storage.is_storage_failure(ValueError("a bug in a trial"))
    with pytest.raises(studies.StorageError) as e:
        with studies.storage.storage_errors(url):
            raise Unavailable()
    assert "the proxy did not answer (UNAVAILABLE: failed to connect" in str(e.value)
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError):                 # anything else passes through untouched
        with studies.storage.storage_errors(url):
            raise ValueError("a bug in a trial")


@pytest.mark.postgres
def test_a_worker_through_the_proxy_holds_no_database_connection_between_claims(grpc_proxy):
    """The study and its trials go through the proxy; the claims connect, claim, and close."""
    port, pg = grpc_proxy
    url, name = f"grpc://127.0.0.1:{port}?claims={pg}", "g-" + uuid.uuid4().hex[:8]
    store = open_plain(name, url, create=True, heartbeat=1, max_retry=1, owner="test:1")
    watcher = sa.create_engine(studies.storage.driver_url(pg))
    try:
        store.create_study(["maximize", "minimize"])
        assert store.claims.try_claim(f"{name}:k", 60)
        with store.claims.lock(f"{name}:lock"):
            pass
        with watcher.connect() as conn:
            held = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a "
                                        "AND pid <> pg_backend_pid()"), {"a": CLAIMS_APPLICATION}).scalar()
        assert held == 0
        assert store.claims.holder(f"{name}:k")["owner"] == "test:1"
    finally:
        store.claims.release(f"{name}:k")
        store.close()
        watcher.dispose()
        optuna.delete_study(study_name=name, storage=pg)
