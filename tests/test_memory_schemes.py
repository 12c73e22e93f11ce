"""Inference memory orders the schemes as 001 Table 2 does.

001 reports Euler 1x, midpoint 1x, RK4 1.5x (1x), Verner 7x. At equal
parameters (Euler x28, Midpoint x14, RK4 x7, RK8 x2; 2.07M) the tracker counts,
in 64x32x32 activations per image (plus the 3-channel input image):

* Euler 3: the block input ``x`` and two live tensors inside the sub-net (a
  layer's input and output);
* midpoint 3: ``x``, then ``Y_2 = x + K_1/2`` (``K_1`` is dropped once ``Y_2``
  exists), then ``x`` and the second sub-net's two; ``Y_2`` itself is handed
  over and freed after that sub-net's first layer, as a plain stack frees a
  block's input. Equal to Euler, as 001 says;
* RK4 4: ``x``, the accumulator of ``b_i K_i``, and the sub-net's two;
* Verner 12 (3.95x, below 001's 7x): at stage 14's input, ``x``, the
  accumulator, the nine stage outputs that stage still needs (``K_1``,
  ``K_6``..``K_13``) and ``Y_14``.

The paper forms of midpoint and RK4 (000/001 eqs. 6-9) hold the same: 3 and 4.
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
IMAGE = 3 * 32 * 32 * 4  # bytes of the input image, alive throughout


@pytest.fixture(scope="module")
def inference():
    names = ("ho-euler-x28", "ho-midpoint-x14", "ho-rk4-x7", "ho-verner8-x2", "ho-midpoint-paper-x14",
             "ho-rk4-paper-x7")
    return {n.removeprefix("ho-").rsplit("-x", 1)[0]: peak_memory(models.build(presets.get(n)), (3, 32, 32),
                                                                     mode="inference")
            for n in names}


def test_scheme_memory_matches_001_table_2(inference):
    e, m, r, v = (inference[k] for k in ("euler", "midpoint", "rk4", "verner8"))
    assert m == e               # paper: 1x
    assert e < r <= 1.5 * e     # paper: 1.5x
    assert 3.5 * e < v < 7 * e  # paper: 7x
    assert inference["midpoint-paper"] == e and inference["rk4-paper"] == r


def test_scheme_memory_in_activations(inference):
    """The counts the module docstring derives, exactly."""
    expect = {"euler": 3, "midpoint": 3, "rk4": 4, "verner8": 12, "midpoint-paper": 3, "rk4-paper": 4}
    assert {k: (b - IMAGE) / ACT for k, b in inference.items()} == expect


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
