#!/usr/bin/env python
"""Do sampled LM stages run the step their spec names? A count, not a timing.

Samples ``--specs`` architectures from the search space (``RandomTrial`` seeds
0..N-1, the space sampled uniformly without a study), builds every linear
multi-step stage at width 8 and reads off the built stage:

* ``opening_ignores_step``: stages whose spec step is not the default (fixed 1)
  but whose opening block runs ``h = 1`` as a constant;
* ``step_parameters`` vs ``blocks``: the 0-dim parameters (learnable steps) of
  each learnable LM stage against its block count (every other scheme has one
  per block).

It reads the built modules only (``LMStage.first.h()`` and the stage's 0-dim
parameters), so the same script measures the code before and after a change::

    PYTHONPATH=$PWD python benchmarks/audit_lm_steps.py --specs 1000 --tag after

and saves its figures to ``benchmarks/results/audit_lm_steps[-TAG]-<UTC time>.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

import models
from models.blocks import LMStage
from search_space.sampling import RandomTrial, sample_spec

RESULTS = Path(__file__).resolve().parent / "results"


def audit(n_specs: int) -> dict:
    lm_stages = non_default = ignored = learnable = 0
    per_block = 0                                   # learnable LM stages with one step per block
    examples = []
    for seed in range(n_specs):
        spec = sample_spec(RandomTrial(seed))
        for i, st in enumerate(spec.stages):
            if st.scheme != "lm":
                continue
            lm_stages += 1
            one = dataclasses.replace(spec, stages=(dataclasses.replace(st, width=8, downsample=False),),
                                      stem_width=8, survival_last=spec.survival_last)
            stage = models.build(one).stages[0]
            lm = next(m for m in stage.modules() if isinstance(m, LMStage))
            h0 = lm.first.h()
            opening_fixed_one = isinstance(h0, float) and h0 == 1.0
            default = st.step.mode == "fixed" and st.step.value == 1.0
            if not default:
                non_default += 1
                if opening_fixed_one:
                    ignored += 1
            if st.step.mode == "learnable":
                learnable += 1
                steps = sum(1 for p in lm.parameters() if p.dim() == 0)
                per_block += steps == st.blocks
                if len(examples) < 3:
                    examples.append({"seed": seed, "stage": i, "blocks": st.blocks, "step_parameters": steps})
    return {"specs": n_specs, "lm_stages": lm_stages, "non_default_step": non_default,
            "opening_block_ignores_step": ignored, "learnable_lm_stages": learnable,
            "learnable_with_one_step_per_block": per_block, "learnable_examples": examples}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--specs", type=int, default=1000, help="sampled architectures (default: 1000)")
    p.add_argument("--tag", default="", help="added to the result's file name, e.g. before / after")
    p.add_argument("--no-save", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(1)
    result = audit(args.specs)
    root = Path(models.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "models"], capture_output=True, text=True,
                                    cwd=root).stdout.strip())
    except OSError:
        commit, dirty = None, None
    out = {"provenance": {"git_commit": commit or None, "models_uncommitted_changes": dirty,
                          "torch": torch.__version__, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
           "result": result}
    print(json.dumps(result, indent=2))
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        tag = f"-{args.tag}" if args.tag else ""
        path = RESULTS / f"audit_lm_steps{tag}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
