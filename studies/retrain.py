"""``retrain``: fully retrain the Pareto set and the enqueued presets.

Per trial, under ``<data home>/runs/NAME/trial_N/LABEL/`` (LABEL = protocol,
``protocol-Eep`` with ``epochs``, then ``+key=value`` per hyperparameter
override: :func:`studies.retrain_protocol.retrain_label`): ``checkpoint.pt``
(every epoch, atomic; a killed retrain resumes from it), then ``weights.pt``
(the final ``state_dict``), ``spec.json`` and ``result.json``. The result,
with the test accuracy after every epoch, is stored as study user attr
``retrain:N:LABEL`` (Optuna cannot change a finished trial);
:func:`studies.results.trials_with_results` shows the latest on the trial as
``retrain_test_accuracy``, ``weights_path``, ...; :func:`retrain_table` lists
them all. A finished trial is skipped on a rerun; several retrain processes
may share a study (each trial is claimed once).

``protocol="paper"`` gives each network its family's paper protocol
(:func:`studies.retrain_protocol.paper_protocol`).
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

import models
import trainers
from models import ArchSpec
from models.measure import measure
from trainers.checkpoint import atomic_save

from .claims import worker_name
from .config import StudySettings, data_title
from .objective import load_data, network_spec
from .results import Snapshot, pareto_numbers, retrain_results, snapshot, trials_with_results, write_results
from .retrain_protocol import (PAPER, REACH, check_overrides, describe_retrain, paper_protocol, protocol_epochs,
                               retrain_label, retrain_protocols)
from .storage import Store, data_home, home_relative, in_home, open_existing, resolve_url, storage_errors

__all__ = ["Incomplete", "retrain", "retrain_table", "retrain_targets", "run_dir"]


class Incomplete(ValueError):
    """Some networks were left to other processes that are still retraining them."""


def run_dir(study_name: str, number: int, label: str) -> Path:
    return data_home() / "runs" / study_name / f"trial_{number}" / label


def retrain_targets(study: optuna.Study) -> list:
    """Merged records to retrain: COMPLETE trials on the Pareto front, and every
    preset trial that has a spec (whatever its proxy outcome), by number (``study``: a study
    or a :class:`~studies.results.Snapshot` of it, read once)."""
    study = snapshot(study)
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


def retrain(study: str, storage: str | None = None, *, protocol: str = "fast", epochs: int | None = None,
            hparams: dict | None = None, data: str | None = None, synthetic: bool = False,
            device: str | None = None, numbers: list[int] | None = None, progress: bool = True,
            say=print) -> list[dict]:
    """Retrain every target of :func:`retrain_targets` (or the trials ``numbers``) under
    ``protocol`` (``fast``, a paper's protocol ``ho-resnet`` / ``lm-resnet`` /
    ``lm-resnet-sd`` / ``rkcnn``, or ``paper``: each network its family's,
    :data:`studies.retrain_protocol.PAPER_RULE`); ``epochs`` overrides its length and
    ``hparams`` its hyperparameters (``{"lr": 0.2}``: checked as ``run --proxy-hparams``),
    each combination stored apart under its own label. Trains on the data the study
    searched on (``data``: where CIFAR-10 is on this machine), records the test accuracy
    after every epoch, returns this call's results."""
    if protocol not in retrain_protocols():
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(retrain_protocols())}")
    if epochs is not None:
        try:
            trainers.protocols.merge_hparams(trainers.HPARAMS, {"epochs": epochs})
        except ValueError as e:
            raise ValueError(f"--epochs: {str(e).split(': ', 1)[1]}") from None
    overrides = check_overrides(hparams, protocol)
    with storage_errors(resolve_url(study, storage)):
        store = open_existing(study, storage, owner=worker_name())
        try:
            return _retrain_study(store, protocol, epochs, overrides, data, synthetic, device, numbers, progress,
                                  say)
        finally:
            store.close()


