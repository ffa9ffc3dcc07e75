"""Flip rate and mask oscillation (sparsekit.flips) against plain-Python loops over hand-made mask
sequences, and the per-step flips of from-scratch training runs against their own every-step mask
snapshots; old stored training runs without flips still load."""
import json
import random

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from sparsekit import viz
from sparsekit.flips import FlipTracker, FlipWindow, change_counts, flip_rate, oscillating, window_series
from sparsekit.models.digits import digits_split
from sparsekit.models.weights import safetensors_header
from sparsekit.training import TrainConfig, load_run, run_and_save, run_from_bytes, run_to_bytes, train


def bits_sequence(seed: int, steps: int, shape: tuple[int, ...], p: float) -> list[list[int]]:
    """A sequence of flat 0/1 lists: each step flips every bit with probability ``p``."""
    rng = random.Random(seed)
    numel = 1
    for s in shape:
        numel *= s
    cur = [rng.randint(0, 1) for _ in range(numel)]
    seq = [cur]
    for _ in range(steps):
        cur = [b ^ (rng.random() < p) for b in cur]
        seq.append(cur)
    return seq


def as_mask(bits: list[int], shape) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool).reshape(shape)


def loop_changes(seq: list[list[int]]) -> list[int]:
    """Per entry: how many consecutive pairs differ."""
    counts = [0] * len(seq[0])
    for a, b in zip(seq, seq[1:]):
        for i, (x, y) in enumerate(zip(a, b)):
            counts[i] += x != y
    return counts


def loop_oscillating(seq: list[list[int]]) -> int:
    """Entries that changed state at least twice and so came back to a state held before in the window."""
    out = 0
    for i in range(len(seq[0])):
        states = [s[i] for s in seq]
        changes = sum(a != b for a, b in zip(states, states[1:]))
        returned = any(states[j] == states[k] and any(states[t] != states[j] for t in range(k, j))
                       for j in range(len(states)) for k in range(j))
        assert (changes >= 2) == returned  # the docstring's claim: for a bit, both mean the same
        out += changes >= 2
    return out


def test_hand_made_entries():
    # One entry per column: never changes, changes once, goes and comes back, back and forth twice, moves late.
    seq = [[0, 0, 1, 1, 0],
           [0, 1, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 1, 0, 1]]
    masks = [as_mask(row, (5,)) for row in seq]
    assert change_counts(masks).tolist() == [0, 1, 2, 3, 1]
    assert oscillating(masks).tolist() == [False, False, True, True, False]
    assert [flip_rate(a, b) for a, b in zip(masks, masks[1:])] == [3 / 5, 2 / 5, 2 / 5]


@pytest.mark.parametrize("seed,p", [(0, 0.05), (1, 0.3), (2, 0.0), (3, 1.0)])
def test_flip_rate_and_oscillation_against_loops(seed, p):
    shapes = {"fc": (4, 8), "conv": (2, 4, 3, 3)}
    seqs = {name: bits_sequence(seed + i, 12, shape, p) for i, (name, shape) in enumerate(shapes.items())}
    masks = [{n: as_mask(seqs[n][t], shapes[n]) for n in shapes} for t in range(13)]
    numel = {n: len(seqs[n][0]) for n in shapes}
    # Pooled flip rate of one step: changed entries of all layers over all entries.
    for t in range(1, 13):
        changed = sum(seqs[n][t][i] != seqs[n][t - 1][i] for n in shapes for i in range(numel[n]))
        assert flip_rate(masks[t - 1], masks[t]) == pytest.approx(changed / sum(numel.values()))
        assert flip_rate(masks[t - 1]["fc"], masks[t]["fc"]) == pytest.approx(
            sum(a != b for a, b in zip(seqs["fc"][t - 1], seqs["fc"][t])) / numel["fc"])
    # The tracker, in windows of 5, 5 and 2 steps.
    tracker = FlipTracker(masks[0])
    windows, rates = [], []
    for t in range(1, 13):
        rates.append(tracker.step_rate(tracker.update(masks[t])))
        if t in (5, 10, 12):
            windows.append(tracker.close())
    bounds = [(0, 5), (5, 10), (10, 12)]
    for w, (a, b) in zip(windows, bounds):
        assert w.steps == b - a
        for n in shapes:
            window = seqs[n][a:b + 1]
            assert w.flips[n] == sum(loop_changes(window))
            assert w.oscillating[n] == loop_oscillating(window)
            assert w.flip_rate(n) == pytest.approx(sum(loop_changes(window)) / ((b - a) * numel[n]))
            assert w.oscillation_rate(n) == pytest.approx(loop_oscillating(window) / numel[n])
            counts = change_counts([as_mask(bits, shapes[n]) for bits in window])
            assert counts.flatten().tolist() == loop_changes(window)
            assert int(oscillating([as_mask(bits, shapes[n]) for bits in window]).sum()) == loop_oscillating(window)
        pooled = sum(sum(loop_changes(seqs[n][a:b + 1])) for n in shapes)
        assert w.flip_rate() == pytest.approx(pooled / ((b - a) * sum(numel.values())))
    assert rates == pytest.approx([flip_rate(masks[t - 1], masks[t]) for t in range(1, 13)])
    assert window_series(windows, "flips").tolist() == [float(sum(w.flips.values())) for w in windows]
    assert [FlipWindow.from_json(json.loads(json.dumps(w.to_json()))) for w in windows] == windows


