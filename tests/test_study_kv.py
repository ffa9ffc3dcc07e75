"""KV-cache settings as study cells (``kind="kv"``): a small grid over methods × sparsities × held-out texts runs
on the study engine; each cell's metrics equal a direct ``evaluate_kv`` call built here by hand (config,
text ids, eviction sizes from the stated formula), the groups' intervals are taken over the texts, a second
run reads the cache, and bad specs get clear messages. The Ray test is marked slow."""
import math
from dataclasses import replace

import pytest
import torch

from sparsekit import study
from sparsekit.kvcache import SWEEP_METHODS, KVConfig, evaluate_kv, kv_sweep
from sparsekit.models.lm_small import heldout_rows, lm_small_heldout
from sparsekit.stats import mean_interval
from sparsekit.study import StudySpec, cells
from sparsekit.study.kvcells import KV_METHODS, KVStudy, canonical_kv_pattern, parse_kv_pattern
from tests.conftest import shared_model

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = KVStudy(tokens=40, prompt=12, residual_length=8, new_tokens=4)
SPEC = StudySpec(name="kv-grid", kind="kv", models=("lm:small",), methods=("mustafar-token", "streaming", "h2o"),
                 patterns=("kv:0.5", "kv:0.7/0.3"), seeds=(0, 1), kv=SETTINGS)


@pytest.fixture(scope="module")
def lm():
    return shared_model("lm:small")


