"""Studies: the spec and its messages, cells against independent runs, resuming, failures, status, the
local backends, aggregation against hand computations, the command line. (Ray: test_study_ray.py.)"""
import csv
import io
import json
import math
import os
import random
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import sparsekit
from sparsekit import study
import sparsekit.cache
from sparsekit.cache import tensor_digest
from sparsekit.evaluate import CompareRow
from sparsekit.models.digits import CALIBRATION_SIZE, digits_split
from sparsekit.seedstudy import SeedStudyConfig, run_metrics, run_seed_study
from sparsekit.sparsify import SparsifyConfig
from sparsekit.study import CellRecord, StudySpec, aggregate, cells, store
from sparsekit.study.raycluster import free_port
from sparsekit.training import TrainConfig, train
from devtools import ROOT

SMALL = StudySpec(name="small", models=("digits:mlp",), methods=("magnitude", "wanda", "random"),
                  patterns=("2:4", "unstructured:0.5"), seeds=(0, 1))
TINY_TRAIN = TrainConfig(arch="mlp", epochs=2, batch_size=256)
# Student-t quantiles t_{0.975, df}, from a printed table (no scipy in the reference).
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706}


@pytest.fixture(scope="module")
def mlp(digits_cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEKIT_CACHE_DIR", str(digits_cache_dir))
        yield sparsekit.load_model("digits:mlp")


# ---------------------------------------------------------------------------------------------
# Spec


def test_spec_round_trip_and_cell_keys():
    spec = replace(SMALL, base=SparsifyConfig(keep_last_dense=True), metrics=("accuracy",))
    spec.validate()
    assert StudySpec.from_json(spec.to_json()) == spec
    assert StudySpec.from_json(json.loads(spec.to_json())) == spec
    training = StudySpec(name="t", kind="training", methods=("ste", "srste"), patterns=("2:4",), seeds=(0, 1),
                         lambda_w=(2e-4, 2e-3), train=TINY_TRAIN)
    training.validate()
    assert StudySpec.from_json(training.to_json()) == training
    assert len(training.cells()) == 2 * (1 + 2)  # per seed: STE, SR-STE at two λ_w
    with pytest.raises(ValueError, match=r"unknown study spec field\(s\) \['methdos'\]"):
        StudySpec.from_json({**json.loads(SMALL.to_json()), "methdos": ["magnitude"]})
    with pytest.raises(ValueError, match="not valid JSON"):
        StudySpec.from_json("{oops")

    cells_ = SMALL.cells()
    assert len(cells_) == SMALL.cell_count() == 1 * 3 * 2 * 2
    # Keys depend on what is computed, not on the study's name: another study reuses the cells.
    assert [c.key for c in replace(SMALL, name="other").cells()] == [c.key for c in cells_]
    by = {(c.method, c.pattern, c.seed): c for c in cells_}
    assert by["magnitude", "2:4", 0].key == by["magnitude", "2:4", 1].key  # nothing a seed changes
    assert by["wanda", "2:4", 0].key != by["wanda", "2:4", 1].key  # another calibration subset
    assert by["random", "2:4", 0].key != by["random", "2:4", 1].key
    assert by["random", "2:4", 1].sparsify_config().seed == 1 and by["wanda", "2:4", 1].calibration_seed == 1
    assert by["random", "unstructured:0.5", 0].sparsify_config().sparsity == 0.5
    assert all(c.sparsify_config().keep_last_dense for c in spec.cells())
    assert study.Cell.from_json(cells_[3].to_json()) == cells_[3]
    assert study.canonical_pattern(" unstructured:0.50 ") == "unstructured:0.5"


def _spec(**kw):
    return replace(SMALL, **kw)


@pytest.mark.parametrize("spec,message", [
    (_spec(methods=("magnitude", "obs")), r"unknown method\(s\) 'obs'; the registered methods are magnitude, random, "
                                         r"wanda, sparsegpt, taylor"),
    (_spec(methods=()), "the study has no methods"),
    (_spec(patterns=()), "the study has no patterns"),
    (_spec(models=()), "the study has no models"),
    (_spec(seeds=()), "the study has no seeds"),
    (_spec(patterns=("2-4",)), r"bad pattern '2-4': write N:M \(keep N of every M, e.g. 2:4\) or unstructured:S"),
    (_spec(patterns=("4:4",)), "N:M needs 1 <= N < M"),
    (_spec(patterns=("unstructured:1.5",)), "pruned fraction must be > 0 and at most 0.99"),
    (_spec(seeds=tuple(range(60)), patterns=("2:4", "1:4", "4:8", "2:8", "1:8", "unstructured:0.5")),
     r"this study has 1080 cells \(1 models × 3 methods × 6 patterns × 60 seeds\), over the limit of 1000"),
    (_spec(kind="sweep"), "unknown study kind 'sweep'; choose oneshot"),
    (_spec(models=("resnet50",)), "unknown model 'resnet50'; use one of minilm"),
    (_spec(seeds=(0, 0)), "seeds lists a value twice"),
    (_spec(metrics=("bleu",)), r"unknown metric\(s\) \['bleu'\]"),
    (_spec(lambda_w=(1e-3,)), "lambda_w is an SR-STE training setting"),
    (StudySpec(kind="training", methods=("ste",), patterns=("unstructured:0.5",)), "a training study trains N:M"),
    (StudySpec(kind="training", methods=("ste", "magnitude"), patterns=("2:4",)), "unknown training method"),
    (StudySpec(kind="training", models=("digits:vit",), methods=("ste",), patterns=("2:4",), train=TINY_TRAIN),
     "a training study trains digits:mlp"),
])
def test_bad_specs_get_clear_messages(spec, message):
    with pytest.raises(ValueError, match=message):
        spec.validate()


def test_unreachable_ray_address_fails_fast_with_a_message(tmp_cache):
    port = free_port()  # nothing listens there
    with pytest.raises(ConnectionError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        study.run_study(SMALL, "ray", ray_address=f"127.0.0.1:{port}")
    # Something that accepts connections but never answers as Ray: refused after the (short) timeout.
    from sparsekit.study.ray_backend import RayBackend

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(ConnectionError, match=f"{address} accepts connections but does not answer as a Ray "
                                                  r"cluster \(no answer within 1 s\)"):
            study.run_study(SMALL, RayBackend(address, timeout=1))
    with pytest.raises(ValueError, match="cannot read Ray address 'nowhere'"):
        study.run_study(SMALL, "ray", ray_address="nowhere")
    with pytest.raises(ValueError, match="unknown backend 'cloud'"):
        study.run_study(SMALL, "cloud")
    with pytest.raises(ValueError, match="needs backend='ray'"):
        study.run_study(SMALL, "local", ray_address="auto")


def test_memory_check_refuses_with_both_numbers(tmp_cache, monkeypatch, mlp):
    need = study.ONESHOT_FACTOR * mlp.n_bytes / 2**20  # from the loaded model's own parameters
    assert study.cell_memory_mb(SMALL)["digits:mlp"] == pytest.approx(need)
    monkeypatch.setenv("SPARSEKIT_MEMORY_BUDGET_MB", "0.25")
    monkeypatch.setattr(cells, "run_cell", lambda *a, **k: pytest.fail("a refused study ran a cell"))
    with pytest.raises(ValueError, match=rf"need about {need:.3g} MB each .* over the budget of 0.25 MB per local worker"):
        study.run_study(SMALL)
    with pytest.raises(ValueError, match=rf"over the budget of {need / 2:.3g} MB"):
        study.check_memory(SMALL, need / 2, "per worker")
    assert study.check_memory(SMALL, need * 2, "per worker") == {"digits:mlp": pytest.approx(need)}


# ---------------------------------------------------------------------------------------------
# Cells against independent runs


def test_records_match_independent_runs(tmp_cache, mlp):
    spec = replace(SMALL, patterns=("2:4",))
    before = tensor_digest(*cells.worker_model("digits:mlp").module.state_dict().values())
    result = study.run_study(spec)
    assert result.status.state == "finished" and result.status.done == result.status.total == 6
    assert result.status.computed == 5  # magnitude's two seeds are one computation
    pool = digits_split().x_train
    for r in result.records:
        config = SparsifyConfig(pattern="nm", n=2, m=4, method=r.method, seed=r.seed if r.method == "random" else 0)
        calibration = None
        if r.method == "wanda":
            gen = torch.Generator().manual_seed(r.seed)
            calibration = pool[sorted(torch.randperm(len(pool), generator=gen)[:CALIBRATION_SIZE].tolist())]
        pruned = sparsekit.sparsify(mlp, config, calibration=calibration)
        assert r.metrics["accuracy"] == pytest.approx(mlp.quality(pruned.model)["accuracy"])
        kept = sum(int(m.sum()) for m in pruned.masks.values()) / sum(m.numel() for m in pruned.masks.values())
        assert r.kept_fraction == pytest.approx(kept)
        assert r.seed_matters == (r.method != "magnitude")
        assert r.higher_is_better == {"accuracy": True}
    wanda = [r for r in result.records if r.method == "wanda"]
    assert [r.calibration["drawn"] for r in wanda] == [CALIBRATION_SIZE] * 2
    assert wanda[0].calibration["pool"] == len(pool) > CALIBRATION_SIZE
    # The model every cell of this process shares is untouched.
    assert tensor_digest(*cells.worker_model("digits:mlp").module.state_dict().values()) == before


def test_text_calibration_subset_is_seeded_from_the_odd_sentences(minilm):
    from sparsekit.models.sentences import SENTENCES
    from sparsekit.models.text import CALIBRATION_SENTENCES

    batch, info = cells.calibration_subset(minilm, 3)
    assert info["pool"] == len(SENTENCES[1::2]) and info["drawn"] == CALIBRATION_SENTENCES
    gen = torch.Generator().manual_seed(3)
    idx = sorted(torch.randperm(len(SENTENCES[1::2]), generator=gen)[:CALIBRATION_SENTENCES].tolist())
    expected = minilm.tokenizer([SENTENCES[1::2][i] for i in idx], truncation=True, max_length=128)["input_ids"]
    got = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert got == expected
    other, _ = cells.calibration_subset(minilm, 4)
    assert not torch.equal(other["input_ids"][:, :5], batch["input_ids"][:, :5])


# ---------------------------------------------------------------------------------------------
# Resume, failures, status


def _counting(monkeypatch):
    calls = []
    real = cells.run_cell

    def counted(cell, **kw):
        calls.append(cell.key)
        return real(cell, **kw)

    monkeypatch.setattr(cells, "run_cell", counted)
    return calls


def test_stopped_study_resumes_without_recomputing(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "a"))
    calls = _counting(monkeypatch)
    part = study.run_study(SMALL, stop=lambda: len(calls) >= 3)
    assert len(calls) == 3 and part.status.state == "stopped" and len({r.key for r in part.records}) == 3
    assert study.study_status(SMALL).done == len(part.records)
    first = list(calls)
    calls.clear()
    full = study.run_study(SMALL)
    unique = {c.key for c in SMALL.cells()}
    assert not set(calls) & set(first) and len(calls) == len(unique) - 3  # nothing finished ran again
    assert full.status.state == "finished" and len(full.records) == SMALL.cell_count()
    calls.clear()
    again = study.run_study(SMALL)
    assert calls == [] and again.status.computed == 0
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "b"))
    fresh = study.run_study(SMALL)
    assert [cells.comparable(r) for r in full.records] == [cells.comparable(r) for r in fresh.records]


