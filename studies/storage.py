"""Where a study lives: the data home, storage URLs and the storage, opened once.

* :func:`data_home` - the folder of default study databases, retrain runs,
  results and dashboards: ``$STACKNAS_HOME``, else ``./studies-data`` in the
  working directory. Outside the package on purpose: an installed package's
  folder may be read-only or shared, and a study belongs to the project a
  researcher runs it from (like ``./mlruns``); ``STACKNAS_HOME`` pins one
  place for every command and worker.
* :func:`resolve_url` - ``--storage`` or the default ``sqlite:///<home>/NAME.db``.
* :func:`open_store` - a :class:`Store`: the checked URL, Optuna's RDB storage
  (:class:`studies.rdb.BulkRDBStorage`: read in bulk, written in batches; with
  heartbeats for workers), the study's claims (:mod:`studies.claims`, in the same
  database) and the study itself, loaded once per process so that its trials are
  read in full once and then incrementally. A malformed URL, a missing driver or
  an unreachable server is a one-line :class:`StorageError`.

Besides relational (SQLAlchemy) URLs, ``journal:///ABS/PATH/NAME.log`` (Optuna's journal
file on a shared filesystem, :mod:`studies.journal`) and ``grpc://HOST:PORT?claims=URL``
(Optuna's gRPC storage proxy, :mod:`studies.grpc_proxy`) open a
:class:`studies.plain_store.PlainStore`: the same :class:`Store` through Optuna's public
storage API, its heartbeats kept in the study's claims (neither storage has Optuna's).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from .claims import Claims, RDBClaims
from .rdb import BulkRDBStorage

__all__ = ["DEFAULT_GRACE_FACTOR", "DamagedStorage", "Store", "StorageError", "database_error", "is_storage_failure",
           "proxy_error", "quiet_optuna", "storage_errors", "check_name", "data_home", "default_url", "home_relative", "in_home",
           "driver_url", "list_study_names", "open_existing", "open_store", "redact_url", "resolve_url", "sqlite_path",
           "storage_file"]

DEFAULT_GRACE_FACTOR = 3    # a trial silent for this many heartbeat intervals is failed (and retried)
_CONNECT_TIMEOUT = 10       # seconds to reach a database server
HOME_ENV = "STACKNAS_HOME"


class StorageError(ValueError):
    """The storage URL cannot be used; the message is one line and says why."""


class DamagedStorage(StorageError):
    """The study's SQLite file exists but is not a readable SQLite database."""


