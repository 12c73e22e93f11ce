"""Faults and hostile input: each ends in one clear line (exit 2), and nothing stays stuck.

A corrupt checkpoint is set aside and the network restarts; a dead claimant of a
retrain on this machine is detected, a live one elsewhere is named with its
expiry and the command exits non-zero; a full disk or a read-only database is one
line naming the path and the cause; a damaged study file is called damaged, not
missing; sizes a user can type are bounded before anything is created.
"""
from __future__ import annotations

import io
import json
import socket
import sqlite3
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from torch import nn

import search
import studies
import trainers
from studies import objective
from studies.retrain import retrain_targets
from studies.storage import open_store

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(budget="60k", tolerance=0.1, synthetic=True, synthetic_images=64, synthetic_image_size=8,
            proxy_hparams={"batch_size": 32}, device="cpu", rungs=1, progress=False)


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = search.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def retrained(home):
    """A 3-trial study whose front was retrained for one epoch."""
    studies.run("f", 3, seed=1, say=lambda m: None, **TINY)
    studies.retrain("f", epochs=1, progress=False, say=lambda m: None)
    return studies.open_study("f")


# ----------------------------------------------------------------------------- checkpoints
def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "overwritten"])
def test_unreadable_checkpoint_is_set_aside_and_the_run_restarts(tmp_path, damage):
    data = trainers.synthetic(n_train=128, n_val=64, n_test=64, image_size=8)
    kw = dict(protocol="fast", epochs=2, device="cpu", progress=False, hparams={"batch_size": 32})
    ckpt = tmp_path / "checkpoint.pt"
    trainers.train(tiny_net, data, checkpoint_path=ckpt, **kw)
    raw = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": raw[:len(raw) // 2], "zeroed": bytes(len(raw)),
                      "overwritten": b"not a checkpoint\n" * 10}[damage])
    said = []
    r = trainers.train(tiny_net, data, checkpoint_path=ckpt, resume=True, say=said.append, **kw)
    assert r.ok and r.resumed_from_epoch is None and r.epochs == 2
    assert len(said) == 1 and "unreadable" in said[0] and "set aside" in said[0] and r.notes == said
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoint.pt.unreadable-")]
    assert len(aside) == 1 and aside[0].stat().st_size > 0                 # kept for inspection
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2         # a good one again


def test_retrain_goes_past_a_corrupt_checkpoint(retrained, home):
    first = retrain_targets(retrained)[0].number
    folder = home / "runs" / "f" / f"trial_{first}" / "fast-2ep"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04" + bytes(100))     # a zip header and nothing
    rc, out, err = cli("retrain", "--study", "f", "--epochs", "2", "--no-progress")
    assert rc == 0, err
    assert sum("unreadable" in line and "set aside" in line for line in out.splitlines()) == 1, out
    assert any(p.name.startswith("checkpoint.pt.unreadable-") for p in folder.iterdir())
    assert (folder / "weights.pt").exists()


# ----------------------------------------------------------------------------- claims
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_dead_claimant_on_this_machine_is_taken_over(retrained, home):
    """What a `kill -9` of a retrain leaves: a fresh claim whose process is gone."""
    uid = retrained.user_attrs["uid"]
    targets = retrain_targets(retrained)
    claims = open_store("f", owner=f"{socket.gethostname()}:{_dead_pid()}").claims
    assert claims.try_claim(f"{uid}:retrain:fast-3ep:{targets[0].number}", 60)
    rc, out, err = cli("retrain", "--study", "f", "--epochs", "3", "--no-progress")
    assert rc == 0, err
    assert "left to" not in out
    study = studies.open_study("f")
    assert all(study.user_attrs[f"retrain:{t.number}:fast-3ep"]["status"] == "ok" for t in targets)


def test_a_live_claim_elsewhere_is_named_and_the_exit_is_non_zero(retrained, home):
    uid = retrained.user_attrs["uid"]
    targets = retrain_targets(retrained)
    claims = open_store("f", owner="another-host:4242").claims
    assert claims.try_claim(f"{uid}:retrain:fast-4ep:{targets[0].number}", 60)
    rc, out, err = cli("retrain", "--study", "f", "--epochs", "4", "--no-progress")
    line = one_line_error(rc, err)
    assert "another-host:4242" in line and "expires at" in line and "rerun" in line
    assert f"trial {targets[0].number}: being retrained by another-host:4242" in out
    study = studies.open_study("f")
    assert f"retrain:{targets[0].number}:fast-4ep" not in study.user_attrs
    assert all(study.user_attrs[f"retrain:{t.number}:fast-4ep"]["status"] == "ok" for t in targets[1:])


# ----------------------------------------------------------------------------- storage faults
def _db_full(*args, **kwargs):
    raise sa.exc.OperationalError("INSERT INTO trial_user_attributes ...", {},
                                  sqlite3.OperationalError("database or disk is full"))


