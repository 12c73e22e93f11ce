"""Multi-fidelity: which finished trials are trained longer, and the promotion itself.

Optuna's ``Trial.report`` and pruners do not exist for multi-objective
studies, so promotion is asynchronous successive halving (ASHA) of our own.
Rungs are ``proxy_epochs * eta**k``, ``k < rungs``. When a worker is free it
first looks for a promotion, top rung first: of the ``n_k`` trials with an
accuracy at rung k, the best ``floor(n_k / eta)`` - by non-dominated sorting
on (accuracy, memory), then crowding distance, then accuracy - go to rung
k+1, at most that many, each claimed once in ``stacknas_claims`` (a dead
worker's claim is taken over after the grace period). The result is stored as
study user attr ``fidelity:N:E`` (Optuna cannot change a finished trial) and
readers merge it (:func:`studies.results.trials_with_results`).

A worker looks for a promotion before every trial, so looking is cheap: it reads the
trials from its process's cache, the study's attributes and the claims once, ranks
(O(n log n), :mod:`studies.pareto`) only a rung whose quota is not met, and takes the
promotion lock only when something is due.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from optuna.trial import TrialState

from .config import StudySettings
from .objective import promote
from .results import fidelity_results, rank_for_promotion
from .session import Session

__all__ = ["Job", "find_promotion", "pending_promotions", "run_promotion"]


@dataclass
class Job:
    """A claimed promotion: train trial ``number``'s network at ``epochs``."""

    number: int
    epochs: int
    key: str          # its claim in stacknas_claims


def _rung_accuracies(trials, fid: dict, cfg: StudySettings, rung: int) -> dict[int, float]:
    """{trial number: accuracy at rung k} (a duplicate is represented by its twin)."""
    e = cfg.epochs(rung)
    out = {}
    for t in trials:
        if "duplicate_of" in t.user_attrs:
            continue
        if rung == 0:
            acc = t.values[0] if t.values else None
        else:
            r = fid.get(t.number, {}).get(e)
            acc = r.get("val_accuracy") if r and r.get("status") == "ok" else None
        if acc is not None and math.isfinite(acc):
            out[t.number] = float(acc)
    return out


def _due(session: Session, stale_after: float) -> list[Job]:
    """Promotions that may be claimed now, best first: a dead worker's (its claim stale),
    then, top rung first, the best trials of a rung whose quota is not met."""
    cfg, claims = session.settings, session.store.claims
    trials = session.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        return []
    fid = fidelity_results(session.store.attrs())
    memory = {t.number: float(t.values[1]) for t in trials}
    rows = {r["key"]: r for r in claims.rows(f"{cfg.uid}:promote:")}
    now = time.time()
    out = []
    for k in reversed(range(cfg.rungs - 1)):
        e_next = cfg.epochs(k + 1)
        prefix = f"{cfg.uid}:promote:{e_next}:"
        mine = {key: r for key, r in rows.items() if key.startswith(prefix)}
        for key, r in sorted(mine.items()):           # a dead worker's promotion
            if not r["done"] and r["heartbeat"] < now - stale_after:
                out.append(Job(int(key.rsplit(":", 1)[1]), e_next, key))
        acc = _rung_accuracies(trials, fid, cfg, k)
        quota = len(acc) // cfg.eta
        if len(mine) >= quota:
            continue
        numbers = list(acc)
        order = rank_for_promotion([acc[n] for n in numbers], [memory[n] for n in numbers])
        claimed = {int(key.rsplit(":", 1)[1]) for key in mine}
        out += [Job(numbers[i], e_next, prefix + str(numbers[i])) for i in order[:quota]
                if numbers[i] not in claimed]
    return out


def find_promotion(session: Session, stale_after: float) -> Job | None:
    """Claim the next promotion (top rung first), or None."""
    cfg, claims = session.settings, session.store.claims
    if cfg.rungs < 2 or not _due(session, stale_after):
        return None
    with claims.lock(f"{cfg.uid}:promote-lock"):
        for job in _due(session, stale_after):        # again under the lock: another may have claimed
            if claims.try_claim(job.key, stale_after):
                return job
    return None


def run_promotion(session: Session, job: Job, say) -> None:
    """Train a claimed promotion and store it as study user attr ``fidelity:N:E``."""
    study, claims = session.study, session.store.claims
    record = next(t for t in study.get_trials(deepcopy=False) if t.number == job.number)
    with claims.held(job.key, session.settings.heartbeat_interval):
        try:
            result = promote(record, job.epochs, session)
        except KeyboardInterrupt:
            claims.release(job.key)          # another worker may take it at once
            raise
        except Exception as e:  # noqa: BLE001 - record it, do not retry a bug forever
            result = {"number": job.number, "epochs": job.epochs, "status": "error",
                      "reason": f"{type(e).__name__}: {e}".splitlines()[0], "val_accuracy": None,
                      "worker": session.owner}
        study.set_user_attr(f"fidelity:{job.number}:{job.epochs}", result)
        claims.finish(job.key)
    if result.get("status") == "ok":
        say(f"trial {job.number} promoted to {job.epochs} epochs: acc {result['val_accuracy']:.3f} "
            f"({result['seconds']:.1f}s)")
    else:
        say(f"trial {job.number} at {job.epochs} epochs: {result.get('status')}: {result.get('reason')}")


def pending_promotions(session: Session) -> int:
    return sum(1 for r in session.store.claims.rows(f"{session.settings.uid}:promote:") if not r["done"])
