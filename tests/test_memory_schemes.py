"""Inference memory orders the schemes as 001 Table 2 does (SPEC §4).

001 reports Euler 1x, midpoint 1x, RK4 1.5x, Verner 7x. At equal parameters
(Euler x28, Midpoint x14, RK4 x7, RK8 x2; 2.07M) the tracker counts, in
64x32x32 activations per image: Euler 3 (the block input and two live
sub-net intermediates), midpoint 4 (plus its stage input), RK4 5 (plus the
b-weighted accumulator), Verner 13 (stage outputs wait for stages up to 12
later). The baseline carries the sub-net's own intermediates, which the
paper's figure need not, so ratios are compressed but the order is the
paper's: euler ~ midpoint < rk4 << verner8.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import models
from models import presets
from models.measure import peak_memory

ROOT = Path(__file__).resolve().parents[1]
ACT = 64 * 32 * 32 * 4  # bytes of one 64-channel 32x32 float32 activation


@pytest.fixture(scope="module")
def inference():
    names = ("ho-euler-x28", "ho-midpoint-x14", "ho-rk4-x7", "ho-verner8-x2")
    return {n.split("-")[1]: peak_memory(models.build(presets.get(n)), (3, 32, 32), mode="inference")
            for n in names}


def test_scheme_memory_order(inference):
    e, m, r, v = (inference[k] for k in ("euler", "midpoint", "rk4", "verner8"))
    assert m / e < 1.4          # close together (paper: 1x, 1x)
    assert r > m and r / e < 2  # RK4 above them (paper: 1.5x)
    assert v / e > 3.5          # Verner far above (paper: 7x)


def test_scheme_memory_in_activations(inference):
    """The counts the module docstring derives, to within the tiny stem input."""
    expect = {"euler": 3, "midpoint": 4, "rk4": 5, "verner8": 13}
    for k, n in expect.items():
        assert inference[k] // ACT == n, (k, inference[k] / ACT)


def _describe(*args):
    return subprocess.run([sys.executable, "search.py", "describe", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_describe_prints_one_json_object():
    r = _describe("ho-rk4-x7", "--compact")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"name", "params", "macs", "inference_bytes_per_image", "training_bytes_per_image",
            "stages"} <= set(out)
    assert out["params"] == 2_074_058
    assert out["macs"] == 28 * 2 * 64 * 64 * 9 * 32 * 32 + 3 * 64 * 9 * 32 * 32 + 64 * 10
    assert out["stages"][0]["name"] == "RK4 x7 / 64ch"
    assert out["training_bytes_per_image"] > out["inference_bytes_per_image"]


def test_describe_spec_file(tmp_path):
    spec = presets.get("resnet-20")
    f = tmp_path / "net.json"
    f.write_text(spec.to_json())
    r = _describe(str(f))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["params"] == 269_722


@pytest.mark.parametrize("arg, message", [
    ("ho-rk5-x7", "error: unknown preset 'ho-rk5-x7'"),
    ("missing.json", "error: spec file 'missing.json' does not exist"),
])
def test_describe_bad_input_is_one_line(arg, message):
    r = _describe(arg)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith(message)


def test_describe_bad_spec_names_the_field(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{"stages": [{"scheme": "euler", "width": 16, "form": "paper"}]}')
    r = _describe(str(f))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: stages[0].form: 'paper' exists only for midpoint, rk4")
