"""pyproject.toml keeps lower bounds only (a user's newer PyTorch must not be blocked); CI pins."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dependencies_have_lower_bounds_only_and_ci_pins_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0] for d in deps}
    assert {"torch", "torchvision", "optuna", "scipy"} <= names
    for d in deps:
        assert ">=" in d and not re.search(r"<|==|~=|!=", d), d
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"torch==\d", ci) and re.search(r"torchvision==\d", ci)
