#!/usr/bin/env python
"""Neural-architecture search over stacking schemes of residual networks.

    python search.py run --study NAME --budget 1.0M --trials N [...]   create or resume a study
    python search.py retrain --study NAME [--protocol fast]            fully retrain the Pareto set
    python search.py show --study NAME [--pareto] [--csv FILE]         table of trials
    python search.py dashboard --study NAME [--out FILE.html]          Pareto-front dashboard (HTML)
    python search.py export --study NAME [--trial N | --best] --out DIR  spec, weights, model.pt2, card
    python search.py describe NAME_OR_SPEC_FILE                        params, MACs, memory as JSON
    python search.py presets                                           list the papers' networks

The commands are thin: each maps its flags onto a function of ``studies`` (or
``models``) and prints the outcome. Flags and their defaults come from those
functions (``studies.config.RunOptions`` for ``run``, the signatures of
``studies.retrain`` / ``export`` / ``dashboard``), never copied here. Errors a
user can fix end the program with a one-line message and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import sys
from pathlib import Path

import pandas as pd

import models
import studies
import trainers
from models import ArchSpec, SpecError, presets
from models.measure import count_macs, count_params, peak_memory
from studies.config import RunOptions
from studies.export import BEST_RULE


class UserError(Exception):
    """A problem with the command's input, reported in one line."""


# --------------------------------------------------------------------------
# flags from the functions they call
# --------------------------------------------------------------------------

def _flags_from_options(parser: argparse.ArgumentParser, cls=RunOptions) -> None:
    """One flag per field of ``cls`` with its metadata; argparse leaves a flag the user did
    not give out of the namespace (``SUPPRESS``), so the field's own default applies."""
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if not meta.pop("cli", True):
            continue
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        required = meta.pop("required", False)
        default = None if f.default is dataclasses.MISSING else f.default
        text = meta.pop("help")
        if not required and default not in (None, False, True, (), [], {}):
            text += f" (default: {default})"
        parser.add_argument(flag, dest=f.name, help=text, required=required,
                            default=argparse.SUPPRESS, **meta)


def _signature_default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


def _study_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL (default: NAME.db in the data home, ./studies-data or "
                             "$STACKNAS_HOME)")


def _given(args, *names: str) -> dict:
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------

def cmd_run(args) -> None:
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "study", "trials")}
    counts = studies.run(args.study, args.trials, **options)
    states = ", ".join(f"{counts.get(s, 0)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if counts.get(s))
    print(f"study {args.study!r}: {counts['finished']}/{counts['total']} trials finished ({states or 'none'}); "
          f"Pareto set: {counts['pareto']} trial(s)")
    _where(args.study, getattr(args, "storage", None), counts["storage"], counts["results"])


def _where(name: str, storage: str | None, url: str, results: str | None = None) -> None:
    flag = f" --storage {studies.redact_url(storage)}" if storage else ""
    print(f"storage: {studies.redact_url(url)}")
    if results:
        print(f"results: {results}")
    print(f"next:    python search.py show --study {name}{flag} --pareto\n"
          f"         python search.py retrain --study {name}{flag}\n"
          f"         python search.py dashboard --study {name}{flag}")


_SHOW = ["state", "val_accuracy", "memory", "params", "macs", "architecture", "proxy_epochs",
         "retrain_test_accuracy", "preset", "fail_reason"]


def _display(df: pd.DataFrame) -> pd.DataFrame:
    """The table's main columns as short strings, for the terminal."""
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


def _print_table(df: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250,
                           "display.max_colwidth", 70):
        print(_display(df).to_string() if len(df) else "(no trials)")


def cmd_show(args) -> None:
    """The trials table (or the Pareto set) and a one-line summary; ``--csv`` writes all columns."""
    study = studies.open_study(args.study, args.storage)
    table = studies.trials_table(study)
    df = table[table["pareto"].astype(bool)].sort_values("val_accuracy", ascending=False) if args.pareto else table
    if args.csv:
        df.to_csv(args.csv)
    _print_table(df)
    c = studies.lineage_counts(study.get_trials(deepcopy=False))
    states = ", ".join(f"{c[s]} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING") if c.get(s))
    done = table[(table["state"] == "COMPLETE") & table["val_accuracy"].notna() & table["memory"].notna()]
    hv = studies.hypervolume(done["val_accuracy"], done["memory"], normalize=True) if len(done) else 0.0
    print(f"study {args.study!r}: {c['total']} trials ({states or 'none'}); Pareto set "
          f"{int(table['pareto'].astype(bool).sum())} (accuracy vs {study.user_attrs.get('memory', 'inference')} "
          f"memory), hypervolume {hv:.4f}; storage {studies.redact_url(studies.resolve_url(args.study, args.storage))}")
    if args.csv:
        print(f"table written to {args.csv}")


