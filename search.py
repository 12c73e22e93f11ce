#!/usr/bin/env python
"""Neural-architecture search over stacking schemes of residual networks.

    python search.py run --study NAME --budget 1.0M --trials N [...]   create or resume a study
    python search.py retrain --study NAME [--protocol fast]            fully retrain the Pareto set
    python search.py show --study NAME [--pareto] [--csv FILE]         table of trials
    python search.py dashboard --study NAME [--out FILE.html]          Pareto-front dashboard (HTML)
    python search.py export --study NAME [--trial N | --best] --out DIR  spec, weights, model.pt2, card
    python search.py describe NAME_OR_SPEC_FILE                        params, MACs, memory as JSON
    python search.py presets                                           list the papers' networks

Commands are thin: they parse arguments and call ``studies`` (the study, its
storage and results) or ``models`` (networks). Errors a user can fix end the
program with a one-line message and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class UserError(Exception):
    """A problem with the command's input, reported in one line."""


def _load_spec(name_or_file: str):
    from models import presets
    from models import ArchSpec

    path = Path(name_or_file)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise UserError(f"spec file {name_or_file!r} does not exist")
        try:
            text = path.read_text()
        except OSError as e:
            raise UserError(f"cannot read spec file {name_or_file!r}: {e.strerror}") from None
        spec = ArchSpec.from_json(text)
        return spec.validate(require_widths=True)
    return presets.get(name_or_file)


def cmd_describe(args) -> None:
    import models
    from models.measure import count_macs, count_params, peak_memory

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
    from models import presets

    for name in presets.names():
        i = presets.info(name)
        print(f"{name:32s} {i.paper_params or '':>9s}  {i.source}")


def _study_cmd(fn_name: str):
    def run(args):
        import studies
        getattr(studies, fn_name)(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def study_args(sp):
        sp.add_argument("--study", required=True, help="study name")
        sp.add_argument("--storage", default=None,
                        help="Optuna storage URL (default sqlite:///studies/NAME.db; PostgreSQL for many machines)")

    r = sub.add_parser("run", help="create or resume a study and run trials")
    study_args(r)
    r.add_argument("--budget", default="1.0M", help="parameter budget, e.g. 1.0M or 250k")
    r.add_argument("--tolerance", type=float, default=0.02, help="relative distance to the budget allowed")
    r.add_argument("--trials", type=int, required=True, help="trials to complete in the study (total)")
    r.add_argument("--proxy-epochs", type=int, default=None, help="epochs of the shortest proxy (first rung)")
    r.add_argument("--rungs", type=int, default=None, help="fidelity rungs of successive halving")
    r.add_argument("--data", default=None, help="folder holding cifar-10-batches-py (downloaded if missing)")
    r.add_argument("--synthetic", action="store_true", help="small synthetic 10-class data (CPU demo, tests)")
    r.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    r.add_argument("--workers", type=int, default=1, help="worker processes on this machine (one per GPU)")
    r.add_argument("--memory", choices=["inference", "training"], default="inference",
                   help="memory objective (SPEC §4)")
    r.add_argument("--enqueue-presets", nargs="*", default=None, metavar="PRESET",
                   help="papers' presets to evaluate as trials (no names: those near the budget)")
    r.add_argument("--seed", type=int, default=0,
                   help="sampler seed (give each machine sharing a study its own)")
    r.add_argument("--eta", type=int, default=None,
                   help="successive halving: the best 1/ETA of a rung is promoted to ETA x the epochs (default 3)")
    r.add_argument("--proxy-hparams", default=None, metavar="JSON",
                   help="overrides of the proxy trainer's hyperparameters, e.g. '{\"lr\": 0.2}' (fixed per study)")
    r.add_argument("--synthetic-images", type=int, default=None, metavar="N",
                   help="with --synthetic: training images (validation and test: N/4, at least 64; default 1024)")
    r.add_argument("--synthetic-image-size", type=int, default=None, metavar="PX",
                   help="with --synthetic: image side in pixels (default 32)")
    r.add_argument("--heartbeat", type=int, default=None, metavar="SECONDS",
                   help="heartbeat interval of running trials (default 60); silent for 3 beats = failed and retried")
    r.add_argument("--max-retry", type=int, default=None,
                   help="retries of a trial whose worker died (default 3)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=_study_cmd("run_command"))

    t = sub.add_parser("retrain", help="fully retrain the Pareto set")
    study_args(t)
    t.add_argument("--protocol", default="fast", help="fast | ho-resnet | lm-resnet")
    t.add_argument("--data", default=None)
    t.add_argument("--synthetic", action="store_true")
    t.add_argument("--device", default=None)
    t.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_study_cmd("retrain_command"))

    s = sub.add_parser("show", help="table of trials (pandas)")
    study_args(s)
    s.add_argument("--pareto", action="store_true", help="only the Pareto set")
    s.add_argument("--csv", default=None, help="also write the table to this CSV file")
    s.set_defaults(func=_study_cmd("show_command"))

    d = sub.add_parser("dashboard", help="self-contained HTML dashboard of a study")
    study_args(d)
    d.add_argument("--out", default=None, help="HTML file (default studies/NAME.html)")
    d.add_argument("--open", action="store_true", help="open it in a browser")
    d.set_defaults(func=_study_cmd("dashboard_command"))

    e = sub.add_parser("export", help="export a trial as spec, weights, torch.export program and card")
    study_args(e)
    g = e.add_mutually_exclusive_group()
    g.add_argument("--trial", type=int, default=None, help="trial number")
    g.add_argument("--best", action="store_true", help="best on the front (default)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    e.add_argument("--device", default=None)
    e.set_defaults(func=_study_cmd("export_command"))

    ds = sub.add_parser("describe", help="params, MACs and memory of a preset or spec file, as JSON")
    ds.add_argument("spec", help="preset name (see `presets`) or a spec JSON file")
    ds.add_argument("--compact", action="store_true", help="one-line JSON")
    ds.set_defaults(func=cmd_describe)

    ps = sub.add_parser("presets", help="list the papers' networks")
    ps.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from models import SpecError
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
