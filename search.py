#!/usr/bin/env python
"""Neural-architecture search over stacking schemes of residual networks.

    python search.py run --study NAME --budget 1.0M --trials N [...]   create or resume a study
    python search.py retrain --study NAME [--protocol fast|paper|...]  fully retrain the Pareto set
    python search.py show --study NAME [--pareto|--retrains] [--csv F] table of trials (or of retrains)
    python search.py dashboard --study NAME [--out FILE.html] [--watch S]  the results page (HTML)
    python search.py export --study NAME [--trial N | --best] [--out DIR]  spec, weights, model.pt2, card
    python search.py describe NAME_OR_SPEC_FILE [--svg FILE]           params, MACs, memory as JSON
    python search.py presets                                           list the papers' networks
    python search.py proxy --storage DATABASE_URL [--port 13000]       gRPC storage proxy for many workers

The commands are thin: each maps its flags onto a function of ``studies`` (or
``models``) and prints the outcome. Flags and their defaults come from those
functions (``studies.config.RunOptions`` for ``run``, the signatures of
``studies.retrain`` / ``export`` / ``dashboard``), never copied here. Errors a
user can fix end the program with a one-line message and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import inspect
import json
import math
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pandas as pd

# torch comes with models, trainers and most of studies: each command imports what it uses
# (late, below), so that `show` starts without torch (under 3 s at 5,000 trials, imports included)
import studies
from studies import grpc_proxy, signals
from studies.retrain_protocol import PAPER, PAPER_RULE, REACH, protocol_epochs, retrain_protocols


class UserError(Exception):
    """A problem with the command's input, reported in one line."""


# --------------------------------------------------------------------------
# flags from the functions they call
# --------------------------------------------------------------------------

def _flags_from_options(parser: argparse.ArgumentParser, cls=None) -> None:
    """One flag per field of ``cls`` (default :class:`studies.config.RunOptions`) with its metadata;
    argparse leaves a flag the user did not give out of the namespace (``SUPPRESS``), so the
    field's own default applies."""
    cls = cls or studies.RunOptions
    from studies.config import RESUME as resume  # noqa: PLC0415 - with RunOptions, which brings torch
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if not meta.pop("cli", True):
            continue
        meta.pop("internal", None)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        required = meta.pop("required", False)
        default = None if f.default is dataclasses.MISSING else f.default
        text = meta.pop("help")
        if not required and default not in (None, False, True, (), [], {}):
            text += f" (default: {default})"
        if f.name in resume:
            text += resume[f.name].help().replace("%", "%%")
        parser.add_argument(flag, dest=f.name, help=text, required=required,
                            default=argparse.SUPPRESS, **meta)


def _signature_default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


def _study_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL (default: NAME.db in the data home, ./studies-data or "
                             "$STACKNAS_HOME); also journal:///ABS/PATH/NAME.log or grpc://HOST:PORT?claims=DB_URL")


