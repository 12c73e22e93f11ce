"""A study in Optuna's journal file on a shared filesystem: ``journal:///ABS/PATH/NAME.log``.

For clusters with a shared filesystem (NFS, Lustre, GPFS) and no database server.
SQLite is unsafe there (its locks do not hold over NFS); Optuna's ``JournalStorage``
with its file backend appends each change to one log under a lock made by creating a
symbolic link, which NFS makes atomic. Every process replays the log it has not read
yet, so a study of thousands of trials is read once and then incrementally.

Beside the journal, folder ``NAME.claims/`` holds the study's claims
(:class:`studies.file_claims.FileClaims`: promotions, retrains, the ticket lock and the
heartbeats of running trials, which Optuna's journal storage does not have).

Refused in one line, before anything is created: a relative path, a missing or
unwritable folder, a folder whose filesystem does not make a symbolic link or a hard
link exclusive (the journal's lock and the claims need both), and, for a study that
should exist, a missing journal file.
"""
from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from .storage import StorageError

__all__ = ["SCHEME", "check_journal", "claims_folder", "is_journal", "journal_path", "open_journal"]

SCHEME = "journal://"
_EXAMPLE = "journal:///ABSOLUTE/PATH/NAME.log"


def is_journal(url: str | None) -> bool:
    return bool(url) and url.startswith("journal:")


def journal_path(url: str) -> Path:
    """The journal file of ``journal:///ABS/PATH``; a relative or malformed one is refused."""
    if not url.startswith(SCHEME):
        raise StorageError(f"storage {url!r}: a journal URL is {_EXAMPLE} (three slashes, then an absolute path)")
    rest = url[len(SCHEME):]
    if not rest.startswith("/"):
        raise StorageError(f"storage {url!r}: the journal path must be absolute, as in {_EXAMPLE} "
                           f"(every machine of a cluster must name the same file)")
    path = Path(rest)
    if path.name in ("", ".", "..") or rest.endswith("/"):
        raise StorageError(f"storage {url!r}: name a journal file, as in {_EXAMPLE}")
    return path


def claims_folder(path: Path) -> Path:
    """``NAME.claims`` beside journal ``NAME.log`` (``NAME.log.claims`` if the journal is named .claims)."""
    beside = path.with_suffix(".claims")
    return beside if beside != path else path.with_name(path.name + ".claims")


def _exclusive(folder: Path) -> str | None:
    """None when creating a symbolic link and a hard link in ``folder`` fail for a name that
    exists (what the journal's lock and the claims rely on); else why not. Leaves nothing."""
    probe = folder / f".stacknas-probe-{uuid.uuid4().hex}"
    made: list[Path] = []
    try:
        os.symlink(probe.name, probe.with_suffix(".lock"))
        made.append(probe.with_suffix(".lock"))
        try:
            os.symlink(probe.name, probe.with_suffix(".lock"))
        except FileExistsError:
            pass
        else:
            return "a second symbolic link of one name was created"
        probe.write_bytes(b"")
        made.append(probe)
        os.link(probe, probe.with_suffix(".link"))
        made.append(probe.with_suffix(".link"))
        try:
            os.link(probe, probe.with_suffix(".link"))
        except FileExistsError:
            return None
        return "a second hard link of one name was created"
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EROFS):
            return f"not writable ({e.strerror})"
        return f"{e.strerror or e} (symbolic and hard links are needed)"
    finally:
        for p in made:
            try:
                os.unlink(p)
            except OSError:
                pass


def check_journal(url: str, *, create: bool) -> Path:
    """The journal file of ``url``, checked: with ``create`` its folder must exist, be
    writable and lock; without, the file must exist. Creates nothing."""
    path = journal_path(url)
    if not create:
        if not path.is_file():
            raise StorageError(f"no study journal at {path} (check --study / --storage)")
        return path
    if not path.parent.is_dir():
        raise StorageError(f"cannot create journal {path}: folder {path.parent} does not exist")
    if path.exists() and not path.is_file():
        raise StorageError(f"journal {path} exists and is not a file")
    why = _exclusive(path.parent)
    if why is not None:
        raise StorageError(f"journal {path}: folder {path.parent} cannot hold its lock: {why}; put the journal "
                           f"on a POSIX filesystem every machine mounts (NFS, Lustre, GPFS, or a local disk)")
    return path


def open_journal(path: Path) -> optuna.storages.JournalStorage:
    """Optuna's journal storage of ``path`` (the file is created if missing), locked by a
    symbolic link (atomic on NFS, unlike ``open(O_EXCL)`` on NFSv2 and SQLite's locks)."""
    backend = JournalFileBackend(str(path), lock_obj=JournalFileSymlinkLock(str(path)))
    return optuna.storages.JournalStorage(backend)
