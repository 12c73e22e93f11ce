"""The Optuna study: run it, retrain its Pareto set, read it, show it, export from it.

The Python form of the commands (``search.py`` is a thin layer over these)::

    import studies
    studies.run("demo", trials=12, budget="100k", tolerance=0.1, synthetic=True, device="cpu")
    df = studies.show("demo", pareto=True)            # pandas DataFrame, one row per trial
    studies.retrain("demo", epochs=2)                  # protocol="paper": each network its paper's
    studies.retrains("demo")                          # every retrain: protocol, epochs, accuracy per epoch
    studies.dashboard("demo")                         # writes <data home>/demo.html
    studies.export("demo")                            # writes <data home>/exports/demo/

Readers: ``open_study``, ``trials_with_results``, ``trials_table``,
``pareto_set``, ``kendall_tau``, ``hypervolume`` (:mod:`studies.results`).

Files, each one job: ``config`` (options and stored settings, the one home of
their defaults), ``storage`` (data home, URLs, the storage opened once,
claims), ``objective`` (one trial), ``worker`` (taking trials, the worker
loop, worker processes), ``promotion`` (multi-fidelity), ``launch`` (``run``),
``retrain``, ``retrain_protocol`` (the paper rule, retrain labels),
``results`` (merged records, tables, the one summary every command
prints), ``pareto`` (non-dominated sorting, crowding, hypervolume, Kendall's
tau), ``dashboard`` (the page), ``page_sections``, ``figures``, ``space_plots``,
``sortable_table`` and ``page_script`` (its sections, plots, importance and parallel
coordinates, tables, style and script), ``export``.

May import: ``models``, ``search_space``, ``trainers``, optuna, pandas, plotly.
Study databases and results live in the data home (``./studies-data`` or
``$STACKNAS_HOME``), never in this package's folder.
"""
from __future__ import annotations

import optuna
import pandas as pd

from .config import RunOptions, StudySettings
from .dashboard import dashboard
from .export import export, export_dir
from .launch import run
from .results import (crowding_distance, distinct, fidelity_results, front, hypervolume, kendall_tau, lineage_counts,
                      memory_key, nondominated_ranks, pareto_mask, pareto_numbers, pareto_set, rank_for_promotion,
                      retrain_results, spec_of, summary, summary_lines, trials_table, trials_with_results)
from .retrain import REACH, retrain, retrain_table
from .storage import StorageError, data_home, default_url, open_existing, redact_url, resolve_url, storage_errors
from .worker import quiet_optuna

__all__ = ["RunOptions", "StorageError", "StudySettings", "crowding_distance", "dashboard", "data_home",
           "default_url", "distinct", "export", "export_dir", "fidelity_results", "hypervolume", "kendall_tau", "lineage_counts",
           "memory_key", "nondominated_ranks", "open_study", "pareto_mask", "pareto_numbers", "pareto_set",
           "rank_for_promotion", "redact_url", "resolve_url", "retrain", "retrain_results", "retrains", "run", "show",
           "spec_of", "summary", "summary_lines", "trials_table", "trials_with_results"]


def open_study(name: str, storage: str | None = None) -> optuna.Study:
    """Load an existing study (never creates one); an unknown name is a one-line
    ValueError listing the studies in that storage."""
    quiet_optuna()
    with storage_errors(resolve_url(name, storage)):
        return open_existing(name, storage).study()


def show(study: str, storage: str | None = None, *, pareto: bool = False) -> pd.DataFrame:
    """The trials table of ``study`` (every column; :func:`studies.results.trials_table`),
    or with ``pareto`` its Pareto set, most accurate first."""
    st = open_study(study, storage)
    with storage_errors(resolve_url(study, storage)):
        table = trials_table(st)
    if pareto:
        return front(table)
    return table


def retrains(study: str, storage: str | None = None, *, reach=REACH) -> pd.DataFrame:
    """Every retrain of ``study``, one row per network and label
    (:func:`studies.retrain.retrain_table`): protocol and epochs, overrides, status, test
    accuracy, the epochs it took to reach each accuracy of ``reach`` (001 Table 4) and the
    test accuracy after every epoch."""
    st = open_study(study, storage)
    with storage_errors(resolve_url(study, storage)):
        return retrain_table(st, reach)