def _expected_config(method: str, k: float, v: float) -> KVConfig:
    # Written out from the stated rule: D = 32 for lm:small; the cache holds tokens - 1 = 39 tokens at the end;
    # eviction keeps window + round(older * (D - floor(s * D)) / D) tokens, s the mean sparsity.
    if method == "mustafar-token":
        return KVConfig(k_sparsity=k, v_sparsity=v, axis="token", residual_length=8)
    s = (k + v) / 2
    keep = 8 + round(31 * (32 - math.floor(s * 32)) / 32)
    if method == "streaming":
        return KVConfig(method="streaming", sinks=4, window=keep - 4)
    return KVConfig(method="h2o", heavy=keep - keep // 2, recent=keep // 2)


def test_kv_grid_runs_locally_and_equals_direct_calls(lm, tmp_cache, monkeypatch):
    assert lm.module.config.n_embd // lm.module.config.n_head == 32
    result = study.run_study(SPEC, "local", progress=False)
    assert result.status.state == "finished" and len(result.records) == SPEC.cell_count() == 12
    rows = heldout_rows(lm.tokenizer, lm_small_heldout(), 40)["input_ids"]
    for r in result.records:
        assert r.done, r.error
        k, v = {"kv:0.5": (0.5, 0.5), "kv:0.7/0.3": (0.7, 0.3)}[r.pattern]
        cfg = _expected_config(r.method, k, v)
        assert KVConfig(**r.detail["config"]) == cfg
        direct = evaluate_kv(lm, rows[r.seed], cfg, prompt=12, new_tokens=4, generation_prompt=40)
        assert r.metrics["perplexity"] == pytest.approx(direct.perplexity, rel=1e-9)
        assert r.metrics["agreement"] == pytest.approx(direct.agreement, rel=1e-9)
        assert r.metrics["perplexity_ratio"] == pytest.approx(direct.perplexity / direct.dense_perplexity, rel=1e-9)
        b = direct.bytes
        assert r.metrics["cache_bytes"] == b["bitmap" if r.method.startswith("mustafar") else "dense"] == r.memory_bytes
        heads = [e for row in direct.attention_error for e in row]
        assert len(heads) == 16 and r.metrics["attention_error"] == pytest.approx(sum(heads) / 16, rel=1e-9)
        assert r.dense_bytes == b["full"]
        same = sum(a == d for a, d in zip(direct.generated, direct.dense_generated))
        assert r.metrics["generated_equal"] == same / 4
        assert r.detail["generated"] == direct.generated and r.kept_fraction == pytest.approx(direct.kept_fraction)
    # Groups: one per method × pattern, the interval over the two texts.
    groups = result.summary()
    assert len(groups) == 6
    for g in groups:
        assert g.seeds == (0, 1)
        values = [r.metrics["perplexity"] for r in result.records if (r.method, r.pattern) == (g.method, g.pattern)]
        expected = mean_interval(values, SPEC.confidence)
        assert g.metrics["perplexity"].mean == pytest.approx(sum(values) / 2)
        assert (g.metrics["perplexity"].low, g.metrics["perplexity"].high) == pytest.approx((expected.low,
                                                                                            expected.high))
        assert g.higher_is_better["perplexity"] is False and g.higher_is_better["agreement"] is True
    # A second run reads every record from the cache.
    monkeypatch.setattr(cells, "run_cell", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = study.run_study(SPEC, "local", progress=False)
    assert again.status.computed == 0 and [cells.comparable(r) for r in again.records] == \
        [cells.comparable(r) for r in result.records]


def test_kv_spec_round_trips_and_keys():
    back = StudySpec.from_json(SPEC.to_json())
    assert back == SPEC and back.kv == SETTINGS
    keys = [c.key for c in SPEC.cells()]
    assert len(set(keys)) == len(keys)
    other = replace(SPEC, kv=KVStudy(tokens=40, prompt=12, residual_length=9, new_tokens=4))
    assert not set(keys) & {c.key for c in other.cells()}
    assert [c.seed_effect for c in SPEC.cells()] == ["held-out text"] * 12


def test_patterns_and_methods():
    assert parse_kv_pattern("kv:0.7/0.3") == (0.7, 0.3) and canonical_kv_pattern(" KV:0.50/0.5 ") == "kv:0.5"
    assert KV_METHODS == SWEEP_METHODS


def test_cells_equal_kv_sweep_rows(lm, tmp_cache):
    spec = replace(SPEC, methods=("mustafar-channel", "h2o"), patterns=("kv:0.3", "kv:0.9"), seeds=(0,))
    records = study.run_study(spec, "local", progress=False).records
    ids = heldout_rows(lm.tokenizer, lm_small_heldout(), 40)["input_ids"][:1]
    rows = kv_sweep(lm, methods=("mustafar-channel", "h2o"), sparsities=(0.3, 0.9), texts=list(ids), progress=False,
                    prompt=12, residual=8)
    by = {(r["method"], f"kv:{r['sparsity']:g}"): r for r in rows}
    for r in records:
        row = by[(r.method, r.pattern)]
        assert r.metrics["perplexity"] == pytest.approx(row["perplexity"], rel=1e-9)
        assert r.metrics["agreement"] == pytest.approx(row["agreement"], rel=1e-9)
        assert r.metrics["cache_bytes"] == row["bytes"] and r.dense_bytes == row["bytes_dense"]


@pytest.mark.parametrize("change, message", [
    ({"methods": ("mustafar-token", "wanda")}, "unknown KV method"),
    ({"patterns": ("kv:1.0",)}, r"in \[0, 1\)"),
    ({"patterns": ("kv:abc",)}, "not a number"),
    ({"patterns": ("2:4",)}, "bad KV pattern"),
    ({"patterns": ("kv:0.5", "kv:0.5/0.5")}, "twice"),
    ({"metrics": ("accuracy",)}, "KV metrics are"),
    ({"models": ()}, "no models"),
    ({"models": ("nosuch",)}, "unknown model"),
    ({"lambda_w": (0.1,)}, "belong to oneshot and training"),
])
def test_bad_kv_spec_messages(change, message):
    with pytest.raises(ValueError, match=message):
        replace(SPEC, **change).validate()


def test_bad_kv_settings_messages():
    with pytest.raises(ValueError, match="nothing would be pruned"):
        KVStudy(tokens=20, prompt=4, residual_length=19)
    with pytest.raises(ValueError, match="prompt must be"):
        KVStudy(tokens=20, prompt=20)
    with pytest.raises(ValueError, match="kv settings belong to a KV study"):
        StudySpec(name="x", kv=SETTINGS).validate()


def test_encoder_cell_fails_with_reason_and_missing_text(tmp_cache):
    spec = StudySpec(name="enc", kind="kv", models=("minilm",), methods=("mustafar-token",), patterns=("kv:0.5",),
                     seeds=(0,), kv=SETTINGS)
    record = study.run_study(spec, "local", progress=False).records[0]
    assert record.status == "failed" and "needs a causal LM" in record.error and "encoder" in record.error
    far = StudySpec(name="far", kind="kv", models=("lm:small",), methods=("mustafar-token",), patterns=("kv:0.5",),
                    seeds=(100000,), kv=SETTINGS)
    record = study.run_study(far, "local", progress=False).records[0]
    assert record.status == "failed" and "held-out text 100000 does not exist" in record.error


@pytest.mark.slow
def test_kv_grid_on_ray_equals_local(ray_cluster, tmp_path, monkeypatch):
    spec = replace(SPEC, methods=("mustafar-token", "h2o"), patterns=("kv:0.5",))
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "local"))
    expected = [cells.comparable(r) for r in study.run_study(spec, "local", progress=False).records]
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "ray"))
    torch.manual_seed(0)
    result = study.run_study(spec, "ray", ray_address=ray_cluster.address, progress=False)
    assert result.status.state == "finished"
    assert [cells.comparable(r) for r in result.records] == expected


def test_text_count_and_ids_match_the_packed_rows(lm):
    from sparsekit.study.kvcells import kv_text_count, kv_text_ids

    rows = heldout_rows(lm.tokenizer, lm_small_heldout(), 64)
    full = [i for i in range(rows["input_ids"].shape[0]) if int(rows["attention_mask"][i].sum()) == 64]
    assert kv_text_count(lm, 64) == len(full) and full == list(range(len(full)))
    assert torch.equal(kv_text_ids(lm, len(full) - 1, 64), rows["input_ids"][len(full) - 1])
    with pytest.raises(ValueError, match=f"there are {len(full)} texts of 64 tokens"):
        kv_text_ids(lm, len(full), 64)