def quiet_optuna() -> None:
    """Optuna's per-trial logging and experimental-feature warnings would bury our own lines."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")
    warnings.filterwarnings("ignore", message=".*constraint value is ignored.*")


# --------------------------------------------------------------------------
# names, folders, URLs
# --------------------------------------------------------------------------

def data_home() -> Path:
    """``$STACKNAS_HOME`` or ``./studies-data``, absolute (spawned workers share it)."""
    return Path(os.environ.get(HOME_ENV) or "studies-data").expanduser().resolve()


def home_relative(path: str | Path) -> str:
    """``path`` as a study stores it: relative to :func:`data_home` when inside it (so a data home
    copied or moved elsewhere still finds its files), else absolute."""
    path = Path(path).absolute()
    try:
        return path.relative_to(data_home()).as_posix()
    except ValueError:
        return str(path)


def in_home(stored: str | Path) -> Path:
    """The file a study's stored path names on this machine: a relative path under :func:`data_home`;
    an absolute one (stored by earlier versions) under this data home when it names a ``runs/``
    folder that is here (the home was copied or moved), else as stored."""
    path = Path(stored).expanduser()
    if not path.is_absolute():
        return data_home() / path
    parts = path.parts
    if "runs" in parts:
        here = data_home().joinpath(*parts[len(parts) - 1 - parts[::-1].index("runs"):])
        if here.exists():
            return here
    return path


def check_name(name: str) -> str:
    """A study name that can name a file: letters, digits, '.', '_', '-', at most 100 characters."""
    if not name or len(name) > 100 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        shown = name if len(name or "") <= 40 else name[:37] + "..."
        raise StorageError(f"study name {shown!r}: use 1-100 letters, digits, '.', '_' or '-' "
                           f"(it names the default database file)")
    return name


def default_url(name: str) -> str:
    return f"sqlite:///{data_home() / (name + '.db')}"


def resolve_url(name: str, storage: str | None) -> str:
    """``storage`` as given, or the default SQLite file of study ``name``."""
    check_name(name)
    return storage if storage else default_url(name)


def redact_url(url: str | None) -> str:
    """The URL with any password replaced by ``***`` (for messages)."""
    # the password runs to the "@" (a gRPC URL's claims= database too; a "/" or "?" in a
    # password is percent-encoded)
    return re.sub(r"(//[^:/@?]+:)[^@/?]*@", r"\1***@", url or "")


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory ones)."""
    m = re.match(r"sqlite(\+\w+)?:///(.*)$", url)
    if not m:
        return None
    path = m.group(2).split("?")[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _one_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None)  # sqlalchemy wraps the driver's error
    text = str(orig if orig is not None else e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def driver_url(url: str) -> str:
    """``postgresql://`` (or ``postgres://``) with the PostgreSQL driver that is installed:
    psycopg 3 (SQLAlchemy 2.1's default) or psycopg2. Other URLs unchanged."""
    m = re.match(r"(postgresql|postgres)://", url)
    if not m:
        return url
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return dialect + url[len(m.group(1)):]
    return "postgresql" + url[len(m.group(1)):]


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # several worker processes write to one file: wait for the lock instead of failing
        return {"connect_args": {"timeout": 60}}
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "mysql")):
        kwargs["connect_args"] = {"connect_timeout": _CONNECT_TIMEOUT}
    return kwargs


def check_url(url: str, *, create: bool) -> None:
    """Parse ``url`` and connect once; raise :class:`StorageError` (one line) when that fails.
    A SQLite file that does not exist is created only with ``create``."""
    if _plain().is_plain(url):
        return _plain().check_plain(url, create=create)
    shown = redact_url(url)
    url = driver_url(url)
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - sqlalchemy.exc.ArgumentError and friends
        raise StorageError(f"storage URL {shown!r} is not a database URL; use e.g. sqlite:///path/NAME.db "
                           f"or postgresql://USER:PASSWORD@HOST/DB") from None
    path = sqlite_path(url)
    if parsed.get_backend_name() == "sqlite" and (path is None or "mode=memory" in url):
        raise StorageError(f"storage {shown!r} is in memory; a study must outlive the process: use a file, "
                           f"e.g. sqlite:///path/NAME.db")
    if parsed.get_backend_name() == "sqlite" and path is not None:
        if not create and not path.exists():
            raise StorageError(f"no study database at {path} (check --study / --storage)")
        if create and not path.parent.is_dir():
            raise StorageError(f"cannot create {path}: folder {path.parent} does not exist")
        if create and not path.exists():
            # connecting would create the file: a check leaves nothing behind
            if not os.access(path.parent, os.W_OK):
                raise StorageError(f"cannot create {path}: folder {path.parent} is not writable")
            return
    try:
        engine = sa.create_engine(url, **_engine_kwargs(url))
    except ImportError as e:
        hint = ""
        if parsed.get_backend_name() == "postgresql":
            hint = " (pip install 'psycopg[binary]', or psycopg2-binary for postgresql+psycopg2://)"
        raise StorageError(f"storage {shown}: database driver missing: {_one_line(e)}{hint}") from None
    except Exception as e:  # noqa: BLE001 - unknown dialect, bad arguments
        raise StorageError(f"storage URL {shown!r} cannot be used: {_one_line(e)}") from None
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - OperationalError: unreachable, refused, auth, no such db
        raise StorageError(f"cannot connect to storage {shown}: {_one_line(e)}") from None
    try:
        if path is not None and path.exists() and path.stat().st_size:
            # SQLite opens files lazily: a truncated or foreign file only fails when read
            with engine.connect() as conn:
                verdict = conn.execute(sa.text("PRAGMA quick_check")).scalar()
            if verdict != "ok":
                raise DamagedStorage(f"{path} is not a readable SQLite database ({_verdict(verdict)}); "
                                     f"move it aside and restore a copy, or start another study")
    except sa.exc.DBAPIError as e:
        raise DamagedStorage(f"{path} is not a readable SQLite database ({_one_line(e)}); "
                             f"move it aside and restore a copy, or start another study") from None
    finally:
        engine.dispose()


