"""Results show themselves: each card's figures equal the object's own fields (recomputed here by hand),
the HTML escapes what it shows, repr() stays one short line, and .figure() draws the named plot."""
from __future__ import annotations

import html
import re

import plotly.graph_objects as go
import pytest
import torch
from torch import nn

import sparsekit
import sparsekit.viz  # noqa: F401  (registers the figure builders that .figure() uses)
from sparsekit.allocation import Allocation
from sparsekit.attention import AttentionCapture, HeadMetrics
from sparsekit.display import Card, Shown, fmt, percent
from sparsekit.sensitivity import SensitivityConfig, SensitivityScan


def cells(card_html: str) -> list[list[str]]:
    """The table of a card's HTML as rows of cell texts (unescaped)."""
    return [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", card_html) if "<td>" in row]


def check_short(obj: Shown) -> None:
    text = repr(obj)
    assert text.startswith("<") and text.endswith(">") and "\n" not in text and len(text) < 400
    assert "tensor(" not in text and "Sequential" not in text


def test_card_formats_and_escapes():
    card = Card("T <x>", {"a&b": "1 < 2"}, [{"k": 1234567, "v": 0.000123456, "n": None, "s": "<b>"}] * 12, "n<ote")
    page = card.html()
    assert "<b>a&amp;b</b>: 1 &lt; 2" in page and "&lt;b&gt;" in page and "n&lt;ote" in page
    assert "<strong>T &lt;x&gt;</strong>" in page
    assert cells(page)[0] == ["1,234,567", "0.0001235", "—", "<b>"]
    assert len(cells(page)) == 10 and "… and 2 more rows" in page
    assert card.text() == "T <x>: a&b 1 < 2"
    assert fmt(float("nan")) == "NaN" and fmt(True) == "yes" and fmt((2, 4)) == "2×4" and percent(0.5) == "50.0%"


def test_sparsify_result_card():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 4))
    result = sparsekit.sparsify(net, sparsekit.SparsifyConfig(pattern="nm", n=1, m=4))
    card = result.summary_card()
    # By hand from the masks: layers 0 and 2 take 1:4 (8 and 16 inputs); layer 4 has 6 inputs, not a multiple of 4.
    kept = sum(int(m.sum()) for m in result.masks.values())
    pruned_total = sum(m.numel() for m in result.masks.values())
    all_total = sum(m.weight.numel() for m in net if isinstance(m, nn.Linear))
    assert card.headline["layers with weights removed"] == "2 / 3"
    assert card.headline["kept in pruned layers"] == f"{100 * kept / pruned_total:.1f}%" == "25.0%"
    assert card.headline["kept in all Linear/Conv"] == f"{100 * (kept + 24) / all_total:.1f}%"
    rows = cells(result._repr_html_())
    assert [r[0] for r in rows] == ["0", "2", "4"]
    assert rows[2][2] == "100.0%" and "not a multiple of M=4" in rows[2][3]
    check_short(result)
    fig = result.figure()
    assert isinstance(fig, go.Figure) and len(fig.data) >= 1


def scan() -> SensitivityScan:
    cfg = SensitivityConfig(sparsities=(0.5, 0.9))
    return SensitivityScan(
        config=cfg, spec="digits:mlp", fingerprint="f", metric="accuracy", higher_is_better=True,
        dense_quality=97.5, settings=("50%", "90%"), units=("fc1", "fc2", "head"),
        unit_layers=(("fc1",), ("fc2",), ("head",)), unit_numel=(16384, 32768, 1280),
        quality=((97.0, 80.0), (97.5, 96.0), (97.2, None)), drop=((0.5, 17.5), (0.0, 1.5), (0.3, None)),
        proxy=((0.1, 0.6), (0.05, 0.2), (0.2, 0.9)), spearman=(0.5, None))


def test_sensitivity_scan_card():
    s = scan()
    card = s.summary_card()
    rows = cells(s._repr_html_())
    # Most sensitive first at the last setting; a missing drop sorts last.
    assert [r[0] for r in rows] == ["fc1", "fc2", "head"]
    assert rows[0] == ["fc1", "16,384", "0.5", "17.5"] and rows[2][3] == "—"
    assert card.headline["units"] == "3" and card.headline["complete"] == "yes"
    assert card.headline["Spearman proxy vs drop"] == "0.5, —"
    check_short(s)
    fig = s.figure()
    assert isinstance(fig, go.Figure)