def test_a_full_database_during_run_is_one_line_and_the_trial_is_failed(home, monkeypatch):
    real = objective.prepare
    calls = []

    def prepare(trial, ctx):
        calls.append(trial.number)
        if len(calls) == 2:
            _db_full()
        return real(trial, ctx)
    monkeypatch.setattr(objective, "prepare", prepare)
    rc, out, err = cli("run", "--study", "full", "--trials", "3", "--budget", "60k", "--tolerance", "0.1",
                       "--synthetic", "--synthetic-images", "64", "--synthetic-image-size", "8", "--rungs", "1",
                       "--device", "cpu", "--no-progress")
    line = one_line_error(rc, err)
    assert "database or disk is full" in line and str(home / "full.db") in line
    trials = studies.open_study("full").get_trials()
    assert [t.state.name for t in trials][:2][1] == "FAIL"          # told, not left RUNNING
    assert trials[0].state.name in ("COMPLETE", "PRUNED")           # what was written before is intact


def test_a_full_disk_while_checkpointing_says_so(retrained, home, monkeypatch):
    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4736 vs 4628")
    monkeypatch.setattr(trainers.checkpoint.torch, "save", full)
    monkeypatch.setattr(trainers.checkpoint.shutil, "disk_usage", lambda p: type("U", (), {"free": 2**20})())
    rc, out, err = cli("retrain", "--study", "f", "--epochs", "5", "--no-progress")
    line = one_line_error(rc, err)
    assert "No space left on device" in line and "checkpoint.pt" in line and "inline_container" not in line