def test_failing_cell_is_recorded_and_retried(tmp_cache, monkeypatch):
    real = cells.run_cell

    def flaky(cell, **kw):
        if cell.method == "wanda" and cell.seed == 1 and cell.pattern == "2:4":
            raise RuntimeError("calibration exploded")
        return real(cell, **kw)

    monkeypatch.setattr(cells, "run_cell", flaky)
    result = study.run_study(SMALL)
    failed = [r for r in result.records if r.status == "failed"]
    assert len(failed) == 1 and failed[0].error == "RuntimeError: calibration exploded"
    assert (failed[0].method, failed[0].seed) == ("wanda", 1)
    assert len(result.done) == SMALL.cell_count() - 1
    assert result.status.failed == 1 and study.study_status(SMALL).failed == 1
    assert "RuntimeError: calibration exploded" in study.export(SMALL, "csv")
    monkeypatch.setattr(cells, "run_cell", real)
    calls = _counting(monkeypatch)
    retried = study.run_study(SMALL)
    assert len(calls) == 1 and retried.status.failed == 0 and len(retried.done) == SMALL.cell_count()


def _done_record(**fields) -> CellRecord:
    row = CompareRow(method="wanda", pattern="2:4", family="N:M", setting="2:4 wanda", target_sparsity=0.5,
                     sparsity=0.48, quality={"accuracy": 91.5}, dense_bytes=4000, best_bytes=2250, formats={"n:m": 3},
                     layers_pruned=3, layers_total=3, prune_seconds=0.1, seconds=0.2, notes={},
                     config=SparsifyConfig(method="wanda").to_json())
    base = dict(kind="oneshot", model="digits:mlp", method="wanda", pattern="2:4", seed=1, lambda_w=None,
                status="done", error=None, metrics={"accuracy": 91.5}, higher_is_better={"accuracy": True},
                kept_fraction=0.52, memory_bytes=2250, dense_bytes=4000, seed_matters=True,
                seed_effect="calibration subset", calibration={"source": "digits training split", "pool": 1000,
                                                               "drawn": 128, "seed": 1},
                seconds=0.2, detail=row.to_json(), worker={"pid": 1, "host": "h"})
    return CellRecord(**{**base, **fields})


