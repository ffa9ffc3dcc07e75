"""Mask snapshots and SAD series, checked against plain-loop references."""
import math

import numpy as np
import pytest
import torch

import sparsekit
from sparsekit.topology import (MaskHistory, flip_counts, matrix_view, pack_mask, sad_report, unpack_mask)


def loop_sad(a: torch.Tensor, b: torch.Tensor) -> int:
    """Positions whose keep bit differs, one element at a time."""
    return sum(1 for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist()) if bool(x) != bool(y))


def test_sad_identical_and_complementary():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 10, generator=gen) > 0.5
    assert sparsekit.sad(mask, mask) == 0
    assert sparsekit.sad(mask, ~mask) == mask.numel()
    hist = MaskHistory({"a": (6, 10)})
    for step, mk in enumerate([mask, mask, ~mask]):
        hist.record(step, float(step), {"a": mk})
    rep = sad_report(hist)
    assert rep.interval["a"].tolist() == [0, 0, 60]
    assert rep.from_first["a"].tolist() == [0, 0, 60]
    assert rep.to_final["a"].tolist() == [60, 60, 0]
    assert rep.series("interval", fraction=True).tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("shape", [(1,), (3, 5, 7), (16, 8), (2, 3, 3, 3)])
def test_pack_roundtrip_and_size(shape):
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(shape, generator=gen) > 0.3
    blob = pack_mask(mask)
    assert len(blob) == math.ceil(mask.numel() / 8)
    assert torch.equal(unpack_mask(blob, shape), mask)
    with pytest.raises(ValueError, match="do not fit"):
        unpack_mask(blob + b"\x00", shape)
    with pytest.raises(TypeError):
        pack_mask(mask.float())


def _random_history(n_snap=6, seed=2):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"fc": (4, 12), "conv": (8, 4, 3, 3)}
    hist = MaskHistory(shapes)
    masks = {k: torch.rand(s, generator=gen) > 0.5 for k, s in shapes.items()}
    snaps = []
    for i in range(n_snap):
        # Flip a random, shrinking share of the bits so that the series are not trivial.
        masks = {k: v ^ (torch.rand(v.shape, generator=gen) < 0.4 / (i + 1)) for k, v in masks.items()}
        hist.record(i * 10, i * 0.5, masks)
        snaps.append({k: v.clone() for k, v in masks.items()})
    return hist, snaps


def test_sad_report_matches_plain_loops():
    hist, snaps = _random_history()
    rep = sad_report(hist)
    assert rep.steps == [0, 10, 20, 30, 40, 50] and rep.epochs == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    for name in ("fc", "conv"):
        numel = snaps[0][name].numel()
        ref_int = [0] + [loop_sad(snaps[i - 1][name], snaps[i][name]) for i in range(1, 6)]
        ref_first = [loop_sad(snaps[0][name], s[name]) for s in snaps]
        ref_final = [loop_sad(s[name], snaps[-1][name]) for s in snaps]
        assert rep.interval[name].tolist() == ref_int
        assert rep.from_first[name].tolist() == ref_first
        assert rep.to_final[name].tolist() == ref_final
        assert rep.series("cumulative", name).tolist() == list(np.cumsum(ref_int))
        assert rep.series("interval", name, fraction=True) == pytest.approx([v / numel for v in ref_int])
    total_int = [sum(loop_sad(snaps[i - 1][n], snaps[i][n]) for n in ("fc", "conv")) if i else 0 for i in range(6)]
    assert rep.series("interval").tolist() == total_int
    assert rep.series("interval", fraction=True) == pytest.approx([v / (48 + 288) for v in total_int])
    assert rep.matrix("interval").shape == (2, 6)
    # The totals also equal the contract's dict form of sad.
    assert rep.series("from_first")[3] == sparsekit.sad(snaps[0], snaps[3])
    with pytest.raises(ValueError, match="kind"):
        rep.series("sideways")
    with pytest.raises(ValueError, match="unknown layer"):
        rep.series("interval", "nope")


def test_report_rows_for_csv():
    hist, snaps = _random_history(3)
    rows = sad_report(hist).rows()
    assert len(rows) == 3 * 3  # 2 layers + the total, per snapshot
    last_total = [r for r in rows if r["snapshot"] == 2 and r["layer"] == "(all)"][0]
    assert last_total["sad_interval"] == loop_sad(snaps[1]["fc"], snaps[2]["fc"]) + loop_sad(snaps[1]["conv"], snaps[2]["conv"])
    assert last_total["numel"] == 48 + 288


def test_flip_counts_plain_loop():
    hist, snaps = _random_history()
    for name in ("fc", "conv"):
        counts = flip_counts(hist, name)
        assert counts.shape == snaps[0][name].shape
        flat = [s[name].reshape(-1).tolist() for s in snaps]
        ref = [sum(1 for i in range(1, len(flat)) if flat[i][j] != flat[i - 1][j]) for j in range(len(flat[0]))]
        assert counts.reshape(-1).tolist() == ref
        assert int(counts.sum()) == int(sad_report(hist).interval[name].sum())
    with pytest.raises(ValueError, match="unknown layer"):
        flip_counts(hist, "nope")


def test_record_rejects_bad_snapshots():
    hist = MaskHistory({"a": (2, 4)})
    ok = torch.ones(2, 4, dtype=torch.bool)
    hist.record(0, 0.0, {"a": ok})
    with pytest.raises(ValueError, match="does not follow"):
        hist.record(0, 0.0, {"a": ok})
    with pytest.raises(ValueError, match="differ from the recorded layers"):
        hist.record(1, 0.1, {"b": ok})
    with pytest.raises(ValueError, match="expected"):
        hist.record(1, 0.1, {"a": torch.ones(4, 2, dtype=torch.bool)})
    assert len(hist) == 1 and hist.nbytes == 1 and hist.density(0) == 1.0


def test_empty_history_report():
    rep = sad_report(MaskHistory({}))
    assert rep.layers == [] and rep.series("interval").tolist() == []


def test_matrix_view_conv_channel_layout():
    w = torch.arange(2 * 8 * 3 * 3).reshape(2, 8, 3, 3)
    view = matrix_view(w, "channel")
    assert view.shape == (2, 72)
    # Row o, column (kh*3 + kw)*8 + c holds w[o, c, kh, kw]: M consecutive input channels per group.
    for o in range(2):
        for c in range(8):
            for kh in range(3):
                for kw in range(3):
                    assert view[o, (kh * 3 + kw) * 8 + c] == w[o, c, kh, kw]
    assert torch.equal(matrix_view(w, "kernel"), w.reshape(2, -1))
    assert matrix_view(torch.ones(3, 4)).shape == (3, 4)