def _retrain_study(store: Store, protocol, epochs, overrides, data_root, synthetic, device, numbers, progress,
                   say) -> list[dict]:
    study = store.study()
    read = Snapshot(study, store.read_trials())     # the selection reads the study once
    cfg = StudySettings.from_attrs(read.user_attrs)
    if cfg is None:
        raise ValueError(f"study {store.name!r} was not made by `search.py run` (no settings stored)")
    kind = cfg.data.get("kind")
    if synthetic and kind != "synthetic":
        raise ValueError(f"study {store.name!r} was searched on {data_title(cfg.data)}; it retrains on that "
                         f"(--data DIR: where it is on this machine)")
    if data_root and kind == "synthetic":
        raise ValueError(f"study {store.name!r} was searched on synthetic data; --data does not apply")
    if numbers is None:
        targets = retrain_targets(read)
    else:
        by_number = {t.number: t for t in trials_with_results(read)}
        missing = [n for n in numbers if n not in by_number or not by_number[n].user_attrs.get("spec")]
        if missing:
            raise ValueError(f"study {store.name!r} has no trial {missing[0]} with a network to retrain")
        targets = [by_number[n] for n in sorted(set(numbers))]
    if not targets:
        say(f"study {store.name!r} has no completed trial on its Pareto front yet; nothing to retrain")
        return []
    stale = 3 * cfg.heartbeat_interval
    dataset = None
    results, elsewhere = [], []

    def finished(key: str) -> dict | None:
        prev = study.user_attrs.get(key)             # fresh: another process may have just finished it
        ok = (prev and prev.get("status") == "ok" and prev.get("weights_path")
              and in_home(prev["weights_path"]).exists())
        return prev if ok else None

    for i, t in enumerate(targets):
        head = f"[{i + 1}/{len(targets)}] trial {t.number}"
        proto = (paper_protocol(ArchSpec.from_json(t.user_attrs["spec"]), cfg.data.get("kind", "cifar10"))
                 if protocol == PAPER else protocol)
        label = retrain_label(proto, epochs, overrides)
        key = f"retrain:{t.number}:{label}"
        ckey = f"{cfg.uid}:retrain:{label}:{t.number}"
        if (prev := finished(key)) is not None:
            say(f"{head}: done before, test acc {prev['test_accuracy']:.4f} ({label})")
            continue
        if not store.claims.try_claim(ckey, stale):
            row = store.claims.holder(ckey) or {}
            expires = datetime.fromtimestamp(row.get("heartbeat", 0) + stale, timezone.utc).strftime("%H:%M:%S UTC")
            say(f"{head}: being retrained by {row.get('owner', 'another process')} (its claim expires at "
                f"{expires} if it stops beating); left to it")
            elsewhere.append((t.number, row.get("owner", "?"), expires))
            continue
        try:
            if finished(key) is not None:
                continue
            if dataset is None:
                dataset = load_data(cfg.data, data_root, device=device)
            with store.claims.held(ckey, stale / 3):
                entry, r = _retrain_one(study, t, label, proto, protocol, epochs, overrides, dataset, device,
                                        progress, say, head, cfg.retrain_hparams())
            results.append(entry)
        finally:
            store.claims.release(ckey)                  # done or interrupted: free for a rerun at once
        if r.ok:
            say(f"    test acc {r.test_accuracy:.4f} (proxy {t.user_attrs.get('val_accuracy') or math.nan:.4f})"
                f"  weights {in_home(entry['weights_path'])}")
        else:
            say(f"    {r.status}: {r.reason}")
    write_results(Snapshot(study, store.read_trials()))
    if elsewhere:
        n, owner, expires = elsewhere[-1]
        raise Incomplete(f"{len(elsewhere)} network(s) left to other processes (trial {n} by {owner}, whose claim "
                         f"expires at {expires} if it has stopped); rerun `search.py retrain` to finish them")
    return results