def test_cell_record_json_round_trip_through_the_store(tmp_cache):
    rec = _done_record()
    assert CellRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    assert rec.compare_row().quality == {"accuracy": 91.5} and rec.compare_row().cached is False
    store.save_record("k1", rec)
    assert store.load_record("k1") == rec
    # A NaN metric is stored as null (strict JSON) and reads back as None; the row's quality as NaN.
    nan = _done_record(metrics={"accuracy": float("nan")},
                       detail={**rec.detail, "quality": {"accuracy": float("nan")}})
    store.save_record("k2", nan)
    back = store.load_record("k2")
    assert back.metrics == {"accuracy": None} and math.isnan(back.compare_row().quality["accuracy"])
    # What is stored is the shape earlier code stored (a dict of the same fields, no key, no cached in the row).
    stored = json.loads(sparsekit.cache.get_cache().get("k1"))
    assert set(stored) == set(rec.to_json()) - {"key"} and set(stored["detail"]) == set(rec.detail)
    assert "cached" not in stored["detail"] and stored["detail"]["best_bytes"] == 2250
    assert store.load_record("k1").compare_row() == rec.compare_row()
    # serial's rule: an unknown field is refused (the entry is unreadable: the cell runs again) ...
    with pytest.raises(ValueError, match=r"unknown study cell record field\(s\) \['metricz'\]"):
        CellRecord.from_json({**rec.to_json(), "metricz": {}})
    sparsekit.cache.get_cache().set("k4", json.dumps({**rec.to_json(), "metricz": {}}))
    assert store.load_record("k4") is None
    # ... a missing field takes its default, or makes the record unreadable when it has none.
    assert CellRecord.from_json({k: v for k, v in rec.to_json().items() if k != "worker"}).worker is None
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['status'\]"):
        CellRecord.from_json({k: v for k, v in rec.to_json().items() if k != "status"})
    with pytest.raises(ValueError, match="unknown study cell record status 'maybe'"):
        CellRecord.from_json({**rec.to_json(), "status": "maybe"})
    # A finished record whose detail is not a compare row is unreadable too; a failed one has no detail.
    sparsekit.cache.get_cache().set("k5", json.dumps({**rec.to_json(), "detail": {"quality": {}}}))
    assert store.load_record("k5") is None
    failed = cells.failed_record(SMALL.cells()[0], RuntimeError("boom"))
    store.save_record("k6", failed)
    assert store.load_record("k6") == failed and failed.error == "RuntimeError: boom" and not store.is_done(failed)
    with pytest.raises(ValueError, match="no compare row"):
        failed.compare_row()


