"""Reading a study: merged trial records, the pandas table, Pareto set, Kendall's tau,
hypervolume, trial counts, the one summary every command prints, and the results files a
run or a retrain leaves behind.

**Read once.** A :class:`Snapshot` is a study read once: its trials (one read, through
the process's cache of them) and its user attributes, with the merged records, the table
and the summary worked out once and kept. Every reader here takes a study or a snapshot;
``show``, ``dashboard``, ``export``, the retrain's selection and ``run``'s results files
hand them a snapshot, so a command reads the study once whatever it prints. Nothing here
compares all pairs of trials: the front, the ranks and the hypervolume are sweeps
(:mod:`studies.pareto`), O(n log n) in the number of trials.

Optuna refuses to change a finished trial, so what happens to a trial
*after* it finished - promotion to a longer proxy (multi-fidelity) and the
full retrain - is stored in the study's user attributes, one key per result
(``fidelity:N:E``, ``retrain:N:LABEL``; the schema is in ``docs/design.md``).
:func:`trials_with_results` folds those back into copies of the trials, so
every reader (``show``, ``retrain``, the dashboard, export) sees one record
per trial with its longest-fidelity accuracy and its retrained accuracy.

**The front.** Each trial counts at the highest rung (fidelity) it reached:
asynchronous successive halving's own convention, so a promoted trial's
longer proxy replaces its first-rung score. Optuna stores only the first
rung's accuracy (a finished trial cannot change), so Optuna's own dashboard
ranks on that and can show another Pareto set.

**One network, one point.** A trial that repeated an earlier network
(``duplicate_of``) copied its twin's results; it is not a second measurement.
:func:`distinct` drops such rows, and :func:`summary` - the counts, front,
hypervolume and Kendall's tau that ``show``, ``retrain``, ``summary.json`` and
the dashboard print - is computed over distinct networks only.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import TrialState

from .pareto import (crowding_distance, hypervolume, hypervolume_trace, kendall_tau, nondominated_ranks, pareto_mask,
                     rank_for_promotion)
from .retrain_protocol import describe_retrain
from .storage import data_home, in_home

__all__ = ["Snapshot", "budget_text", "counts_text", "crowding_distance", "distinct", "fidelity_results", "finite", "first_line",
           "front", "hypervolume", "hypervolume_history", "kendall_tau", "lineage_counts", "memory_key",
           "nondominated_ranks", "pareto_mask", "pareto_numbers", "pareto_set", "plural", "rank_for_promotion",
           "results_dir", "retrain_results", "scored", "spec_of", "summary", "summary_lines", "trials_table",
           "trials_with_results", "write_results", "TARGET_ATTR"]

FIDELITY_PREFIX = "fidelity:"   # study user attr fidelity:{number}:{epochs} -> dict (promotion result)
TARGET_ATTR = "trials"       # study user attr: the number of trial lineages the study should hold
RETRAIN_PREFIX = "retrain:"     # study user attr retrain:{number}:{label} -> dict (full retrain result)


# --------------------------------------------------------------------------
# a study read once
# --------------------------------------------------------------------------

class Snapshot:
    """A study read once: its trials and user attributes as of one moment, and what the
    readers work out from them (:meth:`merged`, :meth:`table`, :meth:`summary`), each
    once. It answers what the readers ask of an ``optuna.Study`` (``study_name``,
    ``user_attrs``, ``directions``, ``get_trials``, ``trials``) without reading again;
    ``study`` is the live study.

    ``trials``: the trials when the caller has read them, e.g. :meth:`Store.read_trials
    <studies.storage.Store.read_trials>`, which leaves the parameters out (the commands'
    snapshots: no reader of results looks at a trial's sampled parameters, its network
    is its ``spec``); otherwise ``study.get_trials()``."""

    def __init__(self, study, trials: list | None = None):
        self.study = study
        self.study_name: str = study.study_name
        self.directions = study.directions
        self.user_attrs: dict[str, Any] = study.user_attrs
        self._trials = study.get_trials(deepcopy=False) if trials is None else list(trials)
        self._merged: list | None = None
        self._table: pd.DataFrame | None = None
        self._summary: dict | None = None

    def get_trials(self, deepcopy: bool = False, states=None) -> list:
        trials = self._trials if states is None else [t for t in self._trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    @property
    def trials(self) -> list:
        return list(self._trials)

    def merged(self) -> list:
        """:func:`trials_with_results` of this snapshot."""
        if self._merged is None:
            self._merged = _merge(self.user_attrs, self._trials)
        return self._merged

    def table(self) -> pd.DataFrame:
        """:func:`trials_table` of this snapshot."""
        if self._table is None:
            self._table = _table(self.user_attrs, self.merged())
        return self._table

    def summary(self) -> dict:
        """:func:`summary` of this snapshot."""
        if self._summary is None:
            self._summary = summary(self, self.table(), self._trials)
        return self._summary


def snapshot(study) -> Snapshot:
    """``study`` read once (itself when it is a :class:`Snapshot` already)."""
    return study if isinstance(study, Snapshot) else Snapshot(study)


# --------------------------------------------------------------------------
# merged records
# --------------------------------------------------------------------------

def memory_key(study) -> str:
    """The user attr holding the memory objective: ``inference_bytes_per_image`` (default)
    or ``training_bytes_per_image`` (study attr ``memory``)."""
    return f"{study.user_attrs.get('memory', 'inference')}_bytes_per_image"


def fidelity_results(study_attrs: dict) -> dict[int, dict[int, dict]]:
    """{trial number: {epochs: promotion result}} from the study's user attrs."""
    out: dict[int, dict[int, dict]] = {}
    for k, v in study_attrs.items():
        if k.startswith(FIDELITY_PREFIX) and isinstance(v, dict):
            try:
                n, e = (int(x) for x in k[len(FIDELITY_PREFIX):].split(":"))
            except ValueError:
                continue
            out.setdefault(n, {})[e] = v
    return out


