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