def test_status_is_readable_while_the_study_runs(tmp_cache):
    seen = []

    def look(_status):
        seen.append(study.study_status(SMALL))  # from the cache, as another process would

    result = study.run_study(SMALL, progress=look)
    running = [s for s in seen if s.state == "running"]
    assert running and running[0].done == 0 and running[0].total == SMALL.cell_count()
    assert [s.done for s in running] == sorted(s.done for s in running)
    assert any(s.running == 1 and s.workers for s in running) and any(s.eta_s is not None for s in running)
    final = study.study_status(SMALL)
    assert final.state == "finished" and final.done == final.total and final.pending == 0
    assert final.as_dict()["pending"] == 0 and result.status.done == final.done


def test_local_pool_gives_the_same_records(tmp_path, monkeypatch):
    spec = replace(SMALL, methods=("magnitude", "wanda"), patterns=("2:4",))
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "a"))
    inline = study.run_study(spec)
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "b"))
    pooled = study.run_study(spec, workers=2)
    assert pooled.status.backend == "local, 2 worker processes"
    assert [cells.comparable(r) for r in pooled.records] == [cells.comparable(r) for r in inline.records]
    assert {r.worker["pid"] for r in pooled.records}.isdisjoint({os.getpid()})


def test_local_pool_survives_a_killed_worker(tmp_path, monkeypatch):
    import multiprocessing
    import signal

    spec = replace(SMALL, methods=("magnitude", "random"), patterns=("2:4",))
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "a"))
    expected = [cells.comparable(r) for r in study.run_study(spec).records]
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "b"))
    monkeypatch.setenv(cells.DELAY_ENV, "2")  # spawned workers inherit it: the kill lands mid-cell
    killed = []
    others = {p.pid for p in multiprocessing.active_children()}

    def kill_one(status):
        workers = [p for p in multiprocessing.active_children() if p.pid not in others]  # this run's pool
        if not killed and status.running and workers:
            os.kill(workers[0].pid, signal.SIGKILL)
            killed.append(workers[0].pid)

    result = study.run_study(spec, workers=2, progress=kill_one)
    assert killed and result.status.state == "finished" and result.status.retries >= 1
    assert [cells.comparable(r) for r in result.records] == expected