def test_allocation_card():
    alloc = Allocation("owl", "unstructured", {"a": 0.4, "b": 0.6}, {"a": 400, "b": 1200}, {"a": 1000, "b": 2000},
                       1600, scores={"a": 0.01, "b": 0.002}, note="OWL note")
    card = alloc.summary_card()
    assert card.headline["overall sparsity"] == "53.33% (1,600 of 3,000)"
    assert card.headline["requested"] == "1,600 pruned"
    rows = cells(alloc._repr_html_())
    assert rows == [["a", "1,000", "40.00%", "0.01"], ["b", "2,000", "60.00%", "0.002"]]
    check_short(alloc)
    fig = alloc.figure()
    assert [round(y, 6) for y in fig.data[0].y] == [40.0, 60.0]


def capture() -> AttentionCapture:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    qkv = torch.randn(2, 3, 5, 4)
    return AttentionCapture(scores=probs.log(), probs=probs, query=qkv, key=qkv, value=qkv,
                            tokens=["CLS", "a", "<b>", "c", "SEP"], causal=False, layer_names=["l0", "l1"],
                            model="minilm")


def test_attention_capture_card():
    cap = capture()
    card = cap.summary_card()
    assert card.headline["layers × heads"] == "2 × 3" and card.headline["tokens"].startswith("5: CLS a <b>")
    rows = cells(cap._repr_html_())
    # Mean entropy per layer by a plain loop.
    for layer in range(2):
        total = 0.0
        for h in range(3):
            for i in range(5):
                total -= sum(float(p) * float(torch.log(p)) for p in cap.probs[layer, h, i])
        assert float(rows[layer][2]) == pytest.approx(total / 15, rel=1e-3)
    check_short(cap)
    fig = cap.figure(layer=1, head=2)
    assert torch.allclose(torch.tensor(fig.data[0].z, dtype=torch.float32), cap.probs[1, 2])
    with pytest.raises(ValueError, match="outside the capture"):
        cap.figure(layer=2)


def test_head_metrics_card():
    m = HeadMetrics("sliding window", density=torch.tensor([[0.2, 0.4], [0.6, 0.8]]),
                    recall=torch.tensor([[0.9, 1.0], [0.5, 0.7]]), error=torch.tensor([[0.1, 0.0], [0.3, 0.5]]))
    card = m.summary_card()
    assert card.headline["mean density"] == "50.0%" and card.headline["mean recall"] == "77.5%"
    assert cells(m._repr_html_()) == [["0", "30.0%", "95.0%", "0.05"], ["1", "70.0%", "60.0%", "0.4"]]
    check_short(m)
    assert m.figure(value="error").data[0].z is not None
    with pytest.raises(ValueError, match="value must be one of"):
        m.figure(value="speed")


def test_a_result_without_figure_says_so():
    class Plain(Shown):
        def summary_card(self) -> Card:
            return Card("Plain")

    with pytest.raises(TypeError, match="has no figure"):
        Plain().figure()


# ----------------------------------------------------------------------------- runs, studies, recovery, benchmarks

def run_record():
    from sparsekit.topology import MaskHistory
    from sparsekit.training import EpochMetrics, RunRecord, TrainConfig

    history = MaskHistory({"fc": (2, 4)})
    m0 = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    m1 = torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0]], dtype=torch.bool)  # 2 entries changed
    m2 = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0]], dtype=torch.bool)  # 2 more (all 4 of row 0 from the first)
    for i, m in enumerate((m0, m1, m2)):
        history.record(i * 10, float(i), {"fc": m})
    epochs = [EpochMetrics(epoch=1.0, step=10, train_loss=1.5, test_loss=1.2, train_accuracy=60.0, test_accuracy=70.0,
                           lr=0.1, density=0.5, seconds=1.0),
              EpochMetrics(epoch=2.0, step=20, train_loss=0.9, test_loss=0.8, train_accuracy=80.0, test_accuracy=85.25,
                           lr=0.01, density=0.5, seconds=2.0)]
    return RunRecord(config=TrainConfig(arch="mlp", method="ste", epochs=3, n=2, m=4), name="<mine>", status="stopped",
                     message="stopped at step 20 of 30", steps_per_epoch=10, steps_done=20, epochs=epochs,
                     history=history)


