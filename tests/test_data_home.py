"""A data home copied or moved elsewhere: a study stores its weights' paths relative to the data
home (older absolute ones are still read), so the copy exports its own weights and names them."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, cli

import studies
from studies.storage import home_relative, in_home

def test_paths_inside_the_home_are_stored_relative_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path / "a"))
    w = tmp_path / "a" / "runs" / "s" / "trial_0" / "fast" / "weights.pt"
    assert home_relative(w) == "runs/s/trial_0/fast/weights.pt"
    assert home_relative(tmp_path / "elsewhere.pt") == str(tmp_path / "elsewhere.pt")     # outside: absolute
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path / "b"))
    here = tmp_path / "b" / "runs" / "s" / "trial_0" / "fast" / "weights.pt"
    assert in_home("runs/s/trial_0/fast/weights.pt") == here
    # an absolute path of an earlier version: this home's copy when it is here, else as stored
    assert in_home(str(w)) == w
    here.parent.mkdir(parents=True)
    here.write_bytes(b"")
    assert in_home(str(w)) == here


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A study retrained in home A, then A copied to B (A left in place)."""
    root = tmp_path_factory.mktemp("homes")
    mp = pytest.MonkeyPatch()
    mp.setenv("STACKNAS_HOME", str(root / "a"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc, out, err = cli("run", "--study", "mv", "--trials", "2", "--seed", "1", *TINY_RUN)
        assert rc == 0, err
        rc, out, err = cli("retrain", "--study", "mv", "--epochs", "1", "--no-progress")
        assert rc == 0, err
        shutil.copytree(root / "a", root / "b")
        mp.setenv("STACKNAS_HOME", str(root / "b"))
        yield root
    finally:
        torch.set_num_threads(threads)
        mp.undo()


def test_the_study_stores_weights_relative_to_its_home(moved):
    records = [v for k, v in studies.open_study("mv").user_attrs.items() if k.startswith("retrain:")]
    assert records and all(r["weights_path"].startswith("runs/mv/trial_") for r in records)
    assert all(not Path(r["checkpoint_path"]).is_absolute() for r in records)


def test_a_copied_home_exports_its_own_weights_and_names_them(moved, tmp_path):
    out = tmp_path / "exported"
    rc, _, err = cli("export", "--study", "mv", "--best", "--out", str(out))
    assert rc == 0, err
    card = (out / "model_card.md").read_text()
    assert str(moved / "b" / "runs" / "mv") in card and str(moved / "a") not in card
    shutil.rmtree(moved / "a")                                  # the old home gone: the copy still exports
    rc, _, err = cli("export", "--study", "mv", "--best", "--out", str(tmp_path / "again"))
    assert rc == 0, err
    table = studies.show("mv")
    done = table[table["weights_path"].notna()]
    assert len(done) and all(Path(p).is_file() and str(moved / "b") in p for p in done["weights_path"])