@contextlib.contextmanager
def _writing(path):
    """Around writing a file the user named: a failure says "cannot write" with the path, whatever
    the errno (creating a file under /proc fails with "No such file or directory")."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {e.filename or path}: {e.strerror or e}") from None


def _accuracy(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"an accuracy is a fraction in (0, 1], e.g. 0.85; got {text!r}")
    return v


def _given(args, *names: str) -> dict:
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------

def cmd_run(args) -> None:
    import trainers  # noqa: PLC0415 - torch, which run needs anyway
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "study", "trials")}
    try:
        counts = studies.run(args.study, args.trials, **options)
    except trainers.DataNotFoundError as e:
        raise UserError(f"{_one_line(e)}; for a first try without it, start a study with --synthetic (a small "
                        f"generated data set that trains on a CPU)") from None
    for line in studies.summary_lines(counts["summary"]):
        print(line)
    data = (counts["summary"].get("settings") or {}).get("data") or {}
    quick = data.get("kind") == "synthetic" or (getattr(args, "device", None) or "") == "cpu"
    _where(args.study, getattr(args, "storage", None), counts["storage"], counts["results"], after="run",
           quick=quick)


def _where(name: str, storage: str | None, url: str, results: str | None = None, *, after: str,
           quick: bool = False) -> None:
    """Where the study is, and the commands that come next: after ``run``, look, retrain (on a CPU
    or synthetic data a 2-epoch check, since the default protocol trains for long), see the page;
    after ``retrain``, see the page and export the winner."""
    flag = f" --storage {studies.redact_url(storage)}" if storage else ""
    print(f"storage: {studies.redact_url(url)}")
    if results:
        print(f"results: {results}")
    default = _signature_default(studies.retrain, "protocol")
    steps = [f"python search.py dashboard --study {name}{flag}"]
    if after == "run":
        long = protocol_epochs(default)
        retrain = (f"python search.py retrain --study {name}{flag} --epochs 2   (a quick check; without --epochs "
                   f"the '{default}' protocol trains {long} epochs)" if quick else
                   f"python search.py retrain --study {name}{flag}")
        steps = [f"python search.py show --study {name}{flag} --pareto", retrain] + steps
    else:
        steps.append(f"python search.py export --study {name}{flag} --best   (writes "
                     f"{studies.export_dir(name)})")
    print("next:    " + "\n         ".join(steps))


# the terminal table: (column of studies.trials_table, header, right-aligned, cell text); the page's units
_SHOW = [
    ("state", "state", False, lambda v: str(v).lower()),
    ("val_accuracy", "val acc %", True, lambda v: f"{100 * v:.2f}"),
    ("proxy_epochs", "epochs", True, lambda v: str(int(v))),
    ("retrain_test_accuracy", "test acc %", True, lambda v: f"{100 * v:.2f}"),
    ("retrain", "retrain", False, str),
    ("memory", "MiB/image", True, lambda v: f"{v / 2 ** 20:.3f}"),
    ("params", "params", True, lambda v: f"{int(v):,}"),
    ("macs", "MMACs", True, lambda v: f"{v / 1e6:,.1f}"),
    ("pareto", "front", False, lambda v: "*" if v else ""),
    ("preset", "preset", False, str),
    ("architecture", "architecture", False, str),
    ("fail_reason", "note", False, lambda v: str(v).strip().splitlines()[0] if str(v).strip() else ""),
]
_DROP_FIRST = ["macs", "params", "preset", "pareto", "proxy_epochs", "retrain", "fail_reason"]   # when narrow
_FREE = {"architecture": 28, "fail_reason": 16}   # free-text columns: characters each keeps before a column is dropped
_LEGEND = {"val_accuracy": "val acc %: proxy validation accuracy at the highest rung the trial reached",
           "proxy_epochs": "epochs: that rung's epochs",
           "retrain_test_accuracy": "test acc %: after the latest retrain, on the test split",
           "retrain": "retrain: its protocol and epochs, over the protocol's epochs where it ran fewer "
                      "(fast 2/40ep: a short run, not the protocol's result)",
           "memory": "MiB/image: {memory} memory, peak live tensors per image",
           "pareto": "front *: on the Pareto front",
           "duplicate": "dup of N: the same network as trial N, not trained again (counted once)"}


def _wrap(text: str, width: int, sep: str = " ") -> list[str]:
    """``text`` in lines of at most ``width``, broken at ``sep`` (an architecture: between its
    stages, the `` |`` kept at the line's end), then at spaces."""
    if len(text) <= width:
        return [text]
    if sep == " ":
        return textwrap.wrap(text, width, break_on_hyphens=False) or [""]
    parts, tail = text.split(sep), sep.rstrip()          # a line that is not the last ends with the tail
    lines, cur = [], parts[0]
    for i, part in enumerate(parts[1:], 2):
        if len(cur + sep + part) + (0 if i == len(parts) else len(tail)) <= width:
            cur += sep + part
        else:
            lines.append(cur + tail)
            cur = part
    lines.append(cur)
    out = []
    for i, line in enumerate(lines):
        if len(line) <= width:
            out.append(line)
            continue
        # a stage too long for the column: wrap it without its tail, then put the tail back on
        # its last line, so a lone "|" never takes a line of its own
        end = tail if i < len(lines) - 1 and line.endswith(tail) else ""
        pieces = textwrap.wrap(line[:len(line) - len(end)], max(1, width - len(end)), break_on_hyphens=False)
        out += pieces[:-1] + [pieces[-1] + end]
    return out


def _display(df: pd.DataFrame, width: int) -> tuple[list[str], list[str], list[str]]:
    """(lines of at most ``width`` characters, the columns shown, the columns left out to fit):
    always-empty columns dropped,
    free text wrapped inside its column (an architecture between stages), a trial without an
    architecture (pruned) given its note there, the least useful columns dropped while the rest
    cannot fit. A duplicate shows ``dup of N`` and no copied numbers: it is trial N's network."""
    if not len(df):
        return ["(no trials)"], [], []
    # one pass over the columns shown: iterrows makes a Series per row, of every column
    records = df[[k for k in dict.fromkeys([*(k for k, *_ in _SHOW), "duplicate_of"]) if k in df.columns]
                 ].to_dict("records")
    cols: dict[str, list[str]] = {}
    for key, _, _, fmt in _SHOW:
        cols[key] = []
        for row in records:
            v, twin = row.get(key), row.get("duplicate_of")
            if not pd.isna(twin):
                cols[key].append(f"dup of {int(twin)}" if key == "state" else
                                 v if key == "architecture" and isinstance(v, str) else "")
                continue
            missing = v is None or v is False or (not isinstance(v, str) and pd.isna(v))
            cols[key].append("" if missing else fmt(v))
    head = {k: h for k, h, _, _ in _SHOW}
    prose = [not a and bool(n) for a, n in zip(cols["architecture"], cols["fail_reason"])]
    if any(prose):     # no architecture (pruned before one was built): the note takes its place
        head["architecture"] = "architecture or note"
        cols["architecture"] = [n if p else a for a, n, p in zip(cols["architecture"], cols["fail_reason"], prose)]
        cols["fail_reason"] = ["" if p else n for n, p in zip(cols["fail_reason"], prose)]
    keys = [k for k, *_ in _SHOW if any(cols[k]) and not (k == "pareto" and all(cols[k]))]   # --pareto: all *
    dropped = []
    right = {k: r for k, _, r, _ in _SHOW}
    number = [str(n) for n in df.index]
    nw = max(1, *(len(x) for x in number))

    def natural(k):
        return max(len(head[k]), *(len(c) for c in cols[k]))

    while True:
        free = [k for k in _FREE if k in keys]
        widths = {k: natural(k) for k in keys}
        room = width - nw - sum(widths[k] + 2 for k in keys if k not in free) - 2 * len(free)
        if len(free) == 2 and sum(widths[k] for k in free) > room:
            arch = max(_FREE["architecture"], min(widths["architecture"], room - _FREE["fail_reason"]))
            widths["architecture"], widths["fail_reason"] = arch, room - arch
        elif free and sum(widths[k] for k in free) > room:
            widths[free[0]] = room
        droppable = [k for k in _DROP_FIRST if k in keys]
        if all(widths[k] >= min(_FREE[k], natural(k)) for k in free) or not droppable:
            break
        keys.remove(droppable[0])
        dropped.append(droppable[0])
    widths = {k: max(1, w) for k, w in widths.items()}

    def render(first, cells):
        parts = [first.rjust(nw)] + [c.rjust(widths[k]) if right[k] else c.ljust(widths[k]) for k, c in cells]
        return "  ".join(parts).rstrip()[:width]

    lines = [render("#", [(k, head[k][:widths[k]]) for k in keys])]
    for i, n in enumerate(number):
        cells = {k: _wrap(cols[k][i], widths[k], " | " if k == "architecture" and not prose[i] else " ")
                 for k in keys}
        for j in range(max(len(v) for v in cells.values())):
            lines.append(render(n if j == 0 else "", [(k, cells[k][j] if j < len(cells[k]) else "") for k in keys]))
    return lines, keys + (["duplicate"] if df["duplicate_of"].notna().any() else []), dropped


def _print_table(df: pd.DataFrame, memory: str, notes: list[str] = ()) -> None:
    """The table, what its columns mean, the columns left out to fit and ``notes``, fitted to the
    terminal (``COLUMNS`` or its width)."""
    width = shutil.get_terminal_size((120, 24)).columns
    lines, keys, dropped = _display(df, width)
    print("\n".join(lines))
    legend = "; ".join(_LEGEND[k].format(memory=memory) for k in keys if k in _LEGEND)
    heads = {k: h for k, h, _, _ in _SHOW}
    if dropped:
        legend += ("; " if legend else "") + (f"left out to fit {width} columns: "
                                              f"{', '.join(heads[k] for k in dropped)} (a wider terminal or "
                                              f"COLUMNS shows them; --csv keeps every column)")
    for text in ([legend] if legend else []) + list(notes):
        print(textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False))


