"""Export a trial as a PyTorch program that runs with torch alone (``search.py export``).

The output folder holds

* ``model.pt2``       a ``torch.export`` program (``torch.export.load(...).module()``) of the
                      network in eval mode, with the input normalisation inside: it takes what a
                      user has, float RGB in [0, 1], NCHW, at the training image size, and returns
                      logits; the batch size is free. Needs neither this project nor its classes;
* ``preprocess.json`` what the program expects and what it was trained with: input range,
                      layout, image size, the mean/std it applies, the class names;
* ``spec.json``       the architecture (``models.build(ArchSpec.from_json(...))`` rebuilds it);
* ``weights.pt``      the trained ``state_dict`` of that network (which takes normalised inputs);
* ``model_card.md``   what the network is, what it was trained on, how well it did, how to use it;
* ``network.svg``     the network drawn from its spec (:func:`models.drawing.network_svg`), shown in the card.

The default folder is ``exports/NAME`` in the data home (never inside the project's checkout).

The default trial ("best") is chosen by **validation** accuracy, never by test
accuracy (choosing on the test set would bias the reported figure upward):
among the Pareto-front trials with retrained weights, the one with the highest
proxy validation accuracy (each trial at the longest fidelity it reached, the
rule the front itself uses). Its test accuracy is then reported, and only its.
A trial without trained weights is refused (``search.py retrain`` makes
them): an untrained network is never exported silently.
"""
from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import models
from models import ArchSpec, SpecError

from .config import StudySettings, data_title
from .objective import load_data
from .results import Snapshot, finite, first_line, pareto_numbers, plural, snapshot, trials_with_results
from .retrain_protocol import epochs_text
from .storage import data_home, in_home, open_existing, redact_url, resolve_url, sqlite_path, storage_errors

__all__ = ["BEST_RULE", "FILES", "check_out", "export", "export_dir", "export_trial", "find_weights", "select_trial"]

FILES = ("spec.json", "weights.pt", "model.pt2", "preprocess.json", "model_card.md", "network.svg")
ATOL = 1e-5
BEST_RULE = ("the highest validation accuracy (proxy, at the longest fidelity each trial reached) among the "
             "Pareto-front trials that were retrained; test accuracy is never used to choose")


# --------------------------------------------------------------------------
# which trial
# --------------------------------------------------------------------------

def select_trial(study, number: int | None = None):
    """``(trial, rule)``: trial ``number`` (must have completed), or the best one.

    The trial is the merged record of :func:`studies.trials_with_results`
    (promotions and the latest retrain folded into ``user_attrs``). Best: see
    :data:`BEST_RULE`; when no front trial was retrained yet, the front trial with
    the highest validation accuracy (which then has no weights to export).
    ``rule`` is a phrase for the model card. Raises a one-line ValueError when
    there is nothing to export.
    """
    study = snapshot(study)
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
            raise ValueError(f"trial {number} of study {name!r} failed ({first_line(why)}); nothing to export")
        if t.state.name == "PRUNED":
            why = t.user_attrs.get("fail_reason") or "no reason recorded"
            raise ValueError(f"trial {number} of study {name!r} was pruned ({first_line(why)}); nothing to export")
        if t.state.name != "COMPLETE":
            raise ValueError(f"trial {number} of study {name!r} is {t.state.name.lower()}, not complete; "
                             f"wait for it to finish")
        return t, f"chosen with --trial {number}"
    front_ids = pareto_numbers(study, trials)
    front = [t for t in trials if t.number in front_ids and t.state.name == "COMPLETE"]
    if not front:
        raise ValueError(f"study {name!r} has no completed trials yet; nothing to export")

    def validation(t):
        acc = finite(t.user_attrs.get("val_accuracy"))
        return (acc if acc is not None else -math.inf, -t.number)

    retrained = [t for t in front if t.user_attrs.get("retrain_status") == "ok" and t.user_attrs.get("weights_path")]
    if retrained:
        return max(retrained, key=validation), (f"best: {BEST_RULE} ({len(retrained)} of the front's "
                                                f"{len(front)} trials retrained)")
    return max(front, key=validation), (f"best: the highest validation accuracy on the Pareto front "
                                        f"(none of its {len(front)} trials retrained yet)")