def _retrain_one(study, t, label, protocol, requested, epochs, overrides, data, device, progress, say, head,
                 study_hparams):
    """Retrain one trial's network; write its folder and the study attr ``retrain:N:LABEL``."""
    hparams = {**study_hparams, **overrides}      # the study's data-size settings, then the user's
    # the protocol's dropout (004's SVHN protocol) is part of the network it trains, and of its weights' layout
    searched = ArchSpec.from_json(t.user_attrs["spec"])
    spec = network_spec(searched, trainers.protocol_hparams(protocol, hparams=hparams or None))
    folder = run_dir(study.study_name, t.number, label)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(spec.to_json(indent=2) + "\n")
    planned = trainers.protocol_hparams(protocol, epochs=epochs, hparams=hparams)["epochs"]
    chosen = " (its family's paper protocol)" if requested == PAPER else ""
    say(f"{head}: {t.user_attrs.get('architecture', spec.name)} - retrain {label}: {protocol}{chosen}, "
        f"{planned} epochs")
    r = trainers.train(lambda: models.build(spec), data, protocol=protocol, checkpoint_path=folder / "checkpoint.pt",
                       resume=True, device=device, epochs=epochs, hparams=hparams or None, progress=progress,
                       score_every_epoch=True, say=lambda m: say(f"    {m}"))
    entry = {"number": t.number, "protocol": protocol, "requested_protocol": requested, "label": label,
             "status": r.status, "reason": r.reason, "test_accuracy": r.test_accuracy,
             "test_loss": r.loss if r.ok else None,
             "epochs": r.epochs, "epochs_planned": r.epochs_planned, "protocol_epochs": protocol_epochs(protocol),
             "hparams": dict(overrides), "lr": r.hparams["lr"],
             # accuracy on the test split after each epoch (None where an older checkpoint did not score it)
             "test_accuracy_per_epoch": [h.get("test_accuracy") for h in r.history],
             "seconds": round(sum(h.get("seconds", 0.0) for h in r.history), 3),
             "device": r.device, "cuda_peak_bytes": r.cuda_peak_bytes,
             # paths relative to the data home, which may be copied or moved (studies.storage.in_home reads them)
             "checkpoint_path": home_relative(folder / "checkpoint.pt"), "weights_path": None, "finished_at": _now(),
             # what export needs to put the normalisation inside the program
             "data": {"name": data.name, "mean": list(data.mean), "std": list(data.std),
                      "classes": list(data.classes), "image_size": data.image_size}}
    if spec != searched:
        entry["spec"] = spec.to_json()          # what was trained (export rebuilds this one)
    if r.ok and r.state_dict is not None:
        weights = folder / "weights.pt"
        atomic_save(r.state_dict, weights)        # fsync'd, replaced at once; a full disk names the file
        entry["weights_path"] = home_relative(weights)
        m = measure(models.build(spec, device="meta"), (spec.in_channels, spec.image_size, spec.image_size))
        entry.update(params=int(m["params"]), inference_bytes_per_image=int(m["inference_bytes_per_image"]),
                     training_bytes_per_image=int(m["training_bytes_per_image"]))
    (folder / "result.json").write_text(json.dumps({**entry, "history": r.history}, indent=2, default=str) + "\n")
    study.set_user_attr(f"retrain:{t.number}:{label}", entry)
    return entry, r


def epochs_to_reach(per_epoch: list, accuracy: float) -> int | None:
    """The first epoch (1-based) whose test accuracy is at least ``accuracy``, or None."""
    for epoch, acc in enumerate(per_epoch or [], 1):
        if acc is not None and acc >= accuracy:
            return epoch
    return None


def retrain_table(study: optuna.Study, reach=REACH) -> pd.DataFrame:
    """Every retrain of the study, one row per trial and label (oldest first): its
    protocol and epochs (``retrain``: as :func:`describe_retrain` writes it short), the
    overrides and learning rate, status, test accuracy, and per accuracy ``a`` of
    ``reach`` the epochs it took to reach it (``epochs_to_80%``: 001 Table 4); the
    accuracy after every epoch in ``test_accuracy_per_epoch``."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for number, records in sorted(retrain_results(study.user_attrs).items()):
        a = trials[number].user_attrs if number in trials else {}
        for r in records:
            per_epoch = r.get("test_accuracy_per_epoch") or []
            row = {"number": number, "label": r.get("label"), "retrain": describe_retrain(r, short=True),
                   "protocol": r.get("protocol"), "epochs": r.get("epochs"),
                   "epochs_planned": r.get("epochs_planned"),
                   "protocol_epochs": r.get("protocol_epochs") or protocol_epochs(r.get("protocol") or ""),
                   "lr": r.get("lr"), "hparams": json.dumps(r.get("hparams") or {}, sort_keys=True),
                   "status": r.get("status"), "test_accuracy": r.get("test_accuracy"),
                   "architecture": a.get("architecture"), "preset": a.get("preset"), "reason": r.get("reason") or ""}
            for acc in reach:
                row[f"epochs_to_{100 * acc:g}%"] = epochs_to_reach(per_epoch, acc)
            row["test_accuracy_per_epoch"] = per_epoch
            row["weights_path"] = str(in_home(r["weights_path"])) if r.get("weights_path") else None
            rows.append(row)
    return pd.DataFrame(rows)