def _plain():
    """:mod:`studies.plain_store`, imported late: it builds on this module's :class:`Store`."""
    from . import plain_store   # noqa: PLC0415 - a cycle otherwise (plain_store -> storage)
    return plain_store


def storage_file(url: str) -> Path | None:
    """The file a URL keeps its study in (a SQLite database or a journal), None for a server."""
    return _plain().storage_file(url) if _plain().is_plain(url) else sqlite_path(url)


def _verdict(text: str) -> str:
    """SQLite's ``quick_check`` report in one line: its first problem and how many follow (the
    report is a header and a line per problem, often dozens)."""
    problems = [line.strip() for line in str(text).splitlines() if line.strip() and not line.startswith("***")]
    if len(problems) <= 1:
        return problems[0] if problems else "quick_check failed"
    return f"{problems[0]}, and {len(problems) - 1} more problems"


def _where(url: str) -> str:
    path = sqlite_path(url)
    return str(path) if path is not None else redact_url(url)


def _storage_message(url: str, e: BaseException) -> str:
    text = _one_line(e)
    path = sqlite_path(url)
    hint = ""
    if "disk is full" in text or "No space left" in text:
        hint = f" (free space on {path.parent if path else 'the database server'})"
    elif "disk I/O error" in text and path:      # SQLite: a write refused (full, a quota, a size limit)
        hint = f" (a write to {path} or its journal failed: check the space and quota on {path.parent})"
    elif "readonly" in text or "read-only" in text or "unable to open database file" in text:
        hint = f" (no write permission on {path} or its folder)" if path else " (no write permission)"
    return f"storage {_where(url)}: {text}{hint}"


def database_error(e: BaseException) -> BaseException | None:
    """The database's own error behind ``e`` (SQLAlchemy's, which holds the driver's), or None
    when ``e`` is not one. Optuna's storage wraps what SQLAlchemy raises in a
    ``StorageInternalError`` whose text says only that a commit failed: the cause is its
    ``__cause__`` (or ``__context__``)."""
    seen = set()
    while isinstance(e, optuna.exceptions.StorageInternalError) and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return e if isinstance(e, sa.exc.SQLAlchemyError) else None


def proxy_error(e: BaseException) -> str | None:
    """``CODE: details`` of a failed call to Optuna's gRPC storage proxy (gone, refused), or None
    when ``e`` is not one. grpc is looked up, not imported: it is an optional extra, and no
    ``RpcError`` can arise in a process that never imported it."""
    grpc = sys.modules.get("grpc")
    if grpc is None or not isinstance(e, grpc.RpcError):
        return None
    code, details = getattr(e, "code", None), getattr(e, "details", None)
    if callable(code) and callable(details):
        first = (str(details() or "").strip().splitlines() or [""])[0]
        return f"the proxy did not answer ({code().name}: {first})"
    return f"the proxy did not answer ({_one_line(e)})"


