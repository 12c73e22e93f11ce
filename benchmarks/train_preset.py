#!/usr/bin/env python
"""Train one preset (or spec file) outside any study and save the result with provenance.

The accuracy checks of the trainers: a proxy of ``ho-euler-x14`` (8 epochs,
validation accuracy) and a fast-protocol retrain of ``resnet-20`` (test
accuracy)::

    python benchmarks/train_preset.py proxy ho-euler-x14 --epochs 8 --data data --device cuda
    python benchmarks/train_preset.py retrain resnet-20 --protocol fast --data data --device cuda

Writes ``benchmarks/results/train_preset-<mode>-<name>-<device>-<UTC time>.json``
(the result's ``to_dict()``, the spec, versions, git commit, the command).
A killed retrain resumes with ``--resume`` from its checkpoint.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import models  # noqa: E402
import trainers  # noqa: E402
from models import ArchSpec  # noqa: E402


def _spec(name: str) -> ArchSpec:
    path = Path(name)
    return ArchSpec.from_json(path.read_text()) if path.suffix == ".json" else models.presets.get(name)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["proxy", "retrain"])
    p.add_argument("preset", help="preset name or spec JSON file")
    p.add_argument("--data", default="data", help="CIFAR-10 root (torchvision layout)")
    p.add_argument("--download", action="store_true")
    p.add_argument("--synthetic", action="store_true", help="small synthetic data (smoke check)")
    p.add_argument("--device", default=None)
    p.add_argument("--epochs", type=int, default=None, help="override the proxy's / protocol's epochs")
    p.add_argument("--protocol", default="fast", help="retrain protocol: " + ", ".join(p for p in trainers.PROTOCOLS if p != "proxy"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="retrain: continue from the checkpoint")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    spec = _spec(args.preset)
    data = (trainers.synthetic(n_train=512, n_val=128, n_test=128) if args.synthetic
            else trainers.load_cifar10(args.data, download=args.download))
    make_model = lambda: models.build(spec)  # noqa: E731
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "proxy":
        result = trainers.train(make_model, data, protocol="proxy", epochs=args.epochs, device=args.device,
                                seed=args.seed)
    else:
        ckpt = out / f"checkpoint-{spec.name}-{args.protocol}.pt"
        result = trainers.train(make_model, data, protocol=args.protocol, checkpoint_path=ckpt,
                                resume=args.resume, device=args.device, seed=args.seed, epochs=args.epochs)
    score = (f"{result.score_on}_accuracy", result.accuracy)
    record = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "mode": args.mode, "preset": spec.name, "architecture": models.describe(spec),
        "data": "synthetic" if args.synthetic else str(args.data),
        "result": result.to_dict(), "spec": spec.to_dict(), "utc": stamp,
    }
    device = re.sub(r"[^A-Za-z0-9]+", "_", result.device).strip("_")
    path = out / f"train_preset-{args.mode}-{spec.name}-{device}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"{spec.name} {args.mode}: status={result.status} {score[0]}={score[1]} "
          f"seconds={result.seconds.get('total')} -> {path}")
    return record


if __name__ == "__main__":
    main()
