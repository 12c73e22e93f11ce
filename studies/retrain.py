"""``search.py retrain``: fully retrain the Pareto set and the enqueued presets (SPEC §5-§6).

Per trial, under ``studies/runs/NAME/trial_N/LABEL/`` (LABEL = protocol, or
``protocol-Eep`` with ``--epochs``): ``checkpoint.pt`` (every epoch, atomic;
a killed retrain resumes from it), then ``weights.pt`` (the final
``state_dict``), ``spec.json`` and ``result.json``. The result is stored as
study user attr ``retrain:N:LABEL`` (Optuna cannot change a finished trial);
:func:`studies.table.trials_with_results` shows it on the trial as
``retrain_test_accuracy``, ``weights_path``, ... A finished trial is skipped
on re-run; several retrain processes may share a study (each trial is
claimed once). At the end: Kendall's tau between proxy and retrained accuracy.
"""
from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

from .objective import StudyConfig, load_data, worker_name
from .storage import Claims, studies_dir
from .table import kendall_tau, pareto_numbers, trials_table, trials_with_results

__all__ = ["retrain_command", "retrain_study", "retrain_targets", "run_dir"]


def run_dir(study_name: str, number: int, label: str) -> Path:
    return studies_dir() / "runs" / study_name / f"trial_{number}" / label


def retrain_targets(study) -> list:
    """Merged records to retrain: COMPLETE trials on the Pareto front, and every
    preset trial that has a spec (whatever its proxy outcome), by number."""
    from optuna.trial import TrialState

    merged = trials_with_results(study)
    front = pareto_numbers(study, merged)
    out = []
    for t in merged:
        if not t.user_attrs.get("spec") or "duplicate_of" in t.user_attrs:   # its twin is retrained
            continue
        if (t.state == TrialState.COMPLETE and t.number in front) or t.user_attrs.get("preset"):
            out.append(t)
    return sorted(out, key=lambda t: t.number)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def retrain_study(study, name: str, url: str, *, protocol: str = "fast", epochs: int | None = None,
                  data=None, data_root: str | None = None, device: str | None = None, progress: bool = True,
                  say=print) -> list[dict]:
    """Retrain every target of :func:`retrain_targets` (``url``: the study's storage, for
    claims); returns the results of this call."""
    import trainers

    trainers.protocol_hparams(protocol, epochs=epochs)        # ValueError for an unknown protocol
    cfg = StudyConfig.load(study)
    label = protocol if epochs is None else f"{protocol}-{int(epochs)}ep"
    targets = retrain_targets(study)
    if not targets:
        say(f"study {name!r} has no completed trial on its Pareto front yet; nothing to retrain")
        return []
    claims = Claims(url, worker_name())
    uid = cfg.uid if cfg else name
    stale = 3 * (cfg.heartbeat_interval if cfg else 60)
    results = []

    def finished(key: str) -> dict | None:
        prev = study.user_attrs.get(key)             # fresh: another process may have just finished it
        ok = prev and prev.get("status") == "ok" and prev.get("weights_path") and Path(prev["weights_path"]).exists()
        return prev if ok else None

    try:
        for i, t in enumerate(targets):
            head = f"[{i + 1}/{len(targets)}] trial {t.number}"
            key = f"retrain:{t.number}:{label}"
            ckey = f"{uid}:retrain:{label}:{t.number}"
            if (prev := finished(key)) is not None:
                say(f"{head}: done before, test acc {prev['test_accuracy']:.4f} ({label})")
                continue
            if not claims.try_claim(ckey, stale):
                say(f"{head}: being retrained by another process; skipped")
                continue
            try:
                if finished(key) is not None:
                    continue
                if data is None:
                    data = load_data(cfg.data if cfg else {"kind": "cifar10", "root": "data"}, data_root)
                with claims.held(ckey, stale / 3):
                    entry, r = _retrain_one(study, name, t, label, protocol, epochs, data, device, progress, say,
                                            head)
                results.append(entry)
            finally:
                claims.release(ckey)                  # done or interrupted: free for a re-run at once
            if r.ok:
                say(f"    test acc {r.test_accuracy:.4f} (proxy {t.user_attrs.get('val_accuracy') or math.nan:.4f})"
                    f"  weights {entry['weights_path']}")
            else:
                say(f"    {r.status}: {r.reason}")
    finally:
        claims.close()
    return results