# --------------------------------------------------------------------------
# weights and preprocessing
# --------------------------------------------------------------------------

def find_weights(trial, storage_url: str | None = None) -> Path:
    """The trained weights file of ``trial`` (its ``weights_path`` user attr).

    A relative path is relative to the data home (:func:`studies.storage.in_home`;
    also looked up next to a SQLite study database); an absolute one, stored by
    earlier versions, is looked up under this data home's ``runs/`` first, so a
    copied or moved data home exports its own weights. Raises a one-line ValueError
    telling the user to run ``search.py retrain`` when the trial has no weights.
    """
    a = trial.user_attrs
    raw = a.get("weights_path")
    if not raw:
        if a.get("retrain_status") not in (None, "ok"):
            why = first_line(a.get("retrain_reason") or a["retrain_status"])
            raise ValueError(f"trial {trial.number}'s retrain did not finish ({why}); run `search.py retrain` "
                             f"again (export never writes an untrained network)")
        raise ValueError(f"trial {trial.number} has no trained weights; run `search.py retrain` on the study "
                         f"first (export never writes an untrained network)")
    path = Path(raw).expanduser()
    candidates = [in_home(path)]
    db = sqlite_path(storage_url or "")
    if not path.is_absolute() and db is not None:
        candidates.append(db.parent / path)
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError(f"trial {trial.number}'s weights {raw} are missing; re-run `search.py retrain` on the study")


def _load_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file
        raise ValueError(f"cannot read weights {path}: {first_line(e) or type(e).__name__}") from None
    for key in ("model", "state_dict", "model_state_dict"):  # a checkpoint rather than a bare state_dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights {path} hold no state_dict")
    return obj


def _training_data(study, trial) -> dict:
    """What the weights were trained on: ``name``, ``mean``, ``std`` (per channel, [0, 1] units),
    ``classes``. The retrain records it; for an older retrain it is recomputed from the study's data."""
    recorded = trial.user_attrs.get("retrain_data")
    if isinstance(recorded, dict) and {"mean", "std", "classes"} <= set(recorded):
        return recorded
    settings = StudySettings.load(study)
    if settings is None:
        raise ValueError(f"trial {trial.number}'s retrain does not record its data's normalisation and the study "
                         f"has no settings to recompute it; retrain it again")
    data = load_data(settings.data)
    return {"name": data.name, "mean": list(data.mean), "std": list(data.std), "classes": list(data.classes),
            "image_size": data.image_size}