@contextlib.contextmanager
def storage_errors(url: str):
    """One line naming the storage and the cause for what a storage raises while in use
    (a full disk, a read-only folder, a lost server or proxy) instead of chained tracebacks."""
    try:
        yield
    except (sa.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        cause = database_error(e)
        raise StorageError(_storage_message(url, cause if cause is not None else e)) from None
    except Exception as e:
        lost = proxy_error(e)
        if lost is None:
            raise
        raise StorageError(f"storage {_where(url)}: {lost}") from None


def is_storage_failure(e: BaseException) -> bool:
    """True for errors of the database itself (full, read-only, gone; raised by SQLAlchemy or
    wrapped by Optuna) or of a lost gRPC proxy: nothing more can be written."""
    return (isinstance(e, StorageError) or proxy_error(e) is not None
            or isinstance(database_error(e), (sa.exc.OperationalError, sa.exc.DatabaseError)))


def stale_trial_callback(max_retry: int):
    """What happens to a trial whose worker stopped beating: failed, and re-queued with the
    same parameters up to ``max_retry`` times."""
    with warnings.catch_warnings():                # "experimental" since Optuna 2.8: not news to a user
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def _rdb_storage(url: str, heartbeat: int | None, max_retry: int) -> BulkRDBStorage:
    kwargs = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=int(heartbeat), grace_period=DEFAULT_GRACE_FACTOR * int(heartbeat),
                      heartbeat_stale_trial_callback=stale_trial_callback(max_retry))
    for attempt in range(5):
        try:
            return BulkRDBStorage(driver_url(url), engine_kwargs=_engine_kwargs(url), **kwargs)
        except Exception as e:  # noqa: BLE001 - schema version, permissions
            # two processes creating Optuna's tables in a new database at once: the loser fails
            # ("already exists", "UNIQUE constraint failed: alembic_version", "database is locked")
            # and retries; an error that persists is reported
            if attempt < 4:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise StorageError(f"cannot open storage {redact_url(url)}: {_one_line(e)}") from None


