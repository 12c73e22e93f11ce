"""Hundreds of workers in front of one database: Optuna's gRPC storage proxy.

``grpc://HOST:PORT?claims=DATABASE_URL`` runs a study through Optuna's
``GrpcStorageProxy``: every worker talks gRPC to one proxy process
(:func:`serve`, ``search.py proxy``), which alone holds connections to the database and
caches the studies' trials for all of them. The study's claims (:mod:`studies.claims`:
the ticket lock, promotions, retrains and the heartbeats of running trials, which the
proxy does not carry) are taken directly in ``DATABASE_URL``, the database behind the
proxy, through connections opened per claim and closed at once (``NullPool``), so an
idle worker holds none.
"""
from __future__ import annotations

import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import optuna
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from .claims import RDBClaims
from .storage import StorageError, check_url, driver_url, quiet_optuna, redact_url

__all__ = ["CLAIMS_APPLICATION", "DEFAULT_PORT", "claims_for", "is_grpc", "open_proxy", "parse_grpc", "serve"]

DEFAULT_PORT = 13000        # Optuna's default for its proxy
_REACH_TIMEOUT = 10         # seconds to reach the proxy
CLAIMS_APPLICATION = "stacknas-claims"     # application_name of the claims' PostgreSQL connections
_EXAMPLE = "grpc://HOST:PORT?claims=postgresql://USER:PASSWORD@DBHOST/DB"


def is_grpc(url: str | None) -> bool:
    return bool(url) and url.startswith("grpc:")


def parse_grpc(url: str) -> tuple[str, int, str]:
    """``(host, port, claims database URL)`` of ``grpc://HOST:PORT?claims=URL``."""
    m = re.fullmatch(r"grpc://([^:/?]+):(\d{1,5})/?\?claims=(.+)", url)
    if not m:
        raise StorageError(f"storage {redact_url(url)!r}: a gRPC proxy URL is {_EXAMPLE} (claims: the database "
                           f"behind the proxy, where the study's claims and heartbeats are kept)")
    host, port, claims = m.group(1), int(m.group(2)), m.group(3)
    if not 0 < port < 65536:
        raise StorageError(f"storage {redact_url(url)!r}: port {port} is not a TCP port (1-65535)")
    if claims.startswith(("grpc:", "journal:")):
        raise StorageError(f"storage {redact_url(url)!r}: claims= names the database behind the proxy "
                           f"(postgresql://..., mysql://...)")
    return host, port, claims


def open_proxy(url: str) -> optuna.storages.GrpcStorageProxy:
    """A client of the proxy of ``url``, checked to answer within 10 s (one line if not)."""
    host, port, _ = parse_grpc(url)
    with warnings.catch_warnings():                # "experimental" since Optuna 4.2: not news to a user
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        proxy.wait_server_ready(timeout=_REACH_TIMEOUT)
    except Exception:  # noqa: BLE001 - grpc.FutureTimeoutError and connection errors alike
        proxy.close()
        raise StorageError(f"cannot reach the gRPC storage proxy at {host}:{port} within {_REACH_TIMEOUT} s "
                           f"(start it with: python search.py proxy --storage DATABASE_URL --port {port})") from None
    return proxy


def claims_for(url: str, owner: str) -> RDBClaims:
    """The study's claims in the database behind the proxy (checked first), without a pool:
    a worker holds a connection only while it claims."""
    _, _, claims = parse_grpc(url)
    check_url(claims, create=False)
    # named in PostgreSQL's pg_stat_activity, so that an administrator sees whose connections they are
    named = {"connect_args": {"application_name": CLAIMS_APPLICATION}} if claims.startswith("postgres") else {}
    return _NullPoolClaims(sa.create_engine(driver_url(claims), poolclass=NullPool, **named), owner)


class _NullPoolClaims(RDBClaims):
    """:class:`RDBClaims` on an engine of its own, disposed on close."""

    def close(self) -> None:
        self.engine.dispose()


def serve(storage_url: str, host: str = "0.0.0.0", port: int = DEFAULT_PORT, threads: int = 10) -> None:
    """Run the proxy for database ``storage_url`` until stopped (Ctrl-C, SIGTERM): Optuna's
    ``run_grpc_proxy_server`` over its cached RDB storage, ``threads`` requests at a time
    (each holds at most one database connection)."""
    quiet_optuna()
    check_url(storage_url, create=False)
    storage = optuna.storages.get_storage(driver_url(storage_url))
    optuna.storages.run_grpc_proxy_server(storage, host=host, port=port,
                                          thread_pool=ThreadPoolExecutor(max_workers=threads))