def test_run_record_card():
    rec = run_record()
    card = rec.summary_card()
    assert card.title == "RunRecord <mine>" and card.headline["status"] == "stopped"
    assert card.headline["method"] == rec.config.label() and card.headline["epochs"] == "2 of 3 (20 steps)"
    assert card.headline["held-out accuracy"] == "85.25%" and card.headline["test loss"] == "0.8"
    assert card.headline["kept"] == "50.0%"
    # SAD by hand: 2 of the 8 entries moved in the last interval, 4 since the first snapshot.
    assert card.headline["SAD last interval / first → final"] == "25.00% / 50.00%"
    page = rec._repr_html_()
    assert "RunRecord &lt;mine&gt;" in page and "stopped at step 20 of 30" in page
    assert cells(page) == [["1", "1.5", "1.2", "70", "50.0%", "1"], ["2", "0.9", "0.8", "85.25", "50.0%", "2"]]
    check_short(rec)
    fig = rec.figure()
    assert list(fig.data[0].y) == [70.0, 85.25] and list(fig.data[0].x) == [1.0, 2.0]
    sad = rec.figure(what="sad")
    assert [round(100 * y, 6) for y in sad.data[0].y if y is not None][-1] == 25.0
    with pytest.raises(ValueError, match="curves or sad"):
        rec.figure(what="flips")


def seed_result():
    from sparsekit.seedstudy import SeedRun, SeedStudyConfig, SeedStudyResult
    from sparsekit.training import TrainConfig

    cfg = SeedStudyConfig(train=TrainConfig(arch="mlp", epochs=2, batch_size=256), patterns=((2, 4),), seeds=3,
                          lambda_sweep=())

    def run(method, seed, late, acc):
        return SeedRun(method=method, n=2, m=4, lambda_w=cfg.lambda_w if method == "srste" else 0.0, seed=seed,
                       accuracy=acc, late_sad_pct=late, early_sad_pct=40.0, late_flipped_pct=late / 2,
                       sparse_weights=100, seconds=1.0)

    runs = [run("ste", s, late, 90.0 + s) for s, late in zip(range(3), (3.0, 2.0, 4.0))]
    runs += [run("srste", s, late, 91.0 + s) for s, late in zip((2, 0, 1), (3.5, 2.5, 1.5))]
    return SeedStudyResult(cfg, runs, computed=2)


T975_DF2 = 4.302652729911275
"""Student-t 0.975 quantile at 2 degrees of freedom (printed tables: 4.303)."""


def test_seed_study_result_card():
    res = seed_result()
    card = res.summary_card()
    assert card.headline["runs"] == "6 of 6" and card.headline["trained now"] == "2"
    # Paired by seed, SR-STE − STE late SAD: 2.5 − 3, 1.5 − 2, 3.5 − 4 = −0.5 each: lower in all 3.
    assert card.headline["2:4 late SAD, SR-STE − STE"] == "-0.5 [-0.5, -0.5] pp (SR-STE lower in 3 of 3)"
    rows = cells(res._repr_html_())
    assert [r[:3] for r in rows] == [["2:4", "STE", "3"], ["2:4", f"SR-STE λ={res.config.lambda_w:g}", "3"],
                                     ["2:4", "SR-STE − STE", "3"]]
    # STE late SAD: mean 3, sd 1, half width t·1/√3.
    half = T975_DF2 / 3 ** 0.5
    assert rows[0][3] == f"3 [{3 - half:.3g}, {3 + half:.3g}]"
    assert rows[2][4] == "1 [1, 1]"  # accuracy: SR-STE one point above STE at every seed
    check_short(res)
    fig = res.figure()
    means = [t.y[0] for t in fig.data if t.marker.symbol == "diamond"]
    assert means == [pytest.approx(3.0), pytest.approx(2.5)]


def study_result():
    from sparsekit.study import StudySpec
    from sparsekit.study.records import CellRecord
    from sparsekit.study.runner import StudyResult
    from sparsekit.study.store import StudyStatus

    spec = StudySpec(name="s<1>", models=("digits:mlp",), methods=("magnitude", "wanda"), patterns=("2:4",),
                     seeds=(0, 1))

    def cell(method, seed, acc, status="done"):
        return CellRecord(kind="oneshot", model="digits:mlp", method=method, pattern="2:4", seed=seed, status=status,
                          metrics={} if acc is None else {"accuracy": acc}, higher_is_better={"accuracy": True},
                          kept_fraction=0.5, error=None if acc is not None else "boom")

    records = [cell("magnitude", 0, 90.0), cell("magnitude", 1, 90.0), cell("wanda", 0, 92.0), cell("wanda", 1, 94.0),
               cell("random", 0, None, "failed")]
    return StudyResult(spec, records, StudyStatus(study_id="x", name="s", state="finished", total=5, done=4, failed=1))


