"""What a training run needs around the loop: the device, seeds and RNG states,
phase timing, failure classification and provenance."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import ctypes.util
import gc
import math
import os
import platform
import random
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Diverged", "PhaseClock", "classify_failure", "cuda_peak", "derive_seed", "device_name",
           "git_commit", "jsonable", "release_memory", "resolve_device", "rng_state", "seed_everything",
           "set_rng_state"]


# ----------------------------------------------------------------------------- device, seeds
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, CUDA when it is None and available, with a CUDA index filled in."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys, e.g. (seed, epoch, stream)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's legacy global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (torch's setters take CPU byte tensors only)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_tupleize(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def _tupleize(x):
    return tuple(_tupleize(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- timing
class PhaseClock:
    """Seconds per named phase: CUDA events on CUDA (read with one sync), else perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._events: dict[str, list] = defaultdict(list)
        self._laps: dict[str, list] = defaultdict(list)

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events[name].append((start, end))
        else:
            t = time.perf_counter()
            try:
                yield
            finally:
                self._laps[name].append(time.perf_counter() - t)

    def laps(self, name: str) -> list[float]:
        """Seconds of each use of phase ``name`` (CUDA: syncs once)."""
        if not self.cuda:
            return list(self._laps.get(name, []))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in self._events.get(name, [])]

    def seconds(self, *names: str) -> dict[str, float]:
        return {name: sum(self.laps(name)) for name in names}


# ----------------------------------------------------------------------------- failures
class Diverged(Exception):
    """A non-finite training loss; ``epoch``/``step`` are 1-based."""

    def __init__(self, epoch: int, step: int, global_step: int, loss: float):
        self.epoch, self.step, self.global_step, self.loss = epoch, step, global_step, loss
        super().__init__(f"diverged at epoch {epoch}, step {step} (global step {global_step}): loss={loss}")


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def classify_failure(e: BaseException, device: torch.device, phase: str) -> tuple[str, str]:
    """``(status, reason)`` of a run that diverged or ran out of memory during ``phase``;
    any other exception is re-raised (a bug must not look like a result)."""
    if isinstance(e, Diverged):
        return "diverged", str(e)
    if _is_oom(e):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        total = ""
        if device.type == "cuda":
            total = f" (device has {torch.cuda.get_device_properties(device).total_memory / 2**30:.1f} GiB)"
        return "oom", f"out of memory during {phase}{total}: {first[:300]}"
    raise e


def _malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_memory(device: torch.device) -> None:
    """Give back what a finished run freed. On the CPU glibc keeps freed heap pages, so a
    worker's resident memory would creep up to the sum of its runs' peaks: one study of
    small networks on 1,000 images climbed past 3 GB. ``malloc_trim`` returns them."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif _TRIM is not None:
        _TRIM(0)


def cuda_peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


# ----------------------------------------------------------------------------- provenance
@functools.cache
def git_commit() -> str | None:
    """HEAD of the repository holding this file, or None (not a checkout, no git, no commits).
    Read once per process: the code that runs is the code imported at its start, and every
    proxy run records it (a ``git`` subprocess per trial would sit on the trial's path)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def jsonable(x: Any) -> Any:
    """``x`` with non-finite floats as strings and numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    return x