def cmd_show(args) -> None:
    """The trials table (or the Pareto set) and the study's summary (counts, front, hypervolume and
    Kendall's tau over distinct networks, :func:`studies.results.summary`); ``--csv`` writes all columns.
    ``--retrains``: every retrain instead, one row per network and label."""
    if args.retrains:
        return _show_retrains(args)
    study = studies.read_study(args.study, args.storage)       # read once: table and summary share it
    table = study.table()
    df = studies.results.front(table) if args.pareto else table
    if args.csv:
        with _writing(args.csv):
            df.to_csv(args.csv)
    stats = study.summary()
    _print_table(df, stats["memory"], studies.results.summary_lines(stats))
    print(f"storage: {studies.redact_url(studies.resolve_url(args.study, args.storage))}")
    if args.csv:
        print(f"table written to {args.csv}")


def _show_retrains(args) -> None:
    """One row per retrain (network and label): protocol and epochs, learning rate, status, test
    accuracy and the epochs it took to reach each ``--reach`` accuracy (001 Table 4)."""
    reach = tuple(args.reach)
    df = studies.retrains(args.study, args.storage, reach=reach)
    if args.csv:
        with _writing(args.csv):
            df.to_csv(args.csv, index=False)
    if not len(df):
        print(f"study {args.study!r} has no retrain yet: python search.py retrain --study {args.study}")
        return
    cols = [("number", "#", True), ("retrain", "retrain", False), ("lr", "lr", True), ("status", "status", False),
            ("test_accuracy", "test acc %", True)] + [(f"epochs_to_{100 * a:g}%", f"to {100 * a:g}%", True)
                                                      for a in reach] + [("architecture", "architecture", False)]

    def cell(key, v):
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return "-" if key.startswith("epochs_to") else ""
        if key == "test_accuracy":
            return f"{100 * v:.2f}"
        if key.startswith("epochs_to"):
            return str(int(v))
        return f"{v:g}" if key == "lr" else str(v)

    rows = [[cell(k, r[k]) for k, _, _ in cols] for _, r in df.iterrows()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (_, h, _) in enumerate(cols)]
    fmt = lambda cells: "  ".join(c.rjust(w) if right else c.ljust(w)   # noqa: E731
                                  for c, w, (_, _, right) in zip(cells, widths, cols)).rstrip()
    print(fmt([h for _, h, _ in cols]))
    for row in rows:
        print(fmt(row))
    width = shutil.get_terminal_size((120, 24)).columns
    print(textwrap.fill("retrain: protocol and epochs (2/40ep: 2 of the protocol's 40, a short run) and any "
                        "override; to N%: the first epoch whose test accuracy reached N% (- : never); every "
                        "epoch's accuracy is in --csv's test_accuracy_per_epoch", width))
    if args.csv:
        print(f"table written to {args.csv}")


