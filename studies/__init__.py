"""The Optuna study: run it, retrain its Pareto set, read it, show it, export from it.

The Python form of the commands (``search.py`` is a thin layer over these)::

    import studies
    studies.run("demo", trials=12, budget="100k", tolerance=0.1, synthetic=True, device="cpu")
    df = studies.show("demo", pareto=True)            # pandas DataFrame, one row per trial
    studies.retrain("demo", epochs=2)                  # protocol="paper": each network its paper's
    studies.retrains("demo")                          # every retrain: protocol, epochs, accuracy per epoch
    studies.dashboard("demo")                         # writes <data home>/demo.html
    studies.export("demo")                            # writes <data home>/exports/demo/

Readers: ``open_study``, ``read_study`` (a :class:`~studies.results.Snapshot`: the
study read once), ``trials_with_results``, ``trials_table``, ``pareto_set``,
``kendall_tau``, ``hypervolume`` (:mod:`studies.results`).

Files, each one job: ``config`` (options and stored settings, the one home of
their defaults), ``storage`` (data home, URLs, the storage opened once), ``rdb``
(Optuna's RDB storage read in bulk and written in batches), ``claims`` (who does a
piece of shared work), ``journal``, ``file_claims``, ``grpc_proxy`` and ``plain_store``
(a study in a journal file or through Optuna's gRPC proxy, heartbeats in its claims), ``session`` (a study resolved once, handed to its workers),
``objective`` (one trial), ``worker`` (taking trials, the worker loop, worker
processes), ``promotion`` (multi-fidelity), ``launch`` (``run``), ``retrain``,
``retrain_protocol`` (the paper rule, retrain labels), ``results`` (a study read
once, merged records, tables, the one summary every command prints), ``pareto``
(non-dominated sorting, crowding, hypervolume and its history, Kendall's tau),
``dashboard`` (the page), ``page_sections``, ``figures``, ``space_plots``,
``sortable_table`` and ``page_script`` (its sections, plots, importance and parallel
coordinates, tables, style and script), ``export``.

Importing ``studies`` loads only what reading a study needs (``storage``,
``results``); the rest, which brings torch, loads on first use of its names, so
``search.py show`` starts without torch.

May import: ``models``, ``search_space``, ``trainers``, optuna, pandas, plotly.
Study databases and results live in the data home (``./studies-data`` or
``$STACKNAS_HOME``), never in this package's folder.
"""
from __future__ import annotations

import importlib
import sys
import types

import optuna
import pandas as pd

from .results import (Snapshot, crowding_distance, distinct, fidelity_results, front, hypervolume, kendall_tau,
                      lineage_counts, memory_key, nondominated_ranks, pareto_mask, pareto_numbers, pareto_set,
                      rank_for_promotion, retrain_results, spec_of, summary, summary_lines, trials_table,
                      trials_with_results)
from .retrain_protocol import REACH
from .storage import (StorageError, data_home, default_url, open_existing, quiet_optuna, redact_url, resolve_url,
                      storage_errors)

__all__ = ["RunOptions", "Snapshot", "StorageError", "StudySettings", "crowding_distance", "dashboard", "data_home",
           "default_url", "distinct", "export", "export_dir", "fidelity_results", "hypervolume", "kendall_tau",
           "lineage_counts", "memory_key", "nondominated_ranks", "open_study", "pareto_mask", "pareto_numbers",
           "pareto_set", "rank_for_promotion", "read_study", "redact_url", "resolve_url", "retrain", "retrain_results",
           "retrains", "run", "show", "spec_of", "summary", "summary_lines", "trials_table", "trials_with_results"]

# names whose modules import torch (models, trainers): loaded on first use
_LAZY = {"RunOptions": "config", "StudySettings": "config", "dashboard": "dashboard", "export": "export",
         "export_dir": "export", "run": "launch", "retrain": "retrain"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """``studies.retrain``, ``studies.export`` and ``studies.dashboard`` are the functions, as
    they were when this package imported everything at once: importing one of the modules of
    those names (``from studies.retrain import ...``) must not rebind the package's name to the
    module, which Python's import system does unless the package refuses."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in _LAZY and _LAZY[name] == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def open_study(name: str, storage: str | None = None) -> optuna.Study:
    """Load an existing study (never creates one); an unknown name is a one-line
    ValueError listing the studies in that storage."""
    quiet_optuna()
    with storage_errors(resolve_url(name, storage)):
        return open_existing(name, storage).study()


def read_study(name: str, storage: str | None = None) -> Snapshot:
    """An existing study read once (:class:`~studies.results.Snapshot`: its trials, without
    their sampled parameters, and attributes; the merged records, table and summary worked
    out once)."""
    quiet_optuna()
    with storage_errors(resolve_url(name, storage)):
        store = open_existing(name, storage)
        snap = Snapshot(store.study(), store.read_trials())
        snap.table()
    return snap


def show(study: str, storage: str | None = None, *, pareto: bool = False) -> pd.DataFrame:
    """The trials table of ``study`` (every column; :func:`studies.results.trials_table`),
    or with ``pareto`` its Pareto set, most accurate first."""
    table = read_study(study, storage).table()
    if pareto:
        return front(table)
    return table


def retrains(study: str, storage: str | None = None, *, reach=REACH) -> pd.DataFrame:
    """Every retrain of ``study``, one row per network and label
    (:func:`studies.retrain.retrain_table`): protocol and epochs, overrides, status, test
    accuracy, the epochs it took to reach each accuracy of ``reach`` (001 Table 4) and the
    test accuracy after every epoch."""
    from .retrain import retrain_table  # noqa: PLC0415 - torch (see _LAZY)
    st = open_study(study, storage)
    with storage_errors(resolve_url(study, storage)):
        return retrain_table(st, reach)