@dataclass
class Store:
    """One study's storage, opened once by a process and passed down: the URL, Optuna's
    RDB storage, the claims, and the study loaded once (:meth:`study`), so that every
    reader in the process shares one cache of its trials.

    What the rest of the package asks of a storage beyond Optuna's own interface goes
    through these methods (:meth:`attrs`, :meth:`read_trials`, :meth:`write_trial`,
    :meth:`arm_heartbeat`) and :attr:`claims`: another kind of storage brings its own."""

    name: str
    url: str
    storage: BulkRDBStorage
    claims: Claims
    _study: optuna.Study | None = field(default=None, repr=False)
    _study_id: int | None = field(default=None, repr=False)

    def study(self, sampler=None) -> optuna.Study:
        """The study, loaded on the first call; ``sampler`` replaces its sampler (a worker's
        seeded TPE)."""
        if self._study is None:
            self._study = optuna.load_study(study_name=self.name, storage=self.storage, sampler=sampler)
        elif sampler is not None:
            self._study.sampler = sampler
        return self._study

    def create_study(self, directions: list[str]) -> optuna.Study:
        """Create the study (or load it when it exists) and keep it as :meth:`study`."""
        self._study = optuna.create_study(study_name=self.name, storage=self.storage, directions=directions,
                                          load_if_exists=True)
        return self._study

    def exists(self) -> bool:
        try:
            self.storage.get_study_id_from_name(self.name)
        except KeyError:
            return False
        return True

    @property
    def study_id(self) -> int:
        if self._study_id is None:
            self._study_id = self.storage.get_study_id_from_name(self.name)
        return self._study_id

    def attrs(self) -> dict:
        """The study's user attributes, read now (shared, not copied as ``study.user_attrs``
        copies them: read, do not change)."""
        return self.storage.get_study_user_attrs(self.study_id)

    def read_trials(self) -> list:
        """Every trial of the study, read in one go and without parameters: what the readers of
        results need (:class:`studies.results.Snapshot`), about half the work of a full read."""
        return self.storage.read_trials(self.study_id, params=False)

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (Optuna's public storage API; no private attributes)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def write_trial(self, number: int, user_attrs: dict | None = None, system_attrs: dict | None = None) -> None:
        """Running trial ``number``'s attributes, with what its sampling left held (its
        parameters, its constraints), in one transaction (:mod:`studies.rdb`)."""
        self.storage.set_trial_attrs(self.trial_id(number), user_attrs, system_attrs)

    def arm_heartbeat(self, interval: int, max_retry: int) -> None:
        """Heartbeats for this process's running trials (``interval`` seconds; silent for
        :data:`DEFAULT_GRACE_FACTOR` beats = failed and retried up to ``max_retry`` times)."""
        self.storage.arm_heartbeat(interval, DEFAULT_GRACE_FACTOR * int(interval), stale_trial_callback(max_retry))

    def heartbeat_interval(self) -> int:
        """Seconds between a running trial's heartbeats (0: none armed)."""
        return self.storage.get_heartbeat_interval() or 0

    def record_heartbeat(self, number: int) -> None:
        """A heartbeat of running trial ``number``."""
        self.storage.record_heartbeat(self.trial_id(number))

    def end_heartbeat(self, number: int) -> None:
        """Trial ``number`` is told: its heartbeat stops (Optuna's need no clearing)."""

    def retry(self, study: optuna.Study, number: int, max_retry: int) -> None:
        """Queue failed trial ``number`` again with the same parameters (Optuna's stale-trial
        callback: up to ``max_retry`` times, the lineage in its system attrs)."""
        stale_trial_callback(max_retry)(study, self.storage.get_trial(self.trial_id(number)))

    def requeue(self, study: optuna.Study, number: int, max_retry: int) -> bool:
        """Fail RUNNING trial ``number`` (no fail_reason: the tables call it "lost" and name its
        retry) and :meth:`retry` it; False, nothing done, when it finished meanwhile."""
        try:
            if not self.storage.set_trial_state_values(self.trial_id(number), state=TrialState.FAIL):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        self.retry(study, number, max_retry)
        return True

    def fail_stale_trials(self, study: optuna.Study, spare: set[int] = frozenset()) -> None:
        """Fail (and retry) the RUNNING trials silent for the grace period, but those numbered in
        ``spare`` (their workers are known alive): their heartbeats are renewed first."""
        for number in spare:
            self.record_heartbeat(number)
        with warnings.catch_warnings():            # "experimental" since Optuna 2.9: not news to a user
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    def close(self) -> None:
        self.claims.close()
        self.storage.engine.dispose()


def open_store(name: str, storage: str | None = None, *, create: bool = False, heartbeat: int | None = None,
               max_retry: int = 3, owner: str = "") -> Store:
    """Check the URL and open the storage of study ``name`` once.

    With ``heartbeat`` (seconds), running trials beat and a trial silent for
    three beats is failed by the next worker that looks and re-queued with
    the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``, ``max_retry``
    times). ``create`` allows a new SQLite file (its folder is created under
    the data home)."""
    url = resolve_url(name, storage)
    if _plain().is_plain(url):
        return _plain().open_plain(name, url, create=create, heartbeat=heartbeat, max_retry=max_retry, owner=owner)
    if storage is None and create:
        data_home().mkdir(parents=True, exist_ok=True)
    check_url(url, create=create)
    rdb = _rdb_storage(url, heartbeat, max_retry)
    return Store(name, url, rdb, RDBClaims(rdb.engine, owner))


def open_existing(name: str, storage: str | None = None, **kwargs) -> Store:
    """The store of an existing study (never creates one); an unknown name is a one-line
    ValueError listing the studies in that storage."""
    def unknown() -> ValueError:
        names = list_study_names(storage)
        where = f"in {redact_url(storage)}" if storage else f"in {data_home()}"
        hint = f"; studies there: {', '.join(names[:20])}" if names else "; there are no studies there"
        return ValueError(f"unknown study {name!r} {where}{hint}")

    try:
        store = open_store(name, storage, **kwargs)
    except DamagedStorage:
        raise
    except StorageError:
        if storage is None:
            raise unknown() from None
        raise
    if not store.exists():
        store.close()
        raise unknown()
    return store


def list_study_names(url: str | None) -> list[str]:
    """Study names in a storage; for the default storage (one SQLite file per
    study) the names of the files in :func:`data_home`."""
    if url is None:
        return sorted(p.stem for p in data_home().glob("*.db"))
    if _plain().is_plain(url):
        return _plain().study_names(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return []
    try:
        check_url(url, create=False)
        return sorted(optuna.get_all_study_names(storage=_rdb_storage(url, None, 0)))
    except StorageError:
        return []
