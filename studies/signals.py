"""SIGTERM treated as Ctrl-C, and worker processes that stop with their launcher.

Slurm, Kubernetes and ``timeout`` stop a program with SIGTERM (then SIGKILL after a grace
period). Python's default for SIGTERM is to die at once: the running trial would stay
RUNNING until its heartbeat went silent for three intervals, and ``run --workers K``
would leave its workers running unseen. :func:`handle_sigterm` makes SIGTERM raise
:class:`Terminated` - a ``KeyboardInterrupt`` - in the main thread, so every path that
handles Ctrl-C (the trial failed as "interrupted" and re-queued, a retrain's claim
released) handles SIGTERM too. The command then ends with one line and exit code
:func:`exit_code` (143 = 128 + SIGTERM, 130 = 128 + SIGINT: what a shell reports for a
process the signal killed, so a batch system reads it the same).

A worker process spawned by ``run --workers K`` calls :func:`worker_process`: SIGTERM as
above; on Linux the kernel sends it SIGTERM when its launcher dies, even by SIGKILL
(:func:`die_with_parent`), so it re-queues its trial and exits instead of finishing the
study unseen; and its progress bars take a thread lock, not tqdm's default
multiprocessing lock, a named semaphore that a killed worker leaves behind (Python's
resource tracker then warns "leaked semaphore objects" on the launcher's stderr).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

from tqdm import std as _tqdm_std

__all__ = ["Terminated", "die_with_parent", "exit_code", "handle_sigterm", "stopped_line", "worker_process"]

_PR_SET_PDEATHSIG = 1          # <linux/prctl.h>


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised in the main thread where Ctrl-C raises KeyboardInterrupt."""


def _raise_terminated(signum, frame):
    # the first SIGTERM interrupts; later ones (a batch system signalling every process of the
    # job, the launcher forwarding it) must not interrupt the re-queue that the first started
    signal.signal(signal.SIGTERM, _ignore)
    raise Terminated()


def _ignore(signum, frame):
    # a Python handler rather than SIG_IGN, which processes started from here would inherit
    pass


def handle_sigterm() -> bool:
    """Make SIGTERM raise :class:`Terminated` in this process's main thread; False (nothing
    changed) when called from another thread, where Python cannot install a handler."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _raise_terminated)
    return True


def exit_code(e: KeyboardInterrupt) -> int:
    """The exit code of a command stopped by ``e``: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def stopped_line(e: KeyboardInterrupt) -> str:
    """The one line a command stopped by ``e`` prints."""
    what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
    return f"{what}; re-run the same command to resume"


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send this process SIGTERM when its parent ``parent_pid`` dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing). A parent already gone by now is the
    same: SIGTERM at once."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):      # no libc to load (a static build): the heartbeat still covers it
        return
    if os.getppid() != parent_pid:         # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_process(parent_pid: int) -> None:
    """Set up a spawned worker process of launcher ``parent_pid`` (see the module's text)."""
    handle_sigterm()
    die_with_parent(parent_pid)
    # every tqdm class shares the base class's lock; set before any bar exists, no semaphore is made
    _tqdm_std.tqdm.set_lock(threading.RLock())
