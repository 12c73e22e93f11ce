"""Export a trial as a PyTorch module that runs with torch alone (``search.py export``).

The output folder holds

* ``spec.json``     the architecture (``models.build(ArchSpec.from_json(...))`` rebuilds it);
* ``weights.pt``    the trained ``state_dict``;
* ``model.pt2``     a ``torch.export`` program (``torch.export.load(...).module()``), eval mode,
                    dynamic batch size: needs neither this project nor its classes;
* ``model_card.md`` what the network is, how well it did, and how to load it.

The default trial ("best") is the Pareto-front trial with the highest
retrained test accuracy, or, when no front trial was retrained, the one with
the highest proxy accuracy; the card says which rule chose it. A trial
without trained weights is refused (``search.py retrain`` makes them): an
untrained network is never exported silently.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

import models
from models import ArchSpec, SpecError

from .results import _finite, pareto_numbers, trials_with_results
from .storage import data_home, open_existing, redact_url, sqlite_path

__all__ = ["FILES", "export", "export_trial", "find_weights", "select_trial"]

FILES = ("spec.json", "weights.pt", "model.pt2", "model_card.md")
ATOL = 1e-5


# --------------------------------------------------------------------------
# which trial
# --------------------------------------------------------------------------

def select_trial(study, number: int | None = None):
    """``(trial, rule)``: trial ``number`` (must have completed), or the best one.

    The trial is the merged record of :func:`studies.trials_with_results`
    (promotions and the latest retrain folded into ``user_attrs``). Best =
    highest retrained test accuracy among the Pareto-front trials, else the
    highest proxy (validation, longest fidelity) accuracy on the front.
    ``rule`` is a phrase for the model card. Raises a one-line ValueError when
    there is nothing to export.
    """
    name = study.study_name
    trials = trials_with_results(study)
    if number is not None:
        match = [t for t in trials if t.number == number]
        if not match:
            span = f"trials 0..{max(t.number for t in trials)}" if trials else "no trials yet"
            raise ValueError(f"study {name!r} has no trial {number} ({span})")
        t = match[0]
        if t.state.name == "FAIL":
            why = t.user_attrs.get("fail_reason") or "no reason recorded"
            raise ValueError(f"trial {number} of study {name!r} failed ({_one_line(why)}); nothing to export")
        if t.state.name == "PRUNED":
            why = t.user_attrs.get("fail_reason") or "no reason recorded"
            raise ValueError(f"trial {number} of study {name!r} was pruned ({_one_line(why)}); nothing to export")
        if t.state.name != "COMPLETE":
            raise ValueError(f"trial {number} of study {name!r} is {t.state.name.lower()}, not complete; "
                             f"wait for it to finish")
        return t, f"chosen with --trial {number}"
    front_ids = pareto_numbers(study, trials)
    front = [t for t in trials if t.number in front_ids and t.state.name == "COMPLETE"]
    if not front:
        raise ValueError(f"study {name!r} has no completed trials yet; nothing to export")
    retrained = [t for t in front if _finite(t.user_attrs.get("retrain_test_accuracy")) is not None]
    if retrained:
        best = max(retrained, key=lambda t: (_finite(t.user_attrs["retrain_test_accuracy"]), -t.number))
        return best, (f"best: highest retrained test accuracy on the Pareto front "
                      f"({len(retrained)} of its {len(front)} trials retrained)")
    best = max(front, key=lambda t: (_finite(t.values[0]) if t.values else -math.inf, -t.number))  # longest fidelity
    return best, (f"best: highest proxy (validation) accuracy on the Pareto front "
                  f"(none of its {len(front)} trials retrained yet)")


def _one_line(text) -> str:
    text = str(text).strip().splitlines()
    return text[0] if text else ""


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------

def find_weights(trial, storage_url: str | None = None) -> Path:
    """The trained weights file of ``trial`` (its ``weights_path`` user attr).

    A relative path is looked up from the working directory, then next to a
    SQLite study database. Raises a one-line ValueError telling the user to
    run ``search.py retrain`` when the trial has no weights.
    """
    a = trial.user_attrs
    raw = a.get("weights_path")
    if not raw:
        if a.get("retrain_status") not in (None, "ok"):
            why = _one_line(a.get("retrain_reason") or a["retrain_status"])
            raise ValueError(f"trial {trial.number}'s retrain did not finish ({why}); run `search.py retrain` "
                             f"again (export never writes an untrained network)")
        raise ValueError(f"trial {trial.number} has no trained weights; run `search.py retrain` on the study "
                         f"first (export never writes an untrained network)")
    path = Path(raw).expanduser()
    candidates = [path]
    db = sqlite_path(storage_url or "")
    if not path.is_absolute():
        candidates += [data_home() / path] + ([db.parent / path] if db is not None else [])
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(f"trial {trial.number}'s weights {raw} are missing; re-run `search.py retrain` on the study")


def _load_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file
        raise ValueError(f"cannot read weights {path}: {_one_line(e) or type(e).__name__}") from None
    for key in ("model", "state_dict", "model_state_dict"):  # a checkpoint rather than a bare state_dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights {path} hold no state_dict")
    return obj


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _export_program(model, example):
    """``torch.export`` with a dynamic batch dimension, static if that fails."""
    try:
        ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}})
        return ep, True
    except Exception:  # noqa: BLE001 - some graphs specialise the batch; a static program still runs
        return torch.export.export(model, (example,)), False


def export_trial(study, trial, out_dir: str | Path, *, rule: str = "", force: bool = False,
                 device: str | None = None, storage_url: str | None = None) -> dict:
    """Write ``FILES`` for ``trial`` into ``out_dir``; return a summary dict.

    The exported program is checked before anything is written: it must give
    the eager network's logits (``atol=1e-5``) on a batch of 2 and, when the
    batch is dynamic, on a single image.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if out.exists() and not force:
        raise ValueError(f"output folder {out} exists; pass --force to overwrite it")
    a = trial.user_attrs
    if not a.get("spec"):
        raise ValueError(f"trial {trial.number} records no spec; it was not made by `search.py run`")
    try:
        spec = ArchSpec.from_json(a["spec"] if isinstance(a["spec"], str) else json.dumps(a["spec"]))
    except SpecError as e:
        raise ValueError(f"trial {trial.number}'s spec is invalid: {_one_line(e)}") from None
    weights_file = find_weights(trial, storage_url)
    state = _load_state_dict(weights_file)

    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available here")
    model = models.build(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights {weights_file} do not fit trial {trial.number}'s spec: "
                         f"{_one_line(e)}") from None
    model = model.to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    example = torch.randn(2, *shape, generator=gen).to(dev)
    with torch.no_grad():
        program, dynamic = _export_program(model, example)
        reference = model(example)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "spec.json").write_text(spec.to_json(indent=2) + "\n")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "weights.pt")
        torch.export.save(program, tmp / "model.pt2")
        # round trip: the saved program gives the eager logits
        loaded = torch.export.load(tmp / "model.pt2").module()
        with torch.no_grad():
            checks = [(example, reference)]
            if dynamic:
                one = torch.randn(1, *shape, generator=gen).to(dev)
                checks.append((one, model(one)))
            err = max(float((loaded(x) - y).abs().max()) for x, y in checks)
        if not err <= ATOL:
            raise RuntimeError(f"exported program differs from the network by {err:.3g} (> {ATOL})")
        summary = dict(study=study.study_name, trial=trial.number, rule=rule, out=str(out), spec=spec,
                       weights_source=str(weights_file), dynamic_batch=dynamic, max_abs_error=err,
                       device=str(dev), input_shape=list(shape))
        (tmp / "model_card.md").write_text(model_card(study, trial, spec, summary, tmp, storage_url))
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["files"] = [str(out / n) for n in FILES]
    return summary