def cmd_retrain(args) -> None:
    """Retrain, then the retrained networks (a duplicate folded into its twin) and the summary
    ``show`` prints, Kendall's tau over distinct networks included."""
    kw = _given(args, "protocol", "epochs", "hparams", "data", "synthetic", "device", "progress")
    studies.retrain(args.study, args.storage, **kw)
    study = studies.open_study(args.study, args.storage)
    merged = studies.trials_with_results(study)
    table = studies.trials_table(study, merged)
    stats = studies.results.summary(study, table, merged)
    done = studies.results.distinct(table)
    done = done[done["retrain_test_accuracy"].notna()]
    if len(done):
        _print_table(done, stats["memory"], studies.results.summary_lines(stats))
    print(f"weights under {studies.data_home() / 'runs' / args.study}")
    _where(args.study, args.storage, studies.resolve_url(args.study, args.storage), after="retrain")


def cmd_dashboard(args) -> None:
    opened = []

    def said(summary):
        if summary["message"]:
            print(summary["message"])
        else:
            tau = summary["kendall_tau"]
            print(f"{summary['complete']} networks scored, {summary['pareto']} on the Pareto front, "
                  f"{summary['retrained']} retrained" + (f" (Kendall's tau {tau:+.3f})" if tau is not None else ""))
        out = Path(summary["path"])
        again = (f"; rewritten every {args.watch} s while the study runs (Ctrl-C stops)"
                 if args.watch and summary["in_progress"] else "")
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, self-contained, data of "
              f"{summary['data_at'][11:19]} UTC){again}", flush=True)
        if args.open and not opened:
            import webbrowser  # noqa: PLC0415 - only for --open
            webbrowser.open(out.resolve().as_uri())
            opened.append(out)

    with _writing(args.out or "the page"):       # the study is read through its storage: an OSError is the page's
        studies.dashboard(args.study, args.storage, args.out, watch=args.watch, say=said)


