"""Progress of long calls: a tqdm bar by default (after a delay), silence on request, callbacks as before."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import progress as P


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def test_reporter_passes_callbacks_and_silence_through():
    seen = []

    def cb(f, m):
        seen.append((f, m))

    with P.reporter(cb, "x") as r:
        assert r is cb
    for quiet in (False, None):
        with P.reporter(quiet, "x") as r:
            assert r is None
    with pytest.raises(TypeError, match="progress must be"):
        with P.reporter("yes", "x"):
            pass


def test_bar_shows_fraction_and_message(capfd, monkeypatch):
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    with P.reporter(True, "unit work") as r:
        r(0.25, "a quarter")
        r(1.0, "all of it")
    err = capfd.readouterr().err
    assert "unit work" in err and "100%" in err and "all of it" in err


def test_short_calls_print_nothing_and_callbacks_still_work(capfd, monkeypatch):
    sparsekit.sparsify(net(), sparsekit.SparsifyConfig())  # default progress=True, far under the delay
    assert capfd.readouterr().err == ""
    seen = []
    sparsekit.sparsify(net(), sparsekit.SparsifyConfig(), progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    sparsekit.sparsify(net(), sparsekit.SparsifyConfig())
    err = capfd.readouterr().err
    assert "sparsify" in err and "100%" in err
    sparsekit.sparsify(net(), sparsekit.SparsifyConfig(), progress=False)
    assert capfd.readouterr().err == ""


def test_bar_closes_when_the_call_fails(capfd, monkeypatch):
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    with pytest.raises(ValueError):
        sparsekit.sparsify(net(), sparsekit.SparsifyConfig(pattern="nm", n=4, m=4))
    assert "sparsify" in capfd.readouterr().err  # closed and flushed, not left hanging