def test_bad_inputs():
    a = torch.zeros(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="shapes differ"):
        flip_rate(a, torch.zeros(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        flip_rate(a, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="different layers"):
        flip_rate({"x": a}, {"y": a})
    with pytest.raises(ValueError, match="unknown layer"):
        FlipWindow.empty({"x": 8}).flip_rate("y")
    with pytest.raises(ValueError, match="measure"):
        window_series([], "speed")
    assert FlipWindow.empty({"x": 8}).flip_rate() == 0.0


# ----------------------------------------------------------------------------- training records


@pytest.fixture(scope="module")
def data():
    return digits_split()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny runs, faster on one thread


def quick(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(arch="cnn", method="ste", epochs=2, batch_size=128), **kw})


@pytest.mark.parametrize("method", ["ste", "srste", "gradual"])
def test_training_flips_match_every_step_snapshots(method, data):
    # The same deterministic run twice: snapshots at every step give the reference masks for the
    # windows of the run that snapshots every 5 steps.
    fine = train(quick(method=method, snapshot_unit="step", snapshot_every=1), data=data)
    coarse = train(quick(method=method, snapshot_unit="step", snapshot_every=5), data=data)
    assert coarse.history.steps == [0, 5, 10, 15, 20, 24]
    layers = fine.history.layers
    steps = fine.history.steps
    numel = {n: fine.history.numel(n) for n in layers}
    seq = {n: [fine.history.mask(n, i).flatten().int().tolist() for i in range(len(steps))] for n in layers}
    assert len(fine.step_flip_rate) == len(coarse.step_flip_rate) == fine.steps_done == 24
    for t in range(1, len(steps)):
        changed = sum(sum(loop_changes(seq[n][t - 1:t + 1])) for n in layers)
        assert fine.step_flip_rate[t - 1] == pytest.approx(changed / sum(numel.values()))
    assert len(coarse.flip_windows) == len(coarse.history)
    assert coarse.flip_windows[0].steps == 0
    for w, a, b in zip(coarse.flip_windows[1:], coarse.history.steps, coarse.history.steps[1:]):
        assert w.steps == b - a
        for n in layers:
            assert w.flips[n] == sum(loop_changes(seq[n][a:b + 1]))
            assert w.oscillating[n] == loop_oscillating(seq[n][a:b + 1])
    total_flips = sum(sum(w.flips.values()) for w in coarse.flip_windows)
    assert total_flips > 0
    doc = coarse.to_dict()
    assert doc["flips"]["flip_rate"] == pytest.approx(window_series(coarse.flip_windows, "flip_rate").tolist())
    fig = viz.flip_rate_figure([coarse, fine])
    assert list(fig.data[0].y) == pytest.approx(coarse.step_flip_rate)
    assert list(fig.data[1].x) == [5.0, 10.0, 15.0, 20.0, 24.0]
    assert list(fig.data[1].y) == pytest.approx(window_series(coarse.flip_windows, "oscillation_rate")[1:].tolist())


def test_fixed_mask_training_has_no_flips(data):
    rec = train(quick(method="random", epochs=1), data=data)
    assert rec.step_flip_rate == [0.0] * rec.steps_done
    assert all(sum(w.flips.values()) == 0 and sum(w.oscillating.values()) == 0 for w in rec.flip_windows)


def test_flips_survive_the_store_and_old_runs_still_load(tmp_cache, data):
    rec = run_and_save(quick(epochs=1), data=data)
    back = load_run(rec.run_id)
    assert back.step_flip_rate == rec.step_flip_rate and back.flip_windows == rec.flip_windows
    # A run entry as written before flips were recorded: the same bytes without the two new keys.
    blob = run_to_bytes(rec)
    meta = dict(safetensors_header(blob)["__metadata__"])
    info = json.loads(meta["record"])
    del info["step_flip_rate"], info["flip_windows"]
    meta["record"] = json.dumps(info)
    old = run_from_bytes(save_tensors(load_tensors(blob), metadata=meta))
    assert old.step_flip_rate == [] and old.flip_windows == []
    assert old.history.steps == rec.history.steps and old.epochs == rec.epochs
    assert "flips" not in old.to_dict()