class Preprocessed(nn.Module):
    """The network behind its input normalisation: takes float RGB in [0, 1], NCHW, and
    applies ``(x - mean) / std`` per channel (the statistics of the training images)."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _export_program(model: nn.Module, example: torch.Tensor):
    """``torch.export`` with a dynamic batch dimension, static if that fails."""
    try:
        ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}})
        return ep, True
    except Exception:  # noqa: BLE001 - some graphs specialise the batch; a static program still runs
        return torch.export.export(model, (example,)), False


def export_trial(study, trial, out_dir: str | Path, *, rule: str = "", force: bool = False,
                 device: str | None = None, storage_url: str | None = None) -> dict:
    """Write ``FILES`` for ``trial`` into ``out_dir``; return a summary dict.

    The exported program is checked before anything is written: on [0, 1]
    images it must give the eager network's logits on the normalised images
    (``atol=1e-5``) for a batch of 2 and, when the batch is dynamic, for one image.
    """
    out = check_out(out_dir, force)
    a = trial.user_attrs
    if not a.get("spec"):
        raise ValueError(f"trial {trial.number} records no spec; it was not made by `search.py run`")
    # the network the retrain trained: the searched spec, or with its protocol's dropout (same parameters)
    trained = a.get("retrain_spec") or a["spec"]
    try:
        spec = ArchSpec.from_json(trained if isinstance(trained, str) else json.dumps(trained))
    except SpecError as e:
        raise ValueError(f"trial {trial.number}'s spec is invalid: {first_line(e)}") from None
    weights_file = find_weights(trial, storage_url)
    state = _load_state_dict(weights_file)
    data = _training_data(study, trial)

    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available here")
    net = models.build(spec)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights {weights_file} do not fit trial {trial.number}'s spec: "
                         f"{first_line(e)}") from None
    net = net.to(dev).eval()
    model = Preprocessed(net, data["mean"], data["std"]).to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    example = torch.rand(2, *shape, generator=gen).to(dev)
    with torch.no_grad():
        program, dynamic = _export_program(model, example)
        reference = net((example - model.mean) / model.std)

    preprocess = {
        "input": "float32 RGB in [0, 1], NCHW (batch, channel, height, width)",
        "input_range": [0.0, 1.0], "layout": "NCHW", "dtype": "float32",
        "image_size": [spec.image_size, spec.image_size], "channels": spec.in_channels,
        "normalization": "inside model.pt2: (x - mean) / std per channel; do not normalise again",
        "mean": list(data["mean"]), "std": list(data["std"]),
        "classes": list(data["classes"]), "num_classes": len(data["classes"]),
        "output": "logits (apply softmax for probabilities)",
        "trained_on": _data_words(study, data),
    }
    started = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(out, started)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "spec.json").write_text(spec.to_json(indent=2) + "\n")
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp / "weights.pt")
        torch.export.save(program, tmp / "model.pt2")
        (tmp / "preprocess.json").write_text(json.dumps(preprocess, indent=2) + "\n")
        # round trip: the saved program gives the eager logits
        loaded = torch.export.load(tmp / "model.pt2").module()
        with torch.no_grad():
            checks = [(example, reference)]
            if dynamic:
                one = torch.rand(1, *shape, generator=gen).to(dev)
                checks.append((one, net((one - model.mean) / model.std)))
            err = max(float((loaded(x) - y).abs().max()) for x, y in checks)
        if not err <= ATOL:
            raise RuntimeError(f"exported program differs from the network by {err:.3g} (> {ATOL})")
        summary = dict(study=study.study_name, trial=trial.number, rule=rule, out=str(out), spec=spec,
                       weights_source=str(weights_file), dynamic_batch=dynamic, max_abs_error=err,
                       device=str(dev), input_shape=list(shape), data=data)
        (tmp / "network.svg").write_text(models.drawing.network_svg(spec), encoding="utf-8")
        (tmp / "model_card.md").write_text(model_card(study, trial, spec, summary, tmp, storage_url))
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)         # written and not swapped in (an error): nothing half-done
    summary["files"] = [str(out / n) for n in FILES]
    return summary


def check_out(out_dir: str | Path, force: bool = False) -> Path:
    """The output folder ``out_dir``, refused (one-line ValueError) where an export must not go:
    the root, the home folder, the data home, a file, or a folder holding any file an export
    does not write (:data:`FILES`). A folder holding a whole previous export is replaced only
    with ``force``; an empty one, or one holding part of an export (an older version killed
    mid-way), is written without."""
    out = Path(out_dir).expanduser()
    where = out.resolve()
    refused = {Path(where.anchor): "the root folder", Path.home().resolve(): "your home folder",
               data_home(): "the data home"}
    if where in refused:
        raise ValueError(f"--out {out_dir}: is {refused[where]}; an export needs a folder of its own, "
                         f"e.g. {where / 'export'}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        foreign = sorted(names - set(FILES))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ValueError(f"--out {out_dir}: holds files an export does not write ({shown}); give a new or "
                             f"empty folder (--force replaces only a previous export)")
        if names == set(FILES) and not force:
            raise ValueError(f"output folder {out_dir} exists (a previous export); pass --force to replace it")
    return out


def _clear_stale(out: Path, started: float) -> None:
    """Remove the temporary folders (``.NAME.*`` beside ``out``) that exports killed before
    ``started`` left: folders holding nothing but export files, never anything else."""
    for p in out.parent.glob(f".{glob.escape(out.name)}.*"):
        try:
            if p.is_symlink() or not p.is_dir() or p.stat().st_mtime >= started:
                continue
            if all(f.name in FILES and f.is_file() for f in p.iterdir()):
                shutil.rmtree(p)
        except OSError:
            continue       # another process removed it, or it is not ours to remove


_RENAME_EXCHANGE = 2      # renameat2(2) flag: swap two paths in one step (Linux 3.15+)
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap folders ``a`` and ``b`` atomically (Linux ``renameat2``); False where the system or
    file system cannot. ctypes, because Python's os module has no renameat2."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _swap_in(tmp: Path, out: Path) -> None:
    """Make the complete folder ``tmp`` the folder ``out`` in one rename: ``out`` is never seen
    half-written. A previous export there is swapped out in the same step (or, where the
    system cannot swap, renamed aside first) and removed."""
    try:
        os.rename(tmp, out)            # out absent, or an empty folder: replaced at once
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if _exchange(tmp, out):
        shutil.rmtree(tmp)             # now the previous export
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.rename(out, aside)              # a kill between the two renames leaves .NAME.* for the next export to clear
    os.rename(tmp, out)
    shutil.rmtree(aside)


def export_dir(study: str) -> Path:
    """Where ``export`` writes without ``--out``: ``exports/NAME`` in the data home."""
    return data_home() / "exports" / study


def export(study: str, out: str | Path | None = None, *, trial: int | None = None, storage: str | None = None,
           force: bool = False, device: str | None = None) -> dict:
    """Export trial ``trial`` of ``study`` (default: the best, see :data:`BEST_RULE`) into
    the folder ``out`` (default :func:`export_dir`); return the summary (``rule`` says how the
    trial was chosen, ``out`` where it went)."""
    out = export_dir(study) if out is None else out
    with storage_errors(resolve_url(study, storage)):
        store = open_existing(study, storage)
        try:
            st = Snapshot(store.study(), store.read_trials())      # read once: the choice and the card share it
            record, rule = select_trial(st, trial)
            return export_trial(st, record, out, rule=rule, force=force, device=device, storage_url=store.url)
        finally:
            store.close()


# --------------------------------------------------------------------------
# the model card
# --------------------------------------------------------------------------

def _pct(v) -> str:
    v = finite(v)
    if v is None:
        return "–"
    return f"{v * 100:.2f}%" if abs(v) <= 1.0 else f"{v:.2f}%"


def _bytes(v) -> str:
    v = finite(v)
    return "–" if v is None else f"{v / 2**20:.3f} MiB ({int(v):,} bytes)"


def _int(v) -> str:
    v = finite(v)
    return "–" if v is None else f"{int(v):,}"


USAGE = """\
import json, numpy as np, torch
from PIL import Image
model = torch.export.load("model.pt2").module()
x = torch.from_numpy(np.array(Image.open("image.png").convert("RGB").resize(({size}, {size})))).permute(2, 0, 1)[None] / 255.0
print(json.load(open("preprocess.json"))["classes"][model(x.float()).argmax(1).item()])"""


def _data_words(study, data: dict) -> str:
    """The training data in words: ``CIFAR-100``, ``SVHN``, ``the folder /x/y``."""
    settings = StudySettings.load(study)
    return data_title(settings.data if settings is not None else {"kind": data.get("name") or "cifar10"})


def _class_list(classes, shown: int = 12) -> str:
    names = ", ".join(f"{i} {c}" for i, c in enumerate(classes[:shown]))
    return names + (f", ... ({len(classes) - shown} more in preprocess.json)" if len(classes) > shown else "")


def model_card(study, trial, spec, summary: dict, folder: Path, storage_url: str | None = None) -> str:
    """The markdown model card of an exported trial."""
    a = trial.user_attrs
    data = summary["data"]
    on_front = trial.number in pareto_numbers(study, trials_with_results(study))
    arch = a.get("architecture") or models.describe(spec)
    fidelities = sorted(((k.split("@", 1)[1], v) for k, v in a.items() if k.startswith("val_accuracy@")),
                        key=lambda kv: float(kv[0]) if kv[0].replace(".", "", 1).isdigit() else math.inf)
    proxy = _pct(a.get("val_accuracy") if a.get("val_accuracy") is not None else
                 (trial.values[0] if trial.values else None))
    epochs = a.get("proxy_epochs")
    retrained = finite(a.get("retrain_test_accuracy"))
    size = spec.image_size
    stage_rows = "\n".join(
        f"| {i} | {s['name']} | {s['scheme']} | {s['blocks']} | {s['depth']} | "
        f"{s['step']['mode']} {s['step']['value']:g} | {s['width']} | {'yes' if s['downsample'] else 'no'} |"
        for i, s in enumerate(models.stage_summaries(spec)))
    mem = study.user_attrs.get("memory", "inference")
    synthetic = data.get("name") == "synthetic"
    trained_on = ("**synthetic data**: the small 10-class stand-in the project uses for demos and tests, not "
                  "CIFAR-10; these weights classify nothing real" if synthetic else
                  f"{_data_words(study, data)} ({len(data['classes'])} classes: {_class_list(data['classes'])}; "
                  f"{size}x{size} RGB inputs)")
    protocol = a.get("retrain_protocol")
    record = a.get("retrain_record") or {"protocol": protocol, "epochs": a.get("retrain_epochs")}
    run = f"`{protocol}` protocol, {epochs_text(record)}" if protocol else None   # never "full" for a short run
    how = f"retrained with the {run}" if run else "weights from the retrain"
    lines = [
        f"# {arch}",
        "",
        *(["> **Trained on synthetic data** (a demo study): not a CIFAR-10 model.", ""] if synthetic else []),
        f"Trial {trial.number} of the study `{study.study_name}` "
        f"({'on' if on_front else 'not on'} the accuracy-vs-memory Pareto front); {summary['rule']}.",
        f"Trained on {trained_on}; {how}.",
        "",
        *([f"Preset: `{a['preset']}` (one of the papers' networks).", ""] if a.get("preset") else []),
        "## Using it",
        "",
        f"`model.pt2` takes float RGB images in [0, 1], NCHW, of exactly {size}x{size} pixels (any batch size) "
        "and returns **logits** (apply a softmax for probabilities). The normalisation with the training "
        "images' mean and std is inside the program: do not normalise again. Other sizes fail with a "
        f"shape guard error: resize first, e.g. `Image.resize(({size}, {size}))` or "
        f"`torch.nn.functional.interpolate(x, size=({size}, {size}), mode=\"bilinear\")`. `preprocess.json` "
        "records all of it, with the class names. With torch, numpy and Pillow only:",
        "",
        "```python",
        USAGE.format(size=size),
        "```",
        "",
        "## Architecture",
        "",
        f"`{arch}`, built by `models.build(spec)` from `spec.json` (seed {spec.seed}, "
        f"{spec.in_channels}x{size}x{size} inputs, {spec.num_classes} classes, "
        f"head `{spec.head}`, transitions `{spec.transition}`).",
        "",
        "| stage | name | scheme | blocks | nesting | step | width | downsample |",
        "|---|---|---|---|---|---|---|---|",
        stage_rows,
        "",
        "![The network drawn from its spec: stem, stages with their widths and strides, and each stage's block "
        "as the graph of its scheme](network.svg)",
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
        + (f" after {plural(int(epochs), 'epoch')}" if finite(epochs) is not None else "")
        + (f" on {a['device']}" if a.get("device") else "") + " |",
        *(f"| validation accuracy after {plural(int(e), 'epoch')} | {_pct(v)} |"
          for e, v in fidelities if len(fidelities) > 1),
        "| retrained test accuracy | "
        + (f"{_pct(retrained)} ({run or 'protocol unknown'})"
           if retrained is not None
           else "not retrained: these weights come from the proxy training") + " |",
        "",
        "Validation accuracy is top-1 on a split held out of the training images, and it alone chose this",
        "trial; only a retrain touches the test set, and its accuracy is reported for this trial only.",
        "",
        "## Files",
        "",
        "| file | sha256 |",
        "|---|---|",
        *(f"| `{n}` | `{_sha256(folder / n)}` |" for n in ("spec.json", "weights.pt", "model.pt2", "preprocess.json")),
        "",
        f"`model.pt2` is a `torch.export` program exported on `{summary['device']}`, batch dimension "
        f"{'dynamic' if summary['dynamic_batch'] else 'fixed at 2'}; checked against the network "
        f"(max |difference| {summary['max_abs_error']:.1e}). Exported with torch {torch.__version__}.",
        "",
        "## Rebuilding it with this project",
        "",
        "`weights.pt` belongs to the network without the normalisation, which takes normalised images:",
        "",
        "```python",
        "import torch",
        "import models",
        "",
        'spec = models.ArchSpec.from_json(open("spec.json").read())',
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
