"""Checkpoint files: written atomically, read back with a check that they belong to the run.

A checkpoint holds the model, optimiser, scheduler and every RNG state after
an epoch, plus the run's identity (protocol, hyperparameters, seed): a killed
run resumes from it to the same weights as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "atomic_save", "check_compatible", "load", "load_or_set_aside"]

FORMAT = 1   # version of the checkpoint layout


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A kill at any moment leaves either the old file or the new one, never a
    truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:
        # torch's zip writer reports a full disk as "[enforce fail at inline_container.cc] ...
        # file write failed": say what it is, and where
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise _write_error(path, e) from None
    except OSError as e:
        # a full disk met in flush or fsync names no file ("[Errno 28] No space left on device"): name it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_error(path: Path, e: BaseException) -> OSError:
    free = shutil.disk_usage(path.parent).free
    if free < 64 * 2**20 or "write" in str(e).lower():
        return OSError(errno.ENOSPC, f"No space left on device ({free / 2**20:.0f} MiB free)", str(path))
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return OSError(errno.EIO, first, str(path))


def load(path: str | Path, device: torch.device) -> dict:
    """The checkpoint at ``path`` (tensors only: ``weights_only``): the model, optimiser and
    scheduler states on ``device``, the RNG states on the CPU.

    The file is read onto the CPU first: ``torch.set_rng_state`` and
    ``torch.cuda.set_rng_state_all`` accept only CPU byte tensors, so loading with
    ``map_location=device`` made every resume on a GPU fail ("RNG state must be a
    torch.ByteTensor")."""
    return _on_device(_read(path), device)


def _read(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _on_device(state: dict, device: torch.device) -> dict:
    """``state`` with every tensor outside ``"rng"`` moved to ``device``."""
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        return x
    return {k: v if k == "rng" else move(v) for k, v in state.items()}


_NEEDED = ("format", "epoch", "model", "optimizer", "scheduler", "rng", "history")


def load_or_set_aside(path: Path, device: torch.device) -> tuple[dict | None, str | None]:
    """``(state, None)`` for a readable checkpoint (as :func:`load` gives it); for an unreadable
    one (truncated, zeroed, overwritten: a disk hiccup, a kill during a copy) ``(None, note)``:
    the file is renamed to ``NAME.unreadable-<UTC time>`` beside it, kept for inspection, and
    the run restarts. Only reading can set a file aside: running out of device memory while
    moving a readable checkpoint there raises."""
    try:
        state = _read(path)
        if not isinstance(state, dict) or not all(k in state for k in _NEEDED):
            raise ValueError("not a checkpoint of this trainer")
    except Exception as e:  # noqa: BLE001 - PytorchStreamReader errors, UnpicklingError, EOFError, ...
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{path.name}.unreadable-{stamp}")
        os.replace(path, aside)
        return None, f"checkpoint {path} is unreadable ({why}); set aside as {aside.name}, starting from scratch"
    return _on_device(state, device), None


def check_compatible(state: dict, identity: dict, path: Path) -> None:
    """ValueError unless ``state`` was written by a run with the same ``identity``."""
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format')!r}")
    diff = [k for k in identity if state.get(k) != identity[k]]
    if not diff:
        return
    mine = {k: identity[k] for k in diff if k != "hparams"}
    theirs = {k: state.get(k) for k in diff if k != "hparams"}
    if "hparams" in diff:
        keys = sorted(k for k in identity["hparams"] if state["hparams"].get(k) != identity["hparams"][k])
        mine["hparams"] = {k: identity["hparams"][k] for k in keys}
        theirs["hparams"] = {k: state["hparams"].get(k) for k in keys}
    raise ValueError(f"{path} was written by a different run ({theirs}); this call has "
                     f"{mine}: use resume=False or another checkpoint_path")
