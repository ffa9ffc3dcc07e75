"""Method comparison: sweep configs, rows against independent runs, the disk cache, memory accounting."""
import json
import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch import nn

import sparsekit
import sparsekit.permutation
from sparsekit import compare as cmp
from sparsekit.evaluate import CompareRow, PermutedRow
from sparsekit.models.base import LoadedModel
from sparsekit.sparsify import SparsifyConfig, prunable_layers, sparsify


@pytest.fixture(scope="module")
def mlp(digits_cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEKIT_CACHE_DIR", str(digits_cache_dir))
        yield sparsekit.load_model("digits:mlp")


def test_sweep_configs():
    configs = cmp.sweep_configs(["magnitude", "wanda"], [(2, 4), (1, 4)], [0.5, 0.7])
    assert [(c.pattern, c.n, c.m, c.sparsity, c.method) for c in configs][:3] == [
        ("nm", 2, 4, 0.5, "magnitude"), ("nm", 2, 4, 0.5, "wanda"), ("nm", 1, 4, 0.5, "magnitude")]
    assert len(configs) == 8 and {c.sparsity for c in configs if c.pattern == "unstructured"} == {0.5, 0.7}
    with pytest.raises(ValueError, match="sparsity must be between 0 and 0.99"):
        cmp.sweep_configs(["magnitude"], [], [1.5])
    with pytest.raises(ValueError, match="unknown method"):
        cmp.sweep_configs(["obs"], [(2, 4)], [])
    with pytest.raises(ValueError, match="at least one method"):
        cmp.sweep_configs([], [(2, 4)], [])
    with pytest.raises(ValueError, match="1 <= N < M"):
        cmp.sweep_configs(["magnitude"], [(4, 4)], [])
    with pytest.raises(ValueError, match="at least one N:M pattern"):
        cmp.sweep_configs(["magnitude"], [], [])


def test_compare_rows_match_independent_runs_and_are_cached(mlp, tmp_cache, monkeypatch):
    configs = cmp.sweep_configs(["magnitude", "wanda", "sparsegpt"], [(2, 4)], [0.5])
    rows = cmp.compare(mlp, configs)
    assert [r.cached for r in rows] == [False] * 6
    for config, row in zip(configs, rows):
        res = sparsify(mlp, config)
        assert row.quality["accuracy"] == pytest.approx(mlp.quality(res.model)["accuracy"])
        kept = sum(int(m.sum()) for m in res.masks.values())
        total = sum(mod.weight.numel() for _, mod in prunable_layers(mlp.module))
        assert row.sparsity == pytest.approx(1 - kept / total)
        # Memory: each pruned layer in its cheapest format, computed here from the report.
        best = 0
        for r in res.report:
            options = [r.dense_bytes, r.bitmask_bytes, r.csr_bytes] + ([r.nm_bytes] if r.nm_bytes else [])
            best += min(options) if r.pruned else r.dense_bytes
        assert row.best_bytes == best and row.best_bytes < row.dense_bytes
        assert CompareRow.from_json(json.loads(json.dumps(row.to_json()))) == row  # cached as JSON
    assert rows[0].formats == {"n:m": 3}  # 2:4 ties with a bitmask; the kernel format wins

    # Second run: from the disk cache, nothing is recomputed.
    monkeypatch.setattr(cmp, "evaluate", lambda *a, **k: pytest.fail("recomputed a cached setting"))
    again = cmp.compare(mlp, configs)
    assert [r.cached for r in again] == [True] * 6
    assert [r.quality for r in again] == [r.quality for r in rows]

    patterns, methods, values = cmp.pivot(rows, "accuracy")
    assert patterns == ["2:4", "unstructured 50%"] and methods == ["magnitude", "wanda", "sparsegpt"]
    assert values[0][2] == rows[2].quality["accuracy"]
    table = cmp.markdown_table([cmp.dense_row(mlp), *rows], "accuracy")
    assert table.splitlines()[0] == "| setting | dense | magnitude | wanda | sparsegpt |"


def test_permuted_row(mlp, tmp_cache):
    row = cmp.permuted_nm_row(mlp, 2, 4)
    plain = sparsify(mlp, SparsifyConfig(pattern="nm", n=2, m=4))
    assert row.method == "magnitude+perm" and 0 < row.recovered_share <= 1
    assert {r["layer"] for r in row.layers} == {"fc2", "head"}
    assert row.sparsity == pytest.approx(1 - sum(int(m.sum()) for m in plain.masks.values()) /
                                            sum(m.numel() for m in plain.masks.values()))
    assert cmp.permuted_nm_row(mlp, 2, 4).cached is True


def test_compare_bad_input(mlp):
    no_calibration = LoadedModel(spec="toy", name="toy", kind="image-classifier", module=nn.Sequential(nn.Linear(8, 4)),
                                 quality_fn=lambda m: {"x": 1.0}, calibration=None)
    with pytest.raises(ValueError, match="needs calibration data"):
        cmp.evaluate(no_calibration, SparsifyConfig(method="sparsegpt"))
    with pytest.raises(TypeError, match="needs a LoadedModel"):
        cmp.compare(nn.Linear(4, 4), [])
    bad = SparsifyConfig(pattern="unstructured", sparsity=2.0)
    with pytest.raises(ValueError, match="sparsity must be between"):
        cmp.compare(mlp, [bad])
    no_linear = LoadedModel(spec="toy", name="toy", kind="image-classifier", module=nn.Sequential(nn.ReLU()),
                            quality_fn=lambda m: {"x": 1.0}, calibration=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no Linear or Conv layers"):
        cmp.evaluate(no_linear, SparsifyConfig(method="wanda"))


@pytest.mark.parametrize("higher", [True, False])
def test_best_first_ranks_methods_per_setting(higher):
    rows = [make_row(pattern=p, method=m, quality={"accuracy": a, "loss": -a})
            for p, m, a in [("2:4", "magnitude", 80.0), ("2:4", "wanda", 90.0), ("unstructured 70%", "magnitude", 50.0),
                            ("2:4", "random", 80.0), ("unstructured 70%", "wanda", 70.0), ("1:4", "magnitude", 10.0)]]
    ranking = cmp.best_first(rows, "accuracy", higher_is_better=higher)
    assert list(ranking) == ["2:4", "unstructured 70%", "1:4"]
    for pattern, ranked in ranking.items():
        # Reference: repeatedly take the best remaining row (the earliest on a tie).
        left = [(r.method, r.quality["accuracy"]) for r in rows if r.pattern == pattern]
        ref = []
        while left:
            best = left[0]
            for cand in left[1:]:
                if (cand[1] > best[1]) if higher else (cand[1] < best[1]):
                    best = cand
            ref.append(best)
            left.remove(best)
        assert ranked == ref
    assert cmp.best_first(rows, "loss", higher_is_better=False)["2:4"][0] == ("wanda", -90.0)
    assert cmp.best_first([], "accuracy") == {}


def make_row(**fields) -> CompareRow:
    """A row with the given fields, the rest filled with plain values."""
    base = dict(method="magnitude", pattern="2:4", family="N:M", setting="2:4 magnitude", target_sparsity=0.5,
                sparsity=0.5, quality={"accuracy": 90.0}, dense_bytes=4000, best_bytes=1000, formats={"n:m": 1},
                layers_pruned=1, layers_total=1, prune_seconds=0.1, seconds=0.2, notes={},
                config=SparsifyConfig().to_json())
    return CompareRow(**{**base, **fields})


def _row(method, family, pattern, sparsity, acc):
    return make_row(method=method, family=family, pattern=pattern, sparsity=sparsity, best_bytes=1000,
                    quality={"accuracy": acc})


def test_compare_row_json_round_trip_unknown_and_missing_fields():
    row = make_row(quality={"accuracy": 90.0, "loss": float("nan")}, notes={"head": "left dense"}, cached=True)
    data = json.loads(json.dumps(row.to_json()))  # as the cache stores it (NaN as the JSON NaN literal)
    assert "cached" not in data  # where this process got a row is not part of it
    back = CompareRow.from_json(data)
    assert back.quality["accuracy"] == 90.0 and math.isnan(back.quality["loss"])
    assert replace(back, quality={}) == replace(row, quality={}, cached=False)
    assert CompareRow.from_json({**data, "cached": True}).cached is True
    assert CompareRow.from_json(json.dumps(make_row().to_json())) == make_row()  # from JSON text too
    # Strict JSON stores NaN as null (a study record's detail): it reads back as NaN.
    assert math.isnan(CompareRow.from_json({**data, "quality": {"loss": None}}).quality["loss"])
    # serial's rule: an unknown field is refused, a missing one takes its default or is refused.
    with pytest.raises(ValueError, match=r"unknown compare row field\(s\) \['qualiti'\]"):
        CompareRow.from_json({**data, "qualiti": {}})
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['best_bytes'\]"):
        CompareRow.from_json({k: v for k, v in data.items() if k != "best_bytes"})
    # A permuted row keeps its search fields; a plain row's dict is not a permuted row.
    perm = PermutedRow(**{**make_row().to_json(), "method": "magnitude+perm"}, search_seconds=1.5, recovered_share=0.25,
                       layers=[{"layer": "fc2", "perm": [1, 0]}], skipped={"fc1": "no producer"}, stopped=False,
                       layers_searched=1, not_reached=[])
    assert PermutedRow.from_json(json.dumps(perm.to_json())) == perm
    with pytest.raises(ValueError, match="lacks field"):
        PermutedRow.from_json(make_row().to_json())
    with pytest.raises(ValueError, match="unknown compare row field"):
        CompareRow.from_json(perm.to_json())


def test_compare_figure_layout_keeps_labels_apart_and_legend_below():
    from sparsekit import viz

    rows = [_row("dense", "dense", "dense", 0.0, 0.97)]
    for method, base in (("magnitude", 0.90), ("wanda", 0.92), ("sparsegpt", 0.93)):
        rows += [_row(method, "N:M", "2:4", 0.5, base), _row(method, "N:M", "4:8", 0.5, base + 0.01),
                 _row(method, "N:M", "1:4", 0.75, base - 0.2),
                 _row(method, "unstructured", "unstructured 50%", 0.5, base + 0.02),
                 _row(method, "unstructured", "unstructured 70%", 0.7, base - 0.05)]
    fig = viz.compare_figure(rows, "accuracy")
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0  # below the plot, not beside it
    data = [t for t in fig.data if t.meta != "labels"]
    # One legend entry per method; every point is drawn where its row says.
    assert [t.name for t in data if t.showlegend] == ["magnitude", "wanda", "sparsegpt"]
    for t in data:
        mine = [r for r in rows if r.method == t.legendgroup and r.family == t.meta]
        assert sorted(zip(t.x, t.y)) == sorted((r.sparsity, r.quality["accuracy"]) for r in mine)
    nm = [t for t in data if t.meta == "N:M"]
    for t in nm:  # the pattern is in the marker symbol, the same symbol for the same pattern
        assert dict(zip(t.customdata, t.marker.symbol)) == {"2:4": "diamond", "4:8": "square", "1:4": "triangle-up"}
    labels = next(t for t in fig.data if t.meta == "labels")
    # Each pattern named once per x (not once per method), and labels at the same x in different places.
    assert Counter(zip(labels.x, labels.text)) == Counter({(0.5, "2:4"): 1, (0.5, "4:8"): 1, (0.75, "1:4"): 1})
    at_half = [p for xv, p in zip(labels.x, labels.textposition) if xv == 0.5]
    assert len(set(at_half)) == len(at_half) == 2
    # The 4:8 cluster lies above the 2:4 one here: its label goes on top of its highest point.
    top = dict(zip(labels.text, zip(labels.y, labels.textposition)))
    assert top["4:8"] == (pytest.approx(0.94), "top center")
    assert top["2:4"] == (pytest.approx(0.90), "bottom center")


def test_cached_rows_only_when_every_setting_was_run(mlp, tmp_cache):
    configs = cmp.sweep_configs(["magnitude", "random"], [(2, 4)], [])
    assert cmp.cached_rows(mlp, configs) is None
    cmp.compare(mlp, configs[:1])
    assert cmp.cached_rows(mlp, configs) is None  # one of two is not enough
    rows = cmp.compare(mlp, configs)
    got = cmp.cached_rows(mlp, configs)
    assert [r.quality for r in got] == [r.quality for r in rows] and all(r.cached for r in got)
    assert cmp.cached_rows(mlp, []) is None


def test_permuted_row_stops_without_caching_and_resumes(mlp, tmp_cache):
    limit = 1e9  # no time limit: the search then depends on its rounds only
    done = []
    part = cmp.permuted_nm_row(mlp, 2, 4, max_seconds_per_layer=limit, on_layer=done.append,
                               should_stop=lambda: len(done) >= 1)
    assert part.stopped and part.layers_searched == 1 and part.not_reached == ["head"]
    assert [r["layer"] for r in part.layers] == ["fc2"] == [r["layer"] for r in done]
    # The partial row is measured on the partly permuted model: 2:4 magnitude of that copy.
    perm = sparsekit.permutation.permute_channels(mlp, 2, 4, resume=done, should_stop=lambda: True)
    assert part.quality == pytest.approx(mlp.quality(sparsify(perm.model, SparsifyConfig()).model))
    again = cmp.permuted_nm_row(mlp, 2, 4, max_seconds_per_layer=limit, should_stop=lambda: True)
    # the stopped row was not cached, its finished layer was (on disk), and nothing else was searched
    assert again.cached is False and again.layers_searched == 1 and again.not_reached == ["head"]
    assert [r["perm"] for r in again.layers] == [r["perm"] for r in done]
    full = cmp.permuted_nm_row(mlp, 2, 4, max_seconds_per_layer=limit, resume=part.layers)
    fresh = cmp.permuted_nm_row(mlp, 2, 4, max_seconds_per_layer=limit, use_cache=False)
    assert not full.stopped and full.layers_searched == 2
    assert [r["perm"] for r in full.layers] == [r["perm"] for r in fresh.layers]
    assert full.quality == fresh.quality
    assert cmp.permuted_nm_row(mlp, 2, 4, max_seconds_per_layer=limit).cached is True