def retrain_results(study_attrs: dict) -> dict[int, list[dict]]:
    """{trial number: [retrain results, oldest first]} from the study's user attrs."""
    out: dict[int, list[dict]] = {}
    for k, v in study_attrs.items():
        if k.startswith(RETRAIN_PREFIX) and isinstance(v, dict):
            try:
                n = int(k[len(RETRAIN_PREFIX):].split(":")[0])
            except ValueError:
                continue
            out.setdefault(n, []).append(v)
    for v in out.values():
        v.sort(key=lambda r: r.get("finished_at") or "")
    return out


def finite(v) -> float | None:
    """``v`` as a float, or None when it is missing, not a number or not finite."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def first_line(text) -> str:
    """The first line of a stored reason or message (tables and cards show one line)."""
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def trials_with_results(study, trials=None) -> list:
    """Copies of the study's trials with promotion and retrain results folded into
    ``user_attrs`` (schema in ``docs/design.md``):

    * ``val_accuracy@E`` for every fidelity E evaluated, ``proxy_epochs`` = the
      longest fidelity with an accuracy, ``val_accuracy`` = the accuracy there,
      ``proxy_seconds`` = the seconds of that run;
      ``values[0]`` of a COMPLETE trial is replaced by that accuracy (Optuna's
      stored value, which the sampler learns from, stays the first rung's);
    * ``retrain_test_accuracy``, ``retrain_protocol``, ``retrain_epochs``,
      ``retrain_status``, ``weights_path`` ... from the latest retrain, and
      ``retrain_record``, that retrain's whole record;
    * a FAIL trial without a reason (failed by the heartbeat check) gets
      ``status`` "lost" and a ``fail_reason`` naming its retry.
    """
    if trials is None:
        return snapshot(study).merged()
    return _merge(study.user_attrs, trials)


def _merge(attrs: dict, trials: list) -> list:
    """:func:`trials_with_results` over the study's user attributes ``attrs``. Each record is
    a shallow copy of its trial with new ``user_attrs`` (and ``values``): O(n), nothing of
    the trials themselves copied or changed."""
    fid, ret = fidelity_results(attrs), retrain_results(attrs)
    retried_as = {}
    for t in trials:
        history = t.system_attrs.get("retry_history") or []
        if history:
            retried_as[int(history[-1])] = t.number
    out = []
    for t in trials:
        t = copy.copy(t)
        ua = dict(t.user_attrs)
        if t.state == TrialState.FAIL and not ua.get("fail_reason"):
            # failed by the heartbeat check: its worker died, nothing could be written
            ua["status"] = "lost"
            ua["fail_reason"] = "worker lost (no heartbeat)" + (
                f"; retried as trial {retried_as[t.number]}" if t.number in retried_as else "")
        src = ua.get("duplicate_of", t.number)   # a duplicate shares its twin's later results
        first_rung = (ua.get("proxy_epochs"), ua.get("proxy_seconds"))
        for e, r in sorted(fid.get(src, {}).items()):
            ua[f"val_accuracy@{e}"] = r.get("val_accuracy")
            if r.get("status") not in (None, "ok"):
                ua[f"promotion_reason@{e}"] = r.get("reason") or r.get("status")
        accs = {}
        for k, v in ua.items():
            if k.startswith("val_accuracy@") and finite(v) is not None:
                try:
                    accs[int(k.split("@")[1])] = float(v)
                except ValueError:
                    pass
        if accs:
            e = max(accs)
            ua["proxy_epochs"], ua["val_accuracy"] = e, accs[e]
            # the seconds of the run behind that accuracy, never the first rung's beside a longer one's
            ua["proxy_seconds"] = first_rung[1] if e == first_rung[0] else fid.get(src, {}).get(e, {}).get("seconds")
            ua["fidelities"] = sorted(accs)
            if t.state == TrialState.COMPLETE and t.values:
                t.values = [accs[e], *t.values[1:]]
        runs = ret.get(src, [])
        done = [r for r in runs if r.get("status") == "ok"] or runs
        if done:
            r = done[-1]
            ua.update({
                "retrain_test_accuracy": r.get("test_accuracy"),
                "retrain_protocol": r.get("protocol"),
                "retrain_epochs": r.get("epochs"),
                "retrain_status": r.get("status"),
                "retrain_reason": r.get("reason") or "",
                "retrain_seconds": r.get("seconds"),
                "retrain_device": r.get("device"),
                "retrain_cuda_peak_bytes": r.get("cuda_peak_bytes"),
                # stored relative to the data home (older studies: absolute): the file on this machine
                "weights_path": str(in_home(r["weights_path"])) if r.get("weights_path") else None,
                "retrain_data": r.get("data"),
                "retrain_record": r,      # the whole record: label, planned epochs, overrides, per-epoch accuracy
                "retrain_spec": r.get("spec"),
            })
        t.user_attrs = ua
        out.append(t)
    return out


_COLUMNS = ["number", "state", "status", "val_accuracy", "memory", "params", "macs", "architecture",
            "proxy_epochs", "retrain_test_accuracy", "preset", "fail_reason"]


def trials_table(study, merged=None) -> pd.DataFrame:
    """One row per trial (any state), indexed by trial number. ``merged``: the
    records of :func:`trials_with_results` when the caller already has them
    (merged here otherwise). Columns:

    ``state``, ``status``, ``val_accuracy`` (longest fidelity), ``memory``
    (the study's memory objective, bytes/image), ``params``, ``macs``,
    ``architecture``, ``proxy_epochs``, ``retrain_test_accuracy``, ``preset``,
    ``fail_reason`` first; then ``pareto`` (on the Pareto set), ``rank``
    (non-dominated front), ``inference_bytes_per_image``,
    ``training_bytes_per_image``, ``cuda_peak_bytes``, ``val_accuracy@E`` per
    fidelity, ``scheme``, ``proxy_seconds``, ``device``, ``retrain_protocol``,
    ``retrain`` (the retrain's protocol and epochs, ``fast 2/40ep``), ``weights_path``, ``retried_from``, ``duplicate_of``, ``spec``, start/end times.
    """
    if isinstance(study, Snapshot) and (merged is None or merged is study._merged):
        return study.table()
    return _table(study.user_attrs, trials_with_results(study) if merged is None else merged)


def _table(attrs: dict, merged: list) -> pd.DataFrame:
    """:func:`trials_table` of the merged records ``merged``, given the study's user attributes."""
    mkey = f"{attrs.get('memory', 'inference')}_bytes_per_image"
    rows = []
    for t in merged:
        a = t.user_attrs
        acc, mem = finite(a.get("val_accuracy")), finite(a.get(mkey))
        if t.state == TrialState.COMPLETE and t.values and len(t.values) == 2:
            # a study made by other means (no user attrs) still has its two objective values
            acc = finite(t.values[0]) if acc is None else acc
            mem = finite(t.values[1]) if mem is None else mem
        row = {
            "number": t.number, "state": t.state.name, "status": a.get("status"),
            "val_accuracy": acc, "memory": mem,
            "params": a.get("params"), "macs": a.get("macs"), "architecture": a.get("architecture"),
            "proxy_epochs": a.get("proxy_epochs"), "retrain_test_accuracy": finite(a.get("retrain_test_accuracy")),
            "preset": a.get("preset"), "fail_reason": a.get("fail_reason"),
            "inference_bytes_per_image": a.get("inference_bytes_per_image"),
            "training_bytes_per_image": a.get("training_bytes_per_image"),
            "cuda_peak_bytes": a.get("cuda_peak_bytes"),
            "scheme": a.get("scheme"), "family": a.get("family"),
            "proxy_seconds": a.get("proxy_seconds"), "device": a.get("device"),
            "retrain_protocol": a.get("retrain_protocol"), "weights_path": a.get("weights_path"),
            "retrain": describe_retrain(a["retrain_record"], short=True) if a.get("retrain_record") else None,
            "retried_from": t.system_attrs.get("failed_trial"), "duplicate_of": a.get("duplicate_of"),
            "spec": a.get("spec"),
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
        }
        for k, v in a.items():
            if k.startswith("val_accuracy@"):
                row[k] = finite(v)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=_COLUMNS + ["pareto", "rank", "duplicate_of"])
        return df.set_index("number")
    for c in ("params", "macs", "proxy_epochs", "inference_bytes_per_image", "training_bytes_per_image",
              "cuda_peak_bytes", "retried_from", "duplicate_of"):
        df[c] = pd.to_numeric(df[c], errors="coerce").round().astype("Int64")
    fid_cols = sorted((c for c in df.columns if c.startswith("val_accuracy@")), key=lambda c: int(c.split("@")[1]))
    df["pareto"], df["rank"] = False, pd.NA
    # a duplicate is its twin's network: ranking it too would put one network on the front twice
    done = (df["state"] == "COMPLETE") & df["val_accuracy"].notna() & df["memory"].notna() \
        & df["duplicate_of"].isna()
    if done.any():
        ranks = nondominated_ranks(df.loc[done, "val_accuracy"], df.loc[done, "memory"])
        df.loc[done, "rank"] = ranks
        df.loc[done, "pareto"] = ranks == 0
    other = [c for c in df.columns if c not in _COLUMNS and c not in fid_cols and c not in ("pareto", "rank")]
    df = df[_COLUMNS + ["pareto", "rank"] + fid_cols + other]
    return df.set_index("number").sort_index()


def front(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`trials_table` on the Pareto front, most accurate first."""
    return table[table["pareto"].astype(bool)].sort_values("val_accuracy", ascending=False)


def pareto_set(study, merged=None) -> pd.DataFrame:
    """The rows of :func:`trials_table` on the Pareto front (COMPLETE trials,
    longest-fidelity accuracy vs the memory objective), most accurate first.
    ``merged`` as in :func:`trials_table`."""
    return front(trials_table(study, merged))


def pareto_numbers(study, merged=None) -> set[int]:
    return set(int(n) for n in pareto_set(study, merged).index)


def spec_of(record):
    """The ArchSpec stored on a trial record (``user_attrs['spec']``), or None."""
    # imported here: models imports torch, which the readers (show: under 3 s at 5,000
    # trials, imports included) do not otherwise need
    from models import ArchSpec  # noqa: PLC0415
    text = record.user_attrs.get("spec")
    if not text:
        return None
    return ArchSpec.from_json(text if isinstance(text, str) else json.dumps(text))


# --------------------------------------------------------------------------
# counts and result files
# --------------------------------------------------------------------------

def _superseded(trials) -> set[int]:
    """Numbers of trials failed by heartbeat (or interrupted) and replaced by a retry."""
    out: set[int] = set()
    for t in trials:
        out.update(int(n) for n in t.system_attrs.get("retry_history", []))
    return out


def lineage_counts(trials) -> dict:
    """Counts over trial lineages (a retried trial is replaced by its retry):
    total, finished (COMPLETE + PRUNED + FAIL), and per state."""
    gone = _superseded(trials)
    by: dict[str, int] = {}
    for t in trials:
        if t.number not in gone:
            by[t.state.name] = by.get(t.state.name, 0) + 1
    finished = sum(by.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL"))
    return {"total": sum(by.values()), "finished": finished, "retried": len(gone), **by}


# --------------------------------------------------------------------------
# distinct networks: the one summary every command prints
# --------------------------------------------------------------------------

def distinct(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`trials_table` that are networks of their own: a trial that
    repeated an earlier network (``duplicate_of``) copied its twin's results and is
    folded into it, so one network is one point."""
    return table[table["duplicate_of"].isna()]


def scored(table: pd.DataFrame) -> pd.DataFrame:
    """Distinct COMPLETE networks with an accuracy (at the highest rung each reached)
    and a memory: the points of the front, the hypervolume and the plots."""
    nets = distinct(table)
    return nets[(nets["state"] == "COMPLETE") & nets["val_accuracy"].notna() & nets["memory"].notna()]


def hypervolume_history(table: pd.DataFrame, events=None) -> list[tuple[int, float]]:
    """``(trial number, normalised hypervolume)`` after each score of ``events``, in the order
    given: ``(trial number, val. accuracy)`` pairs, where a trial's later score replaces its
    earlier one (a promotion, in the order the scores were measured:
    :func:`studies.dashboard.measurements`). By default each distinct network's score, in trial
    order. The reference memory is fixed at 1.1 x the largest memory of the scored networks, so
    the last value is :func:`summary`'s once every network's final score is in."""
    done = scored(table).sort_index()
    if done.empty:
        return []
    ref = float(done["memory"].max()) * 1.1
    if events is None:
        events = list(zip(done.index, done["val_accuracy"]))
    mem = dict(zip(done.index.tolist(), done["memory"].astype(float).tolist()))
    events = [(int(n), float(a)) for n, a in events if int(n) in mem]
    numbers = [n for n, _ in events]
    # one pass, O(n log n) for n scores (a replaced score: see pareto.hypervolume_trace)
    return list(zip(numbers, hypervolume_trace(numbers, [a for _, a in events], [mem[n] for n in numbers], ref)))


def summary(study, table: pd.DataFrame | None = None, trials=None) -> dict:
    """What every command reports about a study, over distinct networks
    (``table``: :func:`trials_table` when the caller has it; ``trials``: the raw or
    merged trials, for the lineage counts):

    * ``trials``: :func:`lineage_counts` (Optuna's view: a duplicate counts as COMPLETE);
    * ``networks``: distinct networks scored (:func:`scored`); ``duplicates``: numbers
      of the COMPLETE trials that repeated an earlier network;
    * ``fidelities``: {epochs: networks scored there}, the highest rung each reached;
    * ``pareto``: the front's trial numbers, most accurate first;
    * ``hypervolume_normalized``: of the scored networks (:func:`hypervolume`);
    * ``retrained`` and ``kendall_tau_proxy_vs_retrain``: scored networks with a
      retrained accuracy, and Kendall's tau of proxy vs retrained accuracy over them
      (None below two).
    """
    table = trials_table(study) if table is None else table
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    attrs = study.user_attrs
    done = scored(table)
    dups = table[table["duplicate_of"].notna() & (table["state"] == "COMPLETE")]
    on_front = front(done)
    rt = done[done["retrain_test_accuracy"].notna()]
    tau = kendall_tau(rt["val_accuracy"], rt["retrain_test_accuracy"]) if len(rt) >= 2 else math.nan
    epochs = done["proxy_epochs"].dropna().astype(int)
    return {
        "study": study.study_name,
        "memory": attrs.get("memory", "inference"),
        "trials": lineage_counts(trials),
        "networks": int(len(done)),
        "duplicates": [int(n) for n in dups.index],
        "fidelities": {int(e): int(c) for e, c in sorted(epochs.value_counts().items())},
        "pareto": [int(n) for n in on_front.index],
        "hypervolume_normalized": hypervolume(done["val_accuracy"], done["memory"], normalize=True) if len(done)
        else 0.0,
        "retrained": int(len(rt)),
        "kendall_tau_proxy_vs_retrain": None if math.isnan(tau) else float(tau),
    }


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def counts_text(s: dict) -> str:
    """The trial counts of a :func:`summary` in words, duplicates apart:
    ``12 trials: 7 networks scored (5 at 1 epoch, 2 at 3 epochs), 1 duplicate, 3 pruned, 1 failed``."""
    c = s["trials"]
    dups = len(s["duplicates"])
    fid = ", ".join(f"{n} at {plural(e, 'epoch')}" for e, n in s["fidelities"].items())
    parts = [plural(s["networks"], "network") + " scored" + (f" ({fid})" if fid else "")]
    if dups:
        parts.append(plural(dups, "duplicate") + " of an earlier network")
    unscored = c.get("COMPLETE", 0) - s["networks"] - dups         # complete, but without accuracy or memory
    if unscored > 0:
        parts.append(f"{unscored} complete without scores")
    parts += [f"{c[k]} {w}" for k, w in (("PRUNED", "pruned"), ("FAIL", "failed"), ("RUNNING", "running"),
                                          ("WAITING", "waiting")) if c.get(k)]
    return f"{plural(c['total'], 'trial')}: " + ", ".join(parts)


def summary_lines(s: dict) -> list[str]:
    """A :func:`summary` as the sentences ``show`` and ``retrain`` print (unwrapped)."""
    n = len(s["pareto"])
    front = (f"Pareto front: {plural(n, 'network')} (val. accuracy at the highest proxy rung each reached "
             f"vs {s['memory']} memory per image); hypervolume {s['hypervolume_normalized']:.4f}")
    tau = s["kendall_tau_proxy_vs_retrain"]
    if tau is not None:
        front += f"; Kendall's tau {tau:+.3f} (proxy vs retrained accuracy, {s['retrained']} networks)"
    elif s["retrained"]:
        front += f"; Kendall's tau n/a ({plural(s['retrained'], 'network')} retrained, needs 2)"
    return [f"study {s['study']!r}: {counts_text(s)}", front]


def budget_text(budget, tolerance=None) -> str:
    """A budget as the command line takes it (``parse_budget`` reads it back):
    ``100k parameters ± 10%``."""
    try:
        b = float(budget)
    except (TypeError, ValueError):
        return str(budget)
    text = f"{b / 1e6:g}M" if b >= 1e6 else f"{b / 1e3:g}k" if b >= 1e3 else f"{b:g}"
    if tolerance is not None:
        text += f" parameters ± {float(tolerance) * 100:g}%"
    return text


def results_dir(name: str) -> Path:
    return data_home() / "results" / name


def write_results(study) -> tuple[Path, dict]:
    """``results/NAME/trials.csv`` (the show table, all columns) and ``summary.json``
    (:func:`summary` and the study's settings) in the data home, rewritten by every
    ``run`` and ``retrain``; returns the folder and the summary. ``study``: a study or
    a :class:`Snapshot` of it."""
    snap = snapshot(study)
    out = results_dir(snap.study_name)
    out.mkdir(parents=True, exist_ok=True)
    df = snap.table()
    df.to_csv(out / "trials.csv")
    s = dict(snap.summary())
    s["settings"] = {k: v for k, v in snap.user_attrs.items() if not k.startswith((FIDELITY_PREFIX, RETRAIN_PREFIX))}
    (out / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
    return out, s