def test_an_unwritable_dashboard_path_is_one_line(retrained, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_line_error(*cli("dashboard", "--study", "f", "--out", str(blocker / "page.html"))[::2])
    assert "cannot write" in line and "a-file" in line


@pytest.mark.parametrize("command", ["show", "dashboard", "export", "retrain"])
@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_a_damaged_database_is_called_damaged_not_missing(retrained, home, tmp_path, monkeypatch, command, damage):
    other = tmp_path / "home"
    other.mkdir()
    raw = (home / "f.db").read_bytes()
    (other / "demo.db").write_bytes(raw[:len(raw) // 2] if damage == "truncated" else b"hello, not a database\n" * 50)
    monkeypatch.setenv("STACKNAS_HOME", str(other))
    args = ["--out", str(tmp_path / "o")] if command == "export" else []
    line = one_line_error(*cli(command, "--study", "demo", *args)[::2])
    assert "not a readable SQLite database" in line and str(other / "demo.db") in line
    assert "unknown study" not in line


# ----------------------------------------------------------------------------- hostile input
@pytest.mark.parametrize("extra, fragment", [
    (["--trials", "1000000000"], "--trials: must be an integer in [1, 100,000]"),
    (["--proxy-hparams", '{"lr": -1}'], "--proxy-hparams: hyperparameter lr"),
    (["--synthetic-images", "-5"], "--synthetic-images"),
    (["--synthetic-image-size", "100000"], "--synthetic-image-size"),
    (["--proxy-hparams", "[" * 15000 + "]" * 15000], "--proxy-hparams"),
])
def test_bad_options_are_refused_before_the_study_exists(home, extra, fragment):
    argv = ["run", "--study", "hostile", "--synthetic", "--device", "cpu", "--no-progress", "--trials", "2", *extra]
    line = one_line_error(*cli(*argv)[::2])
    assert fragment in line
    assert not (home / "hostile.db").exists()


@pytest.mark.parametrize("budget", ["1e99", "500", "20k"])
def test_a_budget_out_of_reach_is_refused_with_the_range(home, budget):
    line = one_line_error(*cli("run", "--study", "reach", "--trials", "2", "--budget", budget, "--synthetic",
                               "--device", "cpu", "--no-progress")[::2])
    assert "outside the search space's reach" in line and " to " in line and "parameters" in line
    assert not (home / "reach.db").exists()                    # refused before anything was created


def test_storage_is_checked_before_the_data(tmp_path):
    line = one_line_error(*cli("run", "--study", "x", "--trials", "1", "--storage", "garbage://x",
                               "--data", str(tmp_path / "none"), "--device", "cpu")[::2])
    assert "storage" in line and "CIFAR" not in line
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("command", ["show", "dashboard", "export", "retrain", "run"])
def test_an_overlong_study_name_is_refused_alike_everywhere(command, tmp_path):
    args = {"export": ["--out", str(tmp_path / "o")], "run": ["--trials", "1", "--synthetic"]}.get(command, [])
    line = one_line_error(*cli(command, "--study", "s" * 300, *args)[::2])
    assert "study name" in line and "1-100" in line


def test_presets_into_a_closed_pipe_is_quiet():
    p = subprocess.run(f"{sys.executable} search.py presets | head -1", shell=True, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.stdout.count("\n") == 1 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_describe_of_a_huge_spec_allocates_nothing(tmp_path):
    """A valid spec whose real build and batch-2 steps would need gigabytes is described on the
    meta device: the figures come back, the process stays small."""
    import resource
    spec = {"stages": [{"scheme": "rk4", "blocks": 2, "width": 512}], "image_size": 512}
    f = tmp_path / "huge.json"
    f.write_text(json.dumps(spec))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run([sys.executable, "search.py", "describe", str(f), "--compact"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["training_bytes_per_image"] > 4 * 2**30          # a real step at batch 2 would hold > 8 GB
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak < 2 * 2**20 or peak <= before, peak               # KiB: under 2 GB resident


def test_spec_files_that_are_not_specs_name_the_file(tmp_path):
    binary = tmp_path / "weights.json"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "weights.json" in one_line_error(*cli("describe", str(binary))[::2])
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 1000 + "]" * 1000)
    line = one_line_error(*cli("describe", str(deep))[::2])
    assert "deep.json" in line


# ----------------------------------------------------------------------------- issue 23, item 6
def test_a_full_disk_met_in_fsync_names_the_checkpoint(tmp_path, monkeypatch):
    """flush/fsync report a full disk without a file name: the error names the checkpoint."""
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(trainers.checkpoint.os, "fsync", full)
    path = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(OSError) as e:
        trainers.checkpoint.atomic_save({"w": torch.ones(3)}, path)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert search._one_line(e.value) == f"cannot write {path}: No space left on device"
    assert os.listdir(path.parent) == []                        # no temporary left beside it


def test_a_spec_with_a_key_given_twice_is_refused(tmp_path):
    f = tmp_path / "dup.json"
    f.write_text('{"stages": [{"scheme": "euler", "blocks": 1, "width": 64, "width": 4096}]}')
    line = one_line_error(*cli("describe", str(f))[::2])
    assert "'width' is given twice (64 and 4096)" in line and "dup.json" in line


@pytest.mark.parametrize("lr", ["1e308", "Infinity"])
def test_a_learning_rate_past_its_finite_bound_is_refused(home, lr):
    line = one_line_error(*cli("run", "--study", "lr", "--synthetic", "--device", "cpu", "--no-progress",
                               "--trials", "1", "--proxy-hparams", f'{{"lr": {lr}}}')[::2])
    assert "hyperparameter lr: must be a number in [1e-12, 1000]" in line
    assert not (home / "lr.db").exists()


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_an_in_memory_storage_is_refused_in_one_line(home, url):
    line = one_line_error(*cli("run", "--study", "mem", "--storage", url, "--trials", "1", "--synthetic",
                               "--device", "cpu", "--no-progress")[::2])
    assert "is in memory; a study must outlive the process" in line


def test_a_damaged_page_says_its_cause_and_the_advice_on_one_line(tmp_path, monkeypatch):
    db = tmp_path / "demo.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x)")
    con.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
    con.commit()
    con.close()
    raw = bytearray(db.read_bytes())
    for page in (2, 5):                                         # scramble two B-tree pages' cell pointers
        raw[4096 * page + 8:4096 * page + 58] = b"\x07" * 50
    db.write_bytes(bytes(raw))
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA quick_check").fetchone()[0].count("\n") > 3     # SQLite's report: many lines
    con.close()
    monkeypatch.setenv("STACKNAS_HOME", str(tmp_path))
    line = one_line_error(*cli("show", "--study", "demo")[::2])
    assert "not a readable SQLite database (On tree page" in line and "more problems)" in line
    assert line.endswith("move it aside and restore a copy, or start another study")


def test_a_spec_file_that_is_a_fifo_or_a_device_is_not_a_regular_file(tmp_path):
    import os
    fifo, zero = tmp_path / "fifo.json", tmp_path / "zero.json"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    for f in (fifo, zero):
        line = one_line_error(*cli("describe", str(f))[::2])
        assert f"spec file '{f}' is not a regular file" in line


def test_a_write_under_proc_says_cannot_write(retrained):
    line = one_line_error(*cli("describe", "resnet-20", "--svg", "/proc/stacknas-test.svg")[::2])
    assert line == "error: cannot write /proc/stacknas-test.svg: No such file or directory"
    line = one_line_error(*cli("dashboard", "--study", "f", "--out", "/proc/stacknas-test.html")[::2])
    assert "cannot write /proc/stacknas-test.html" in line and "read" not in line
    line = one_line_error(*cli("show", "--study", "f", "--csv", "/proc/stacknas-test.csv")[::2])
    assert "cannot write /proc/stacknas-test.csv" in line


def test_a_huge_budget_prints_in_scientific_notation(home):
    line = one_line_error(*cli("run", "--study", "huge", "--trials", "1", "--budget", "1e300", "--synthetic",
                               "--device", "cpu", "--no-progress")[::2])
    assert "--budget 1e+300: outside the search space's reach" in line and len(line) < 200