def _pct(v) -> str:
    v = _finite(v)
    if v is None:
        return "–"
    return f"{v * 100:.2f}%" if abs(v) <= 1.0 else f"{v:.2f}%"


def _bytes(v) -> str:
    v = _finite(v)
    return "–" if v is None else f"{v / 2**20:.3f} MiB ({int(v):,} bytes)"


def _int(v) -> str:
    v = _finite(v)
    return "–" if v is None else f"{int(v):,}"


def model_card(study, trial, spec, summary: dict, folder: Path, storage_url: str | None = None) -> str:
    """The markdown model card of an exported trial."""
    a = trial.user_attrs
    on_front = trial.number in pareto_numbers(study, trials_with_results(study))
    arch = a.get("architecture") or models.describe(spec)
    fidelities = sorted(((k.split("@", 1)[1], v) for k, v in a.items() if k.startswith("val_accuracy@")),
                        key=lambda kv: float(kv[0]) if kv[0].replace(".", "", 1).isdigit() else math.inf)
    proxy = _pct(a.get("val_accuracy") if a.get("val_accuracy") is not None else
                 (trial.values[0] if trial.values else None))
    epochs = a.get("proxy_epochs")
    retrained = _finite(a.get("retrain_test_accuracy"))
    shape = summary["input_shape"]
    stage_rows = "\n".join(
        f"| {i} | {s['name']} | {s['scheme']} | {s['blocks']} | {s['depth']} | "
        f"{s['step']['mode']} {s['step']['value']:g} | {s['width']} | {'yes' if s['downsample'] else 'no'} |"
        for i, s in enumerate(models.stage_summaries(spec)))
    mem = study.user_attrs.get("memory", "inference")
    lines = [
        f"# {arch}",
        "",
        f"Trial {trial.number} of the study `{study.study_name}` "
        f"({'on' if on_front else 'not on'} the accuracy-vs-memory Pareto front); {summary['rule']}.",
        "",
        *([f"Preset: `{a['preset']}` (one of the papers' networks).", ""] if a.get("preset") else []),
        "## Architecture",
        "",
        f"`{arch}`, built by `models.build(spec)` from `spec.json` (seed {spec.seed}, "
        f"{spec.in_channels}x{spec.image_size}x{spec.image_size} inputs, {spec.num_classes} classes, "
        f"head `{spec.head}`, transitions `{spec.transition}`).",
        "",
        "| stage | name | scheme | blocks | nesting | step | width | downsample |",
        "|---|---|---|---|---|---|---|---|",
        stage_rows,
        "",
        "## Measurements",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {_int(a.get('params'))} |",
        f"| MACs per image | {_int(a.get('macs'))} |",
        f"| inference memory (peak live tensors per image) | {_bytes(a.get('inference_bytes_per_image'))} |",
        f"| training memory (one step, per image) | {_bytes(a.get('training_bytes_per_image'))} |",
        f"| study budget / memory objective | {_int(study.user_attrs.get('budget'))} params / {mem} |",
        f"| proxy validation accuracy | {proxy}"
        + (f" after {epochs:g} epochs" if _finite(epochs) is not None else "")
        + (f" on {a['device']}" if a.get("device") else "") + " |",
        *(f"| validation accuracy after {e} epochs | {_pct(v)} |" for e, v in fidelities if len(fidelities) > 1),
        "| retrained test accuracy | "
        + (f"{_pct(retrained)} (protocol `{a.get('retrain_protocol', '?')}`"
           + (f", {a['retrain_epochs']} epochs" if a.get("retrain_epochs") else "") + ")" if retrained is not None
           else "not retrained: these weights come from the proxy training") + " |",
        "",
        "Validation accuracy is top-1 on the held-out split of the training set; only the full retrain",
        "touches the test set.",
        "",
        "## Files",
        "",
        "| file | sha256 |",
        "|---|---|",
        *(f"| `{n}` | `{_sha256(folder / n)}` |" for n in ("spec.json", "weights.pt", "model.pt2")),
        "",
        f"`model.pt2` is a `torch.export` program of the network in eval mode on `{summary['device']}`, "
        f"batch dimension {'dynamic' if summary['dynamic_batch'] else 'fixed at 2'}; checked against the network "
        f"(max |difference| {summary['max_abs_error']:.1e}). Exported with torch {torch.__version__}.",
        "",
        "Inputs are float32 images normalised per channel, `(x / 255 - mean) / std`, with the training",
        "set's mean and std (the trainers compute them from the training split).",
        "",
        "## Loading with torch alone",
        "",
        "```python",
        "import torch",
        "",
        'model = torch.export.load("model.pt2").module()',
        f"logits = model(torch.randn({'8' if summary['dynamic_batch'] else '2'}, {shape[0]}, {shape[1]}, "
        f"{shape[2]}))  # normalised images",
        "```",
        "",
        "## Loading with this project",
        "",
        "```python",
        "import torch",
        "import models",
        "from models import ArchSpec",
        "",
        'spec = ArchSpec.from_json(open("spec.json").read())',
        "model = models.build(spec)",
        'model.load_state_dict(torch.load("weights.pt", weights_only=True))',
        "model.eval()",
        "```",
        "",
        f"Exported {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
        f"`{redact_url(storage_url) or 'the study storage'}`; weights from `{summary['weights_source']}`.",
        "",
    ]
    return "\n".join(lines)


def export(study: str, out: str | Path, *, trial: int | None = None, storage: str | None = None,
           force: bool = False, device: str | None = None) -> dict:
    """Export trial ``trial`` of ``study`` (default: the best, see :func:`select_trial`) into
    the folder ``out``; return the summary (``rule`` says how the trial was chosen)."""
    store = open_existing(study, storage)
    try:
        st = store.study()
        record, rule = select_trial(st, trial)
        return export_trial(st, record, out, rule=rule, force=force, device=device, storage_url=store.url)
    finally:
        store.close()
