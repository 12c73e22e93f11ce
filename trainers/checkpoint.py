"""Checkpoint files: written atomically, read back with a check that they belong to the run.

A checkpoint holds the model, optimiser, scheduler and every RNG state after
an epoch, plus the run's identity (protocol, hyperparameters, seed): a killed
run resumes from it to the same weights as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "atomic_save", "check_compatible", "load"]

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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load(path: str | Path, device: torch.device) -> dict:
    """The checkpoint at ``path`` on ``device`` (tensors only: ``weights_only``)."""
    return torch.load(path, map_location=device, weights_only=True)


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
