#!/usr/bin/env python
"""Time and peak memory of a first real front on a CPU: the README's "Real data on a CPU" command.

Runs, in a fresh process with a fresh data home, a 100k-parameter study on real CIFAR-10
whose proxies train on a seeded subset of the training images::

    python search.py run --study c10-cpu --budget 100k --tolerance 0.1 --trials 8 \\
        --proxy-images 2000 --proxy-epochs 1 --rungs 1 --device cpu --workers 2 --data DATA

and records its wall seconds, the CPU seconds it used (user + system of every process: on an
unloaded machine with C cores kept busy, the wall time is about CPU / C), its peak resident
memory (the largest process's ``ru_maxrss``, and the sum over the process tree sampled every
5 s), the load average before, during (sampled every 5 s) and after, and the front it found
(trials, their proxy images/s and seconds, accuracy, memory).

Then, unless ``--no-batch``, the proxy of the study's first trained network alone, on one
thread, at the batch a study uses on the CPU (32), at 128 and at the GPU default (512), each
in its own process: images/s, CPU milliseconds per image and peak resident memory, to show
what the CPU cap of the batch costs and saves.

Writes ``benchmarks/results/bench_cpu_real-<UTC time>.json`` with provenance::

    python benchmarks/bench_cpu_real.py --data DATA
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ["run", "--study", "c10-cpu", "--budget", "100k", "--tolerance", "0.1", "--trials", "8",
         "--proxy-images", "2000", "--proxy-epochs", "1", "--rungs", "1", "--device", "cpu", "--workers", "2",
         "--no-progress"]
BATCHES = (32, 128, 512)
# Resource use of one child, measured from a fresh parent (RUSAGE_CHILDREN is the largest / summed child so far).
PROBE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
         "rc = subprocess.run(sys.argv[1:]).returncode; r = resource.getrusage(resource.RUSAGE_CHILDREN); "
         "print(rc, time.perf_counter() - t, r.ru_maxrss, r.ru_utime + r.ru_stime)")
# The proxy of one network at one batch size: images/s of training, seconds of the evaluation.
PROXY = """
import json, sys, time
import torch
import models, trainers
torch.set_num_threads(1)
spec, batch, n = models.ArchSpec.from_json(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
data = trainers.load_cifar10(sys.argv[4]).proxy_subset(n)
t = time.process_time()
r = trainers.train(lambda: models.build(spec), data, protocol="proxy", epochs=1, device="cpu", progress=False,
                   hparams={"batch_size": batch, "lr": 0.1 * batch / 128, "eval_batch_size": 64})
print(json.dumps({"images_per_second": r.images_per_second, "train_seconds": r.seconds["train"],
                  "eval_seconds": r.seconds["eval"], "val_accuracy": r.val_accuracy,
                  "cpu_ms_per_image": 1000 * (time.process_time() - t) / (n + len(data.val))}))
"""


def _git(*args: str) -> str | None:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None


def _tree_rss(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants (from /proc)."""
    parent, rss = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                rss[int(d.name)] = int((d / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                pass
    tree, todo = set(), [root]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, q in parent.items() if q == p and c not in tree]
    return sum(rss.get(p, 0) for p in tree)


class _Sampler(threading.Thread):
    """The 1-minute load average, and the resident memory of a process tree, every ``every`` seconds."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.peak_tree, self.pid, self._stop = every, [], 0, None, threading.Event()

    def run(self):
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])
            if self.pid is not None:
                self.peak_tree = max(self.peak_tree, _tree_rss(self.pid))

    def stop(self) -> dict:
        self._stop.set()
        s = self.samples or [os.getloadavg()[0]]
        return {"mean_1min": round(sum(s) / len(s), 2), "min_1min": round(min(s), 2), "max_1min": round(max(s), 2),
                "samples": len(s)}


def _measured(argv: list[str], cwd: Path, env: dict) -> dict:
    """Wall and CPU seconds, peak resident MiB and output of ``argv`` in its own process."""
    before = list(os.getloadavg())
    sampler = _Sampler()
    sampler.start()
    proc = subprocess.Popen([sys.executable, "-c", PROBE, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sampler.pid = proc.pid
    stdout, stderr = proc.communicate(timeout=6 * 3600)
    during = sampler.stop()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    lines = out.stdout.strip().splitlines()
    rc, seconds, maxrss_kib, cpu = lines[-1].split()
    if int(rc):
        raise SystemExit(f"error: {' '.join(argv)} exited {rc}:\n{out.stderr[-3000:]}")
    return {"seconds": round(float(seconds), 1), "cpu_seconds": round(float(cpu), 1),
            "peak_resident_mib": round(int(maxrss_kib) / 1024, 1),
            "peak_tree_resident_mib": round(sampler.peak_tree / 2**20, 1), "load_average_before": before,
            "load_average_during": during, "load_average_after": list(os.getloadavg()), "stdout": lines[:-1]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder holding cifar-10-batches-py")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--no-batch", action="store_true", help="skip the batch 128 vs 512 comparison")
    args = p.parse_args(argv)
    data = str(Path(args.data).resolve())
    record = {"provenance": {"git_commit": _git("rev-parse", "HEAD"),
                             "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                             "python": platform.python_version(), "cpu_count": os.cpu_count(),
                             "platform": platform.platform(), "data": data}}
    with tempfile.TemporaryDirectory(prefix="stacknas-cpu-real-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "STACKNAS_HOME": str(home), "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, str(ROOT / "search.py"), *STUDY, "--data", data]
        run = _measured(argv, home, env)
        run["argv"] = ["python", "search.py", *STUDY, "--data", "DATA"]
        summary = json.loads((home / "results" / "c10-cpu" / "summary.json").read_text())
        sys.path.insert(0, str(ROOT))
        os.environ["STACKNAS_HOME"] = str(home)
        import studies                                     # late: the study is read after the run only
        table = studies.show("c10-cpu")
        cols = ["state", "val_accuracy", "memory", "params", "architecture", "pareto", "proxy_seconds"]
        trials = json.loads(table[cols].reset_index().to_json(orient="records"))
        study = studies.open_study("c10-cpu")
        for t, row in zip(study.get_trials(), trials):
            row["proxy_images_per_second"] = t.user_attrs.get("proxy_images_per_second")
        run.update(trials=trials, summary={k: v for k, v in summary.items() if k != "settings"},
                   proxy_hparams=study.user_attrs.get("proxy_hparams"))
        batch = {}
        first = next((t for t in study.get_trials() if t.state.name == "COMPLETE"), None)
        if first is not None and not args.no_batch:
            for b in BATCHES:
                m = _measured([sys.executable, "-c", PROXY, first.user_attrs["spec"], str(b), "2000", data], home, env)
                batch[str(b)] = {**json.loads(m.pop("stdout")[-1]), **m}
            batch["network"] = first.user_attrs.get("architecture")
            batch["training_bytes_per_image"] = first.user_attrs.get("training_bytes_per_image")
        run["batch_comparison"] = batch
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record["provenance"]["time_utc"] = stamp
    record["run"] = run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_cpu_real-{stamp}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"run      {run['seconds']:8.1f} s wall, {run['cpu_seconds']:8.1f} s CPU, {run['peak_resident_mib']:7.1f} MiB "
          f"peak resident (largest process), {run['peak_tree_resident_mib']:7.1f} MiB (all); load average during "
          f"{run['load_average_during']['mean_1min']}")
    for b, m in batch.items():
        if isinstance(m, dict):
            print(f"batch {b:>4s} {m['cpu_ms_per_image']:6.1f} CPU ms/image  {m['peak_resident_mib']:7.1f} MiB peak "
                  f"resident")
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