def cmd_proxy(args) -> None:
    print(f"gRPC storage proxy for {studies.redact_url(args.storage)} on {args.host}:{args.port}; workers use "
          f"--storage 'grpc://THIS_HOST:{args.port}?claims={studies.redact_url(args.storage)}' (Ctrl-C stops)",
          flush=True)
    grpc_proxy.serve(args.storage, args.host, args.port, args.threads)


def cmd_export(args) -> None:
    summary = studies.export(args.study, args.out, trial=None if args.best else args.trial, storage=args.storage,
                             force=args.force, device=args.device)
    print(f"exported trial {summary['trial']} ({summary['rule']}) to {summary['out']}: "
          f"{', '.join(Path(f).name for f in summary['files'])}")


MAX_SPEC_BYTES = 1 << 20     # a spec file is a few kB; a bigger file is not one


def _load_spec(name_or_file: str):
    from models import ArchSpec, SpecError, presets  # noqa: PLC0415 - torch, for this command only
    path = Path(name_or_file)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise UserError(f"spec file {name_or_file!r} does not exist")
        if not path.is_file():       # a folder, a FIFO, a device (/dev/zero): reading it would hang or never end
            raise UserError(f"spec file {name_or_file!r} is not a regular file (a spec is a JSON file)")
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise UserError(f"spec file {name_or_file!r} is {path.stat().st_size:,} bytes; a spec is at most "
                            f"{MAX_SPEC_BYTES:,}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"spec file {name_or_file!r} is not text (a spec is UTF-8 JSON)") from None
        except OSError as e:
            raise UserError(f"cannot read spec file {name_or_file!r}: {e.strerror}") from None
        try:
            return ArchSpec.from_json(text).validate(require_widths=True)
        except SpecError as e:
            raise SpecError(f"{e} (in {name_or_file})") from None
    if name_or_file not in presets.names():
        near = presets.similar(name_or_file)
        raise UserError(f"unknown preset {name_or_file!r}" + (f"; did you mean {', '.join(near)}?" if near else "")
                        + f" (`search.py presets` lists all {len(presets.names())}; or give a spec .json file)")
    return presets.get(name_or_file)


def cmd_describe(args) -> None:
    import models  # noqa: PLC0415 - torch, for this command only
    import trainers  # noqa: PLC0415
    from models import presets  # noqa: PLC0415
    from models.measure import count_macs, count_params, peak_memory  # noqa: PLC0415
    spec = _load_spec(args.spec)
    kind = "cifar10"
    if args.dataset is not None:
        # the data set's classes decide the head, hence the count (CIFAR-100: 100 classes)
        kind, folder = trainers.parse_dataset(args.dataset)
        spec = dataclasses.replace(spec, num_classes=trainers.data_size(kind, folder)["num_classes"])
    paper = presets.info(args.spec).params_on(kind) if args.spec in presets.names() else None
    # on the meta device: counts, MACs and the tracked memory are exact there and allocate
    # nothing, so a spec asking for gigabytes of weights or activations costs nothing to describe
    net = models.build(spec, device="meta")
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    out = {
        "name": spec.name,
        "params": count_params(net),
        "macs": count_macs(net, (1, *shape)),
        "inference_bytes_per_image": peak_memory(net, shape, mode="inference"),
        "training_bytes_per_image": peak_memory(net, shape, mode="training"),
        "num_classes": spec.num_classes,
        **({"paper_params": paper} if paper else {}),
        "architecture": models.describe(spec),
        "stages": models.stage_summaries(spec),
        "spec": spec.to_dict(),
    }
    if args.svg:
        path = Path(args.svg)
        if path.suffix.lower() != ".svg":
            raise UserError(f"--svg {args.svg!r}: expected a .svg file")
        with _writing(path):
            path.write_text(models.drawing.network_svg(spec), encoding="utf-8")
        out["svg"] = str(path)
    print(json.dumps(out, indent=None if args.compact else 2))


def cmd_presets(args) -> None:
    from models import presets  # noqa: PLC0415 - torch, for this command only
    for name in presets.names():
        i = presets.info(name)
        print(f"{name:32s} {i.paper_params or '':>9s}  {i.source}")


# --------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other refusal of the program."""

    def error(self, message: str):
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, the flags of that command complete and the others' left out
    where describing them imports torch (``run``'s options, the export rule)."""
    p = _Parser(prog="search.py", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p.commands = sub.choices           # name -> its parser, for the check of unknown flags

    r = sub.add_parser("run", help="create or resume a study and run trials",
                       description="Create a study, or resume it: a rerun with the same --study goes on to the "
                                   "--trials total. A study stores its settings: each option marked [stored; ...] "
                                   "says what a resume does with another value.")
    if command in (None, "run"):
        _flags_from_options(r)
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("retrain", help="fully retrain the Pareto front and the papers' presets",
                       description="Train every network on the Pareto front (each trial at the highest proxy rung "
                                   "it reached, the front `show` prints) and every enqueued paper preset under a "
                                   "protocol, on all training images, and score it on the test split after every "
                                   "epoch (`show --retrains` lists them). Each network is claimed once, so several "
                                   "processes may share the work; a killed retrain resumes from its checkpoint.")
    _study_flags(t)
    if command in (None, "retrain"):           # the protocols' lengths and the options' checks bring torch
        from studies.config import json_object  # noqa: PLC0415
        protocols = retrain_protocols()
        t.add_argument("--protocol", choices=protocols, default=argparse.SUPPRESS,
                       help="training recipe: " + ", ".join(f"{k} ({protocol_epochs(k)} epochs)"
                                                            for k in protocols if k != PAPER)
                            + f", or {PAPER}: {PAPER_RULE} (default: "
                            f"{_signature_default(studies.retrain, 'protocol')})")
        t.add_argument("--epochs", type=int, default=argparse.SUPPRESS, metavar="N",
                       help="train N epochs instead of the protocol's, e.g. a quick check (a multistep schedule's "
                            "milestones scale with it); the result is stored apart, labelled PROTOCOL-Nep, and "
                            "shown as N/FULLep, never as the protocol's full result")
        t.add_argument("--hparams", type=json_object, default=argparse.SUPPRESS, metavar="JSON",
                       help="overrides of the protocol's hyperparameters (trainers.HPARAMS, the same checks as run "
                            "--proxy-hparams), e.g. '{\"lr\": 0.2}' for 2x the paper learning rate (001 §3.3); "
                            "stored apart, labelled PROTOCOL+lr=0.2")
    t.add_argument("--data", default=argparse.SUPPRESS, metavar="DIR",
                   help="where the study's data set is on this machine: the folder holding the named set, or the "
                        "folder of images itself (default: the folder stored in the study when it was searched); "
                        "refused for a study searched on synthetic data")
    t.add_argument("--synthetic", action="store_true", default=argparse.SUPPRESS,
                   help="a check, not a choice: the study's stored settings decide the data; this refuses to go "
                        "on unless the study was searched on synthetic data (which it then retrains on)")
    t.add_argument("--device", default=argparse.SUPPRESS,
                   help="device to train on: cuda, cuda:N or cpu (default: cuda when available, else cpu)")
    t.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                   help="no progress bars")
    t.set_defaults(func=cmd_retrain)

    s = sub.add_parser("show", help="table of trials and the study's summary, fitted to the terminal",
                       description="Every trial (or the Pareto front) with its accuracy in percent at the highest "
                                   "proxy rung it reached, memory in MiB per image, and its architecture; then "
                                   "the counts, front, hypervolume and Kendall's tau over distinct networks (a "
                                   "trial that repeated an earlier network is marked, not counted). The table "
                                   "fits COLUMNS or the terminal's width; --csv keeps every column.")
    _study_flags(s)
    s.add_argument("--pareto", action="store_true", help="only the Pareto front, most accurate first")
    s.add_argument("--csv", default=None, metavar="FILE",
                   help="also write the table, every column, to this CSV file (accuracies as fractions, "
                        "memory in bytes per image)")
    s.add_argument("--retrains", action="store_true",
                   help="every retrain instead, one row per network and label: protocol and epochs, overrides, "
                        "test accuracy and the epochs it took to reach each --reach accuracy (001 Table 4)")
    s.add_argument("--reach", type=_accuracy, nargs="+", default=list(REACH), metavar="ACC",
                   help="with --retrains: test accuracies, as fractions, to count the epochs to (default: "
                        + " ".join(f"{a:g}" for a in REACH) + ")")
    s.set_defaults(func=cmd_show)

    d = sub.add_parser("dashboard", help="self-contained HTML dashboard of a study")
    _study_flags(d)
    d.add_argument("--out", default=None, help="HTML file (default: NAME.html in the data home)")
    d.add_argument("--open", action="store_true", help="open it in a browser")
    d.add_argument("--watch", type=int, default=None, metavar="SECONDS",
                   help="while the study runs, rewrite the page every SECONDS (at least 5); the page then reloads "
                        "itself as often (a box on it stops that); ends when the study has finished its trials")
    d.set_defaults(func=cmd_dashboard)

    e = sub.add_parser("export", help="export a trial as spec, weights, torch.export program and card",
                       description="Write a retrained network as spec.json, weights.pt, a torch.export program "
                                   "(model.pt2, normalisation inside), preprocess.json and a model card.")
    _study_flags(e)
    g = e.add_mutually_exclusive_group()
    g.add_argument("--trial", type=int, default=None, metavar="N",
                   help="export trial N (a completed trial with retrained weights: `search.py retrain` makes them)")
    if command in (None, "export"):
        from studies.export import BEST_RULE  # noqa: PLC0415 - torch
        g.add_argument("--best", action="store_true", help=f"the default; best by validation accuracy: {BEST_RULE}")
    e.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: exports/NAME in the data home)")
    e.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    e.add_argument("--device", default=None, help="device the program is exported on (default: cpu)")
    e.set_defaults(func=cmd_export)

    ds = sub.add_parser("describe", help="params, MACs and memory of a preset or spec file, as JSON")
    ds.add_argument("spec", help="preset name (see `presets`) or a spec JSON file")
    ds.add_argument("--compact", action="store_true", help="one-line JSON")
    ds.add_argument("--svg", default=None, metavar="FILE",
                    help="also draw the network into FILE.svg: stem, stages with widths and strides, each stage's "
                         "block as the graph of its scheme")
    if command in (None, "describe"):
        import trainers  # noqa: PLC0415 - torch, for the data sets' names
        ds.add_argument("--dataset", default=None, metavar="NAME_OR_DIR",
                        help=f"count with this data set's classes ({', '.join(trainers.DATASETS)} or a folder with "
                             f"one sub-folder per class); a preset then shows the count its paper prints for it")
    ds.set_defaults(func=cmd_describe)

    ps = sub.add_parser("presets", help="list the papers' networks")
    ps.set_defaults(func=cmd_presets)

    px = sub.add_parser("proxy", help="serve a database to many workers through Optuna's gRPC storage proxy",
                        description="Optuna's gRPC storage proxy in front of one database: workers run with "
                                    "--storage grpc://HOST:PORT?claims=DATABASE_URL and hold no database "
                                    "connection while they train; the proxy holds at most --threads. The "
                                    "study's claims and heartbeats are taken directly in DATABASE_URL, a "
                                    "connection opened and closed per claim.")
    px.add_argument("--storage", required=True, help="the database URL (postgresql://..., mysql://...)")
    px.add_argument("--host", default=_signature_default(grpc_proxy.serve, "host"),
                    help="address to listen on (default: %(default)s, every interface)")
    px.add_argument("--port", type=int, default=_signature_default(grpc_proxy.serve, "port"),
                    help="TCP port (default: %(default)s, Optuna's)")
    px.add_argument("--threads", type=int, default=_signature_default(grpc_proxy.serve, "threads"),
                    help="requests served at once, each holding at most one database connection "
                         "(default: %(default)s)")
    px.set_defaults(func=cmd_proxy)
    return p


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        verb = "read" if isinstance(e, FileNotFoundError) else "write"
        return f"cannot {verb} {e.filename}: {e.strerror}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    # argparse lists a parser's option strings nowhere public; its actions hold them
    return [s for a in parser._actions for s in a.option_strings]


def _unknown_flag(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The first ``--flag`` of a command that the command does not take, in one line with the
    nearest flag it does take. argparse would instead report a required flag as missing (the
    misspelled one never matched it) or point to ``search.py --help``, which lists no
    command's flags."""
    cmd = next((a for a in argv if not a.startswith("-")), None)
    sub = parser.commands.get(cmd)
    if sub is None:
        return None
    known = _flags(sub)
    for tok in argv[argv.index(cmd) + 1:]:
        if tok == "--":
            break
        if not tok.startswith("--"):
            continue
        flag = tok.split("=", 1)[0]
        if flag in known or len([k for k in known if k.startswith(flag)]) == 1:   # argparse takes a unique prefix
            continue
        near = difflib.get_close_matches(flag, known, n=1, cutoff=0.5)
        return (f"search.py {cmd}: unknown option {flag}" + (f" (did you mean {near[0]}?)" if near else "")
                + f"; see search.py {cmd} --help")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    wrong = _unknown_flag(parser, argv)
    if wrong:
        print(f"error: {wrong}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:           # --help, or a refusal already printed on one line
        return int(e.code or 0)
    try:
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # `search.py presets | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UserError, ValueError, OSError) as e:          # models.SpecError is a ValueError
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:        # Ctrl-C, or SIGTERM (studies.signals): the trial is re-queued
        print(signals.stopped_line(e), file=sys.stderr)
        return signals.exit_code(e)
    return 0


if __name__ == "__main__":
    signals.handle_sigterm()          # a batch system's SIGTERM stops the command as Ctrl-C does
    sys.exit(main())