def test_study_result_card():
    res = study_result()
    card = res.summary_card()
    assert card.headline["cells"] == "4 done, 1 failed of 5" and card.headline["state"] == "finished"
    assert card.headline["best accuracy"] == "2:4: wanda 93"  # means 90 and 93
    rows = cells(res._repr_html_())
    # wanda: mean 93, sd √2 over 2 seeds, half width t(0.975, 1)·√2/√2 = 12.706 (printed tables).
    assert rows[0][:5] == ["digits:mlp", "2:4", "magnitude", "2", "90 [90, 90]"]
    assert rows[1][4] == f"93 [{93 - 12.706205:.4g}, {93 + 12.706205:.4g}]" and rows[1][6] == "★" and rows[0][6] == ""
    assert "s&lt;1&gt;" in res._repr_html_()
    check_short(res)
    ys = sorted(y for t in res.figure().data for y in (t.y or ()) if y is not None)
    assert 90.0 in ys and 93.0 in ys


def recovery_record():
    from sparsekit.flips import FlipWindow
    from sparsekit.recovery import RecoveryConfig, RecoveryRecord
    from sparsekit.recovery.records import RecoveryInterval
    from sparsekit.topology import MaskHistory

    n = {"fc": 100}
    nan = float("nan")
    intervals = [RecoveryInterval(0, {"accuracy": 80.0}, nan, nan, 0.1, {"fc": 0}, {"fc": 0}, FlipWindow.empty(n)),
                 RecoveryInterval(5, {"accuracy": 90.0}, 0.5, 1e-3, 1.0, {"fc": 6}, {"fc": 6},
                                  FlipWindow(5, dict(n), {"fc": 10}, {"fc": 2})),
                 RecoveryInterval(10, {"accuracy": 93.0}, 0.3, 1e-4, 2.0, {"fc": 4}, {"fc": 8},
                                  FlipWindow(5, dict(n), {"fc": 5}, {"fc": 1}))]
    return RecoveryRecord(config=RecoveryConfig(mode="ste", steps=10, eval_every=5),
                          sparsify_config=sparsekit.SparsifyConfig(pattern="nm", n=2, m=4), model_spec="digits:mlp",
                          model_name="digits MLP", metric="accuracy", dense_quality={"accuracy": 97.0},
                          status="complete", steps_done=10, intervals=intervals, step_loss=[0.6] * 5 + [0.3] * 5,
                          run_flips=FlipWindow(10, dict(n), {"fc": 15}, {"fc": 3}), history=MaskHistory({"fc": (10, 10)}))


def test_recovery_record_card():
    rec = recovery_record()
    card = rec.summary_card()
    assert card.headline["mode"] == rec.config.label() and card.headline["steps"] == "10 of 10"
    assert card.headline["accuracy"] == "80 → 93 (dense 97)"
    assert card.headline["gap recovered"] == f"{100 * 13 / 17:.1f}%"  # (93 − 80) / (97 − 80)
    # 15 flips over 10 steps of 100 entries; 3 of the 100 oscillated.
    assert card.headline["flip rate per step"] == "1.500% (oscillating 3.00%)"
    rows = cells(rec._repr_html_())
    assert [r[0] for r in rows] == ["0", "5", "10"] and [r[1] for r in rows] == ["80", "90", "93"]
    assert [r[3] for r in rows] == ["0", "6", "4"] and [r[4] for r in rows] == ["0.000%", "2.000%", "1.000%"]
    check_short(rec)
    fig = rec.figure()
    assert list(fig.data[0].y) == [80.0, 90.0, 93.0] and list(fig.data[0].x) == [0, 5, 10]
    # No gap when pruning cost nothing.
    rec.dense_quality = {"accuracy": 80.0}
    assert rec.summary_card().headline["gap recovered"] == "— (no gap)"