def cmd_retrain(args) -> None:
    kw = _given(args, "protocol", "epochs", "data", "synthetic", "device", "progress")
    studies.retrain(args.study, args.storage, **kw)
    df = studies.trials_table(studies.open_study(args.study, args.storage))
    done = df[df["retrain_test_accuracy"].notna()]
    if len(done):
        _print_table(done)
        nets = done[done["duplicate_of"].isna()]          # a duplicate is its twin's network
        tau = studies.kendall_tau(nets["val_accuracy"], nets["retrain_test_accuracy"])
        print(f"Kendall's tau (proxy vs retrained accuracy, {len(nets)} networks): "
              + ("n/a" if math.isnan(tau) else f"{tau:+.3f}"))
    print(f"weights under {studies.data_home() / 'runs' / args.study}")
    _where(args.study, args.storage, studies.resolve_url(args.study, args.storage))


def cmd_dashboard(args) -> None:
    summary = studies.dashboard(args.study, args.storage, args.out)
    if summary["message"]:
        print(summary["message"])
    else:
        tau = summary["kendall_tau"]
        print(f"{summary['complete']} completed trials, {summary['pareto']} on the Pareto front, "
              f"{summary['retrained']} retrained" + (f" (Kendall's tau {tau:.3f})" if tau is not None else ""))
    out = Path(summary["path"])
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, self-contained)")
    if args.open:
        import webbrowser  # noqa: PLC0415 - only for --open
        webbrowser.open(out.resolve().as_uri())


def cmd_export(args) -> None:
    summary = studies.export(args.study, args.out, trial=None if args.best else args.trial, storage=args.storage,
                             force=args.force, device=args.device)
    print(f"exported trial {summary['trial']} ({summary['rule']}) to {args.out}: "
          f"{', '.join(Path(f).name for f in summary['files'])}")


def _load_spec(name_or_file: str) -> ArchSpec:
    path = Path(name_or_file)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise UserError(f"spec file {name_or_file!r} does not exist")
        try:
            text = path.read_text()
        except OSError as e:
            raise UserError(f"cannot read spec file {name_or_file!r}: {e.strerror}") from None
        return ArchSpec.from_json(text).validate(require_widths=True)
    return presets.get(name_or_file)


def cmd_describe(args) -> None:
    spec = _load_spec(args.spec)
    net = models.build(spec)
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    out = {
        "name": spec.name,
        "params": count_params(net),
        "macs": count_macs(net, (1, *shape)),
        "inference_bytes_per_image": peak_memory(net, shape, mode="inference"),
        "training_bytes_per_image": peak_memory(net, shape, mode="training"),
        "architecture": models.describe(spec),
        "stages": models.stage_summaries(spec),
        "spec": spec.to_dict(),
    }
    print(json.dumps(out, indent=None if args.compact else 2))


def cmd_presets(args) -> None:
    for name in presets.names():
        i = presets.info(name)
        print(f"{name:32s} {i.paper_params or '':>9s}  {i.source}")


# --------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="create or resume a study and run trials")
    _flags_from_options(r)
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("retrain", help="fully retrain the Pareto set")
    _study_flags(t)
    protocols = [k for k in trainers.PROTOCOLS if k != "proxy"]
    t.add_argument("--protocol", choices=protocols, default=argparse.SUPPRESS,
                   help=f"training protocol (default: {_signature_default(studies.retrain, 'protocol')})")
    t.add_argument("--epochs", type=int, default=argparse.SUPPRESS, help="override the protocol's epochs")
    t.add_argument("--data", default=argparse.SUPPRESS, metavar="DIR",
                   help="where CIFAR-10 is on this machine (default: the folder the study searched with)")
    t.add_argument("--synthetic", action="store_true", default=argparse.SUPPRESS,
                   help="the study searched on synthetic data (its own settings decide; this only checks)")
    t.add_argument("--device", default=argparse.SUPPRESS, help="cuda or cpu (default: cuda if available)")
    t.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                   help="no progress bars")
    t.set_defaults(func=cmd_retrain)

    s = sub.add_parser("show", help="table of trials (pandas)")
    _study_flags(s)
    s.add_argument("--pareto", action="store_true", help="only the Pareto set")
    s.add_argument("--csv", default=None, help="also write the table to this CSV file")
    s.set_defaults(func=cmd_show)

    d = sub.add_parser("dashboard", help="self-contained HTML dashboard of a study")
    _study_flags(d)
    d.add_argument("--out", default=None, help="HTML file (default: NAME.html in the data home)")
    d.add_argument("--open", action="store_true", help="open it in a browser")
    d.set_defaults(func=cmd_dashboard)

    e = sub.add_parser("export", help="export a trial as spec, weights, torch.export program and card")
    _study_flags(e)
    g = e.add_mutually_exclusive_group()
    g.add_argument("--trial", type=int, default=None, help="trial number")
    g.add_argument("--best", action="store_true", help=f"the default: {BEST_RULE}")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    e.add_argument("--device", default=None, help="device the program is exported on (default: cpu)")
    e.set_defaults(func=cmd_export)

    ds = sub.add_parser("describe", help="params, MACs and memory of a preset or spec file, as JSON")
    ds.add_argument("spec", help="preset name (see `presets`) or a spec JSON file")
    ds.add_argument("--compact", action="store_true", help="one-line JSON")
    ds.set_defaults(func=cmd_describe)

    ps = sub.add_parser("presets", help="list the papers' networks")
    ps.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, SpecError, ValueError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
