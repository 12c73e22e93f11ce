"""The README's notebook cells run as written, one after the other, on synthetic data."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebook_cells() -> list[str]:
    """The ```python blocks of the README's "In a notebook" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## In a notebook", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_cells_run_as_written(tmp_path):
    cells = notebook_cells()
    assert len(cells) == 5, cells                     # run, show, retrain, dashboard, export
    checks = """
assert counts["finished"] == counts["total"] == 4, counts
assert len(front) >= 1 and {"val_accuracy", "memory", "params", "architecture"} <= set(front.columns)
assert page["path"].endswith("nb-demo.html")
import pathlib
assert {p.name for p in pathlib.Path(exported["out"]).iterdir()} >= {"model.pt2", "preprocess.json", "model_card.md",
                                                                      "network.svg"}
assert not pathlib.Path("nb-winner").exists() and pathlib.Path(exported["out"]).parent.name == "exports"
print("README cells ran")
"""
    script = "\n".join(f"# --- cell {i}\n{c}" for i, c in enumerate(cells)) + checks
    env = {**os.environ, "STACKNAS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "README cells ran" in res.stdout


def _section(title: str) -> str:
    return (ROOT / "README.md").read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_your_own_images_commands_are_the_programs_own():
    import shlex

    import search
    commands = [line for block in re.findall(r"```bash\n(.*?)```", _section("Your own images"), re.S)
                for line in block.splitlines() if line.startswith("python search.py ")]
    assert [c.split()[2] for c in commands] == ["run", "show", "retrain", "export"]
    for command in commands:
        args = search.build_parser().parse_args(shlex.split(command)[2:])      # every flag exists
        assert args.study == "pets"
    assert "--dataset pets/" in commands[0] and "--image-size 32" in commands[0]


def test_cpu_figures_come_from_the_committed_benchmark():
    import json
    results = sorted((ROOT / "benchmarks" / "results").glob("bench_cpu_real-*.json"))
    assert results, "benchmarks/bench_cpu_real.py has not been run and committed"
    run = json.loads(results[-1].read_text())["run"]
    text = " ".join(_section("Real data on a CPU").split())
    command = " ".join(run["argv"]).replace("--no-progress ", "").replace("--data DATA", "--data DATA_DIR")
    assert command in text
    minutes, seconds = divmod(round(run["seconds"]), 60)
    for figure in (f"{minutes} min {seconds} s", f"{run['cpu_seconds']:,.0f} CPU-seconds",
                   f"{run['peak_resident_mib']:,.0f} MiB", f"{run['peak_tree_resident_mib']:,.0f} MiB",
                   f"load average {run['load_average_during']['mean_1min']:.1f}"):
        assert figure in text, figure
    assert "shared" in text and "loaded" in text
    batch = run["batch_comparison"]
    speeds = [f"{batch[b]['images_per_second']:.1f}" for b in ("32", "128", "512")]
    assert f"{speeds[0]} images/s at 32, {speeds[1]} at 128 and {speeds[2]} at 512" in text
    assert ", ".join(f"{batch[b]['peak_resident_mib']:,.0f}" for b in ("32", "128")) + \
        f" and {batch['512']['peak_resident_mib']:,.0f} MiB peak resident" in text
    assert f"({batch['training_bytes_per_image'] / 1e6:.1f} MB of tracked activations per image)" in text