def _retrain_one(study, name, t, label, protocol, epochs, data, device, progress, say, head):
    """Retrain one trial's network; write its folder and the study attr ``retrain:N:LABEL``."""
    import torch

    import models
    import trainers
    from models.measure import measure
    from models import ArchSpec

    spec = ArchSpec.from_json(t.user_attrs["spec"])
    folder = run_dir(name, t.number, label)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(spec.to_json(indent=2) + "\n")
    say(f"{head}: {t.user_attrs.get('architecture', spec.name)} - retrain {label}")
    r = trainers.retrain(lambda: models.build(spec), data, protocol=protocol,
                         checkpoint_path=folder / "checkpoint.pt", resume=True, device=device,
                         epochs=epochs, progress=progress)
    entry = {"number": t.number, "protocol": protocol, "label": label, "status": r.status,
             "reason": r.reason, "test_accuracy": r.test_accuracy, "test_loss": r.test_loss,
             "epochs": r.epochs, "seconds": round(r.seconds.get("train_all", 0.0), 3),
             "device": r.device, "cuda_peak_bytes": r.cuda_peak_bytes,
             "checkpoint_path": str(folder / "checkpoint.pt"), "weights_path": None, "finished_at": _now()}
    if r.ok and r.state_dict is not None:
        weights = folder / "weights.pt"
        tmp = weights.with_suffix(".pt.tmp")
        torch.save(r.state_dict, tmp)
        tmp.replace(weights)
        entry["weights_path"] = str(weights)
        net = models.build(spec)
        net.load_state_dict(r.state_dict)
        m = measure(net, (spec.in_channels, spec.image_size, spec.image_size))
        entry.update(params=int(m["params"]), inference_bytes_per_image=int(m["inference_bytes_per_image"]),
                     training_bytes_per_image=int(m["training_bytes_per_image"]))
    (folder / "result.json").write_text(json.dumps({**entry, "history": r.history}, indent=2, default=str) + "\n")
    study.set_user_attr(f"retrain:{t.number}:{label}", entry)
    return entry, r


def retrain_command(args) -> None:
    from . import _display, open_study
    from .run import where_lines, write_results

    study, url = open_study(args.study, args.storage)
    cfg = StudyConfig.load(study)
    if cfg is None:
        raise ValueError(f"study {args.study!r} was not made by `search.py run` (no settings stored)")
    kind = cfg.data.get("kind")
    if args.synthetic and kind != "synthetic":
        raise ValueError(f"study {args.study!r} was searched on CIFAR-10; retrain on CIFAR-10 (--data DIR)")
    if args.data and kind == "synthetic":
        raise ValueError(f"study {args.study!r} was searched on synthetic data; --data does not apply")
    t0 = time.perf_counter()
    retrain_study(study, args.study, url, protocol=args.protocol, epochs=args.epochs, data_root=args.data,
                  device=args.device, progress=not args.no_progress)
    df = trials_table(study)
    done = df[df["retrain_test_accuracy"].notna()]
    if len(done):
        print(_display(done).to_string())
        nets = done[done["duplicate_of"].isna()]          # a duplicate is its twin's network
        tau = kendall_tau(nets["val_accuracy"], nets["retrain_test_accuracy"])
        print(f"Kendall's tau (proxy vs retrained accuracy, {len(nets)} networks): "
              + ("n/a" if math.isnan(tau) else f"{tau:+.3f}"))
    out = write_results(study, args.study)
    print(f"retrain finished in {time.perf_counter() - t0:.0f}s; weights under "
          f"{studies_dir() / 'runs' / args.study}")
    for line in where_lines(args.study, args.storage, url, out):
        print(line)
