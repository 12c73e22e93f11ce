"""Fixtures several test modules share."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A data home (STACKNAS_HOME) for the module: default databases, runs/ and results/ go there;
    torch on one thread meanwhile (tiny networks: one thread is faster than two fighting)."""
    d = tmp_path_factory.mktemp("home")
    old, threads = os.environ.get("STACKNAS_HOME"), torch.get_num_threads()
    os.environ["STACKNAS_HOME"] = str(d)
    torch.set_num_threads(1)
    yield d
    torch.set_num_threads(threads)
    if old is None:
        os.environ.pop("STACKNAS_HOME", None)
    else:
        os.environ["STACKNAS_HOME"] = old