def test_training_cells_are_the_seed_studys_runs(tmp_cache):
    spec = StudySpec(name="t", kind="training", methods=("ste", "srste"), patterns=("2:4",), seeds=(0, 1),
                     train=TINY_TRAIN)
    result = study.run_study(spec)
    assert len(result.done) == 4
    direct = run_metrics(train(replace(TINY_TRAIN, method="srste", seed=1, snapshot_unit="epoch", snapshot_every=1),
                               data=digits_split()))
    rec = next(r for r in result.records if r.method == "srste" and r.seed == 1)
    assert rec.metrics["late_sad_pct"] == direct.late_sad_pct and rec.metrics["accuracy"] == direct.accuracy
    assert rec.higher_is_better == {"late_sad_pct": False, "accuracy": True, "late_flipped_pct": False,
                                       "early_sad_pct": False}
    # The same runs through the seed study: shared cells, nothing trained again.
    seeds = run_seed_study(SeedStudyConfig(train=TINY_TRAIN, patterns=((2, 4),), seeds=2, lambda_sweep=()))
    assert seeds.computed == 0 and len(seeds.runs) == 4


# ---------------------------------------------------------------------------------------------
# Aggregation against hand computations


def _rec(method, seed, acc, kept=0.5, memory=100, pattern="2:4", seed_matters=True):
    return CellRecord(kind="oneshot", model="m", method=method, pattern=pattern, seed=seed, lambda_w=None,
                      status="done", metrics={"accuracy": acc, "loss": -acc}, kept_fraction=kept,
                      memory_bytes=memory, higher_is_better={"accuracy": True, "loss": False}, seed_matters=seed_matters)