def bench_run():
    from sparsekit.bench import BenchRun, CaseResult

    lin = {"out_features": 64, "in_features": 64}
    return BenchRun(
        env={"device": "cpu", "device_name": "x86_64", "torch": "2.x", "threads": 2}, name="a<b>",
        results=[CaseResult("formats", "d0.1", "dense", "cpu", "fp32", {"density": 0.1}, median_ms=2.0),
                 CaseResult("formats", "d0.1", "csr", "cpu", "fp32", {"density": 0.1}, median_ms=1.0, speedup=2.0),
                 CaseResult("formats", "d0.5", "dense", "cpu", "fp32", {"density": 0.5}, median_ms=2.0),
                 CaseResult("formats", "d0.5", "csr", "cpu", "fp32", {"density": 0.5}, median_ms=4.0, speedup=0.5),
                 CaseResult("linear", "64 b1", "2:4", "cpu", "fp16", {**lin, "batch": 1}, status="skipped",
                            message="needs CUDA"),
                 CaseResult("attention", "s64", "flex", "cpu", "fp32", {"seq_len": 64}, status="error",
                            message="no flex")],
        ceilings={"matmul_tflops": 0.5, "copy_gbps": 10.0}, suites=["formats", "linear", "attention"])


def test_bench_run_card():
    run = bench_run()
    card = run.summary_card()
    assert card.headline["environment"] == "x86_64 (cpu), torch 2.x, 2 threads"
    assert card.headline["cases"] == "4 ok, 1 skipped, 1 error"
    assert card.headline["faster than dense"] == "1 of 2 timed"  # speedups 2.0 and 0.5
    assert card.headline["ceilings"] == "0.5 TFLOP/s matmul, 10 GB/s copy"
    rows = cells(run._repr_html_())
    assert rows == [["linear", "2:4", "64×64", "—", "not measured: needs CUDA"],
                    ["formats", "csr", "2 cases", "2", "faster in 1 of 2 timed"],
                    ["attention", "flex", "1 cases", "—", "not measured: no flex"]]
    assert "a&lt;b&gt;" in run._repr_html_()
    check_short(run)
    fig = run.figure()
    csr = next(t for t in fig.data if t.name == "csr")
    assert list(csr.y) == [2.0, 0.5]
    assert run.figure(suite="linear") is not None
    with pytest.raises(ValueError, match="nothing to draw"):
        run.figure(suite="attention")


def test_every_declared_figure_is_registered_by_viz():
    import inspect

    import sparsekit.viz  # noqa: F401  (registers the builders)
    from sparsekit import display

    shown = {cls for cls in _subclasses(Shown)}
    declared = {cls.FIGURE for cls in shown if cls.FIGURE}
    assert len(declared) >= 10
    missing = {name for name in declared if display.figure_builder(name) is None}
    assert not missing, missing
    for name in declared:
        builder = display.figure_builder(name)
        assert builder is getattr(sparsekit.viz, name)  # the viz builder itself, not a stand-in
        assert inspect.signature(builder).parameters  # takes the result (or its attribute)
    # Constants and unknown names are no builders.
    assert display.figure_builder("KEPT_COLOR") is None and display.figure_builder("no_such_figure") is None


def _subclasses(cls):
    import importlib
    import pkgutil

    import sparsekit

    for info in pkgutil.walk_packages(sparsekit.__path__, "sparsekit."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    out, todo = set(), [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in out:
                out.add(sub)
                todo.append(sub)
    return out


def test_figure_before_viz_is_imported_says_what_to_do(monkeypatch):
    from sparsekit import display

    monkeypatch.setattr(display, "_FIGURES", {})
    monkeypatch.setattr(display, "_FINDERS", [])
    torch.manual_seed(0)
    result = sparsekit.sparsify(nn.Sequential(nn.Linear(8, 4)), sparsekit.SparsifyConfig())
    with pytest.raises(RuntimeError, match="from sparsekit import viz"):
        result.figure()
    with pytest.raises(TypeError, match="not callable"):
        display.register_figures({"x": 3})


def test_a_finder_supplies_a_builder_once_and_a_bad_one_is_refused(monkeypatch):
    from sparsekit import display

    monkeypatch.setattr(display, "_FIGURES", {})
    monkeypatch.setattr(display, "_FINDERS", [])
    asked = []

    def finder(name):
        asked.append(name)
        return {"layer_kept_figure": lambda report: ("drawn", report), "bad": 3}.get(name)

    display.register_figure_finder(finder)
    display.register_figure_finder(finder)  # registered once
    torch.manual_seed(0)
    result = sparsekit.sparsify(nn.Sequential(nn.Linear(8, 4)), sparsekit.SparsifyConfig())
    assert result.figure() == ("drawn", result.report)
    assert result.figure() == ("drawn", result.report)
    assert asked == ["layer_kept_figure"]  # found once, then remembered
    with pytest.raises(TypeError, match="not callable"):
        display.figure_builder("bad")
    assert display.figure_builder("unknown") is None
