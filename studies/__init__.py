"""The Optuna study layer (SPEC §6): run, retrain and show a study; helpers for readers.

Commands (called by ``search.py`` with its argparse Namespace)::

    run_command(args)       create or resume a study, run it to N trials with K workers
    retrain_command(args)   fully retrain the Pareto set (+ enqueued presets)
    show_command(args)      the trials table / Pareto set (pandas), optionally as CSV

Helpers for readers (dashboard, export, notebooks)::

    open_study(name, storage=None) -> (study, url)   one-line ValueError if unknown
    trials_with_results(study)  trials with promotion + retrain results folded into user_attrs
    trials_table(study)         pandas DataFrame, one row per trial
    pareto_set(study), pareto_numbers(study), kendall_tau(x, y), hypervolume(acc, mem)

The user-attribute schema is in ``studies/README.md``.
"""
from __future__ import annotations

from .storage import (StorageError, default_url, list_study_names, open_storage, redact_url, resolve_url,
                      studies_dir)
from .table import (crowding_distance, fidelity_results, hypervolume, kendall_tau, memory_key,
                    nondominated_ranks, pareto_mask, pareto_numbers, pareto_set, rank_for_promotion,
                    retrain_results, spec_of, trials_table, trials_with_results)

__all__ = ["StorageError", "crowding_distance", "default_url", "fidelity_results", "hypervolume", "kendall_tau",
           "list_study_names", "memory_key", "nondominated_ranks", "open_storage", "open_study", "pareto_mask",
           "pareto_numbers", "pareto_set", "rank_for_promotion", "redact_url", "resolve_url", "retrain_command",
           "retrain_results", "run_command", "run_study", "show_command", "spec_of", "studies_dir",
           "trials_table", "trials_with_results"]


def open_study(name: str, storage: str | None = None):
    """Load an existing study (never creates one): ``(study, url)``. An unknown name
    is a one-line ValueError listing the studies in that storage."""
    import optuna

    from .run import _quiet

    _quiet()
    url = resolve_url(name, storage)

    def unknown() -> ValueError:
        names = list_study_names(storage)
        where = f"in {redact_url(url)}" if storage else f"in {studies_dir()}"
        hint = f"; studies there: {', '.join(names[:20])}" if names else "; there are no studies there"
        return ValueError(f"unknown study {name!r} {where}{hint}")

    try:
        st = open_storage(url, create=False)
    except StorageError:
        if storage is None:
            raise unknown() from None
        raise
    try:
        return optuna.load_study(study_name=name, storage=st), url
    except KeyError:
        raise unknown() from None


def run_study(opts, say=None):
    from .run import run_study as _run
    return _run(opts, say)


def run_command(args) -> None:
    from .run import run_command as _cmd
    _cmd(args)


def retrain_command(args) -> None:
    from .retrain import retrain_command as _cmd
    _cmd(args)


_SHOW = ["state", "val_accuracy", "memory", "params", "macs", "architecture", "proxy_epochs",
         "retrain_test_accuracy", "preset", "fail_reason"]


def _display(df):
    """The table's main columns as short strings, for the terminal."""
    import pandas as pd

    def num(fmt):
        return lambda v: "" if pd.isna(v) else fmt(v)

    out = df[_SHOW].copy()
    out["val_accuracy"] = out["val_accuracy"].map(num(lambda v: f"{v:.4f}"))
    out["retrain_test_accuracy"] = out["retrain_test_accuracy"].map(num(lambda v: f"{v:.4f}"))
    out["memory"] = out["memory"].map(num(lambda b: f"{b / 1024:,.1f} KiB"))
    out["params"] = out["params"].map(num(lambda v: f"{int(v):,}"))
    out["macs"] = out["macs"].map(num(lambda v: f"{v / 1e6:,.1f}M"))
    out["proxy_epochs"] = out["proxy_epochs"].map(num(lambda v: str(int(v))))
    for c in ("architecture", "preset", "fail_reason"):
        out[c] = out[c].map(lambda r: "" if not isinstance(r, str) else (r[:57] + "...") if len(r) > 60 else r)
    return out.rename(columns={"val_accuracy": "val_acc", "retrain_test_accuracy": "test_acc",
                               "proxy_epochs": "epochs"})


def show_command(args) -> None:
    """Print the trials table (or the Pareto set) and a one-line summary; ``--csv`` writes all columns."""
    import pandas as pd

    from .run import lineage_counts

    study, url = open_study(args.study, args.storage)
    table = trials_table(study)
    df = table[table["pareto"].astype(bool)].sort_values("val_accuracy", ascending=False) if args.pareto else table
    if args.csv:
        df.to_csv(args.csv)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250,
                           "display.max_colwidth", 70):
        print(_display(df).to_string() if len(df) else "(no trials)")
    c = lineage_counts(study.get_trials(deepcopy=False))
    states = ", ".join(f"{c[s]} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING") if c.get(s))
    mem = study.user_attrs.get("memory", "inference")
    done = table[(table["state"] == "COMPLETE") & table["val_accuracy"].notna() & table["memory"].notna()]
    hv = hypervolume(done["val_accuracy"], done["memory"], normalize=True) if len(done) else 0.0
    print(f"study {args.study!r}: {c['total']} trials ({states or 'none'}); Pareto set "
          f"{int(table['pareto'].astype(bool).sum())} (accuracy vs {mem} memory), hypervolume {hv:.4f}; "
          f"storage {redact_url(url)}")
    if args.csv:
        print(f"table written to {args.csv}")


from .dashboard import dashboard_command  # noqa: E402  (search.py dashboard)
from .export import export_command  # noqa: E402  (search.py export)