def _t_interval(xs):
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def test_summary_and_paired_differences_by_hand():
    a = [90.0, 92.0, 91.0, 95.0]
    b = [85.0, 91.0, 86.0, 90.0]
    records = [_rec("magnitude", s, v) for s, v in enumerate(a)]
    records += [_rec("wanda", s, v) for s, v in zip((3, 1, 0, 2), (b[3], b[1], b[0], b[2]))]  # another order
    records.append(replace(_rec("wanda", 9, 0.0), status="failed"))  # failed records are left out
    groups = study.summarize(records, ["accuracy"])
    assert [g.method for g in groups] == ["magnitude", "wanda"]
    for g, xs in zip(groups, (a, b)):
        mean, low, high = _t_interval(xs)
        iv = g.metrics["accuracy"]
        assert (iv.mean, iv.low, iv.high) == pytest.approx((mean, low, high), rel=1e-4)
        assert g.seeds == (0, 1, 2, 3) and iv.n == 4
    (diff,) = study.paired_differences(records, "accuracy")
    assert (diff.a, diff.b) == ("wanda", "magnitude") and diff.seeds == (0, 1, 2, 3)
    d = [y - x for x, y in zip(a, b)]  # paired by seed
    assert (diff.paired.diff.mean, diff.paired.diff.low, diff.paired.diff.high) == pytest.approx(_t_interval(d), rel=1e-4)
    assert diff.paired.a_lower == sum(x < 0 for x in d) == 4
    assert "wanda is lower than magnitude" in diff.sentence


def _pareto_reference(points, higher):
    # Independent: sweep in order of cost (ties: better quality first), keep strictly better quality.
    sign = 1 if higher else -1
    out, best = [], -math.inf
    for cost, quality, name in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * quality > best:
            out.append(name)
            best = sign * quality
    return out


@pytest.mark.parametrize("higher", [True, False])
def test_pareto_front_against_a_sweep(higher):
    rng = random.Random(7)
    records = []
    for i in range(40):
        kept, acc = rng.randint(1, 30) / 31, rng.random() * 100  # distinct qualities; costs may tie
        records.append(_rec(f"m{i}", 0, acc, kept=kept, memory=rng.randint(1, 10**6)))
    metric = "accuracy" if higher else "loss"
    groups = study.summarize(records)
    for cost in ("kept_fraction", "memory_bytes"):
        pts = [(g.cost(cost), g.metrics[metric].mean, g.method) for g in groups]
        assert [g.method for g in study.pareto_front(groups, metric, cost)] == _pareto_reference(pts, higher)
    hand = study.summarize([_rec("a", 0, 90, kept=0.5), _rec("b", 0, 80, kept=0.25), _rec("c", 0, 85, kept=0.5),
                            _rec("d", 0, 90, kept=0.75), _rec("e", 0, 95, kept=0.75)])
    assert [g.method for g in study.pareto_front(hand, "accuracy")] == ["b", "a", "e"]


def test_best_per_pattern_and_exports():
    records = [_rec(m, s, v, pattern=p) for (m, p, vs) in [("magnitude", "2:4", (90, 91)), ("wanda", "2:4", (93, 94)),
                                                           ("magnitude", "1:4", (60, 62)), ("wanda", "1:4", (55, 58))]
               for s, v in enumerate(vs)]
    groups = study.summarize(records)
    best = study.best_per_pattern(groups, "accuracy")
    assert {k: g.method for k, g in best.items()} == {("m", "2:4"): "wanda", ("m", "1:4"): "magnitude"}
    # loss = −accuracy, lower is better: the same winners (taking the largest loss would flip them).
    assert {k: g.method for k, g in study.best_per_pattern(groups, "loss").items()} == {
        ("m", "2:4"): "wanda", ("m", "1:4"): "magnitude"}
    rows = list(csv.DictReader(io.StringIO(study.records_csv(records))))
    assert len(rows) == 8 and float(rows[2]["accuracy"]) == 93.0 and rows[2]["method"] == "wanda"
    summary = list(csv.DictReader(io.StringIO(study.summary_csv(groups))))
    assert float(summary[1]["accuracy_mean"]) == 93.5 and summary[1]["n_seeds"] == "2"
    doc = aggregate.analysis(records)
    assert doc["best"]["m"]["2:4"]["accuracy"] == "wanda"
    assert doc["pareto"]["m"]["accuracy"]["kept_fraction"] == ["m 2:4 wanda"]
    assert len(doc["paired"]) == 4  # 2 patterns × 2 metrics, one pair of methods each


# ---------------------------------------------------------------------------------------------
# Command line


def _cli(tmp_path, *args):
    env = {**os.environ, "SPARSEKIT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("SPARSEKIT_RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "sparsekit.study", *args], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=300)


CLI_SPEC = replace(SMALL, methods=("magnitude", "random"), patterns=("2:4",))


def test_command_line_runs_a_spec_file_and_refuses_a_bad_one(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(CLI_SPEC.to_json())
    run = _cli(tmp_path, "run", str(path))
    assert run.returncode == 0, run.stderr
    assert "[4/4] finished" in run.stderr and "| digits:mlp | 2:4 | random | 2 |" in run.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(replace(CLI_SPEC, methods=("obs",)).to_json())
    refused = _cli(tmp_path, "run", str(bad))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: unknown method(s) 'obs'; the registered methods are magnitude, random, wanda, sparsegpt, taylor"]


def test_command_line_run_lists_failed_cells(tmp_cache, tmp_path, monkeypatch, capsys):
    # A failed cell is one line on stderr and exit code 1 (it used to raise TypeError: a CellRecord is no dict).
    from sparsekit.study.__main__ import main

    real = cells.run_cell

    def flaky(cell, **kw):
        if cell.method == "random" and cell.seed == 1:
            raise RuntimeError("mask exploded")
        return real(cell, **kw)

    monkeypatch.setattr(cells, "run_cell", flaky)
    path = tmp_path / "spec.json"
    path.write_text(CLI_SPEC.to_json())
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "FAILED digits:mlp 2:4 random seed 1: RuntimeError: mask exploded" in err.splitlines()


@pytest.mark.slow
def test_command_line_status_export_and_unreachable_ray(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "cache"))
    study.run_study(CLI_SPEC)
    path = tmp_path / "spec.json"
    path.write_text(CLI_SPEC.to_json())
    status = _cli(tmp_path, "status", str(path))
    assert status.returncode == 0 and status.stdout.startswith("[4/4] finished")
    out = tmp_path / "r.json"
    exported = _cli(tmp_path, "export", str(path), "--format", "json", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == "sparsekit-study" and len(doc["records"]) == 4 and doc["summary"]
    assert study.export(CLI_SPEC, "csv").count("\n") == 5
    unreachable = _cli(tmp_path, "run", str(path), "--ray", f"127.0.0.1:{free_port()}")
    assert unreachable.returncode == 2 and unreachable.stderr.strip().splitlines()[-1].startswith(
        "error: cannot reach the Ray cluster at 127.0.0.1:")


def test_hf_cell_key_follows_the_checkpoint_files(model_root):
    import os

    from sparsekit.study.spec import model_files_token

    spec = StudySpec(name="hf", models=("hf:tiny-bert",), methods=("magnitude",), patterns=("2:4",), seeds=(0,))
    key = spec.cells()[0].key
    assert spec.cells()[0].key == key  # stable while nothing changes
    weights = model_root / "tiny-bert" / "model.safetensors"
    st = weights.stat()
    try:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as if rewritten in place
        assert spec.cells()[0].key != key
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert spec.cells()[0].key == key
    assert model_files_token("digits:mlp") == [] and model_files_token("hf:no-such-dir") == []
