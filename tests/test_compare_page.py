"""The Compare page through AppTest: figures and tables against independent runs, permutation, export."""
import pytest

import sparsekit
from sparsekit.scoring import permute_channels
from sparsekit.sparsify import SparsifyConfig, sparsify
from ui.testing import decode, figures, page_app

TIMEOUT = 180


@pytest.fixture(scope="module")
def mlp(digits_cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEKIT_CACHE_DIR", str(digits_cache_dir))
        yield sparsekit.load_model("digits:mlp")


def test_compare_page_sweep_permutation_export(mlp, digits_cache):
    at = page_app("compare", "digits:mlp", TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Compare methods"
    assert "25 settings" in at.info[0].value and not at.get("plotly_chart")  # nothing runs before the button

    at.multiselect(key="cmp_methods").set_value(["magnitude", "sparsegpt"])
    at.multiselect(key="cmp_nm").set_value(["2:4"])
    at.multiselect(key="cmp_sparsity").set_value([70])
    at.run()
    at.button(key="cmp_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]

    expected = {}
    for method in ("magnitude", "sparsegpt"):
        for cfg in (SparsifyConfig(pattern="nm", n=2, m=4, method=method),
                    SparsifyConfig(pattern="unstructured", sparsity=0.7, method=method)):
            res = sparsify(mlp, cfg)
            pattern = "2:4" if cfg.pattern == "nm" else "unstructured 70%"
            best = sum(min(x for x in (r.dense_bytes, r.bitmask_bytes, r.csr_bytes, r.nm_bytes) if x is not None)
                       for r in res.report)
            kept = sum(int(m.sum()) for m in res.masks.values())
            total = sum(r.numel for r in res.report)
            expected[(pattern, method)] = (mlp.quality(res.model)["accuracy"], 1 - kept / total, best / 2**20)
    table = at.dataframe[0].value
    assert list(table.index) == ["2:4", "unstructured 70%"] and list(table.columns) == ["magnitude", "sparsegpt"]
    for (pattern, method), (acc, _, _) in expected.items():
        assert table.loc[pattern, method] == pytest.approx(acc)

    by_sparsity, by_memory = figures(at)[:2]
    for fig, slot in ((by_sparsity, 1), (by_memory, 2)):
        for trace in fig["data"]:
            method, family = trace["name"].split(" (")
            pattern = "2:4" if family.startswith("N:M") else "unstructured 70%"
            acc, sparsity, mb = expected[(pattern, method)]
            assert decode(trace["y"])[0] == pytest.approx(acc)
            assert decode(trace["x"])[0] == pytest.approx(sparsity if slot == 1 else mb)
    assert len(by_sparsity["data"]) == 4
    # The dense reference line is drawn at the dense accuracy.
    assert by_sparsity["layout"]["shapes"][0]["y0"] == pytest.approx(mlp.quality()["accuracy"])

    at.button(key="cmp_perm_run").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    perm = permute_channels(mlp, 2, 4)
    assert metrics["Recovered share of the gap"] == f"{perm.recovered_share():.1%}"
    permuted = mlp.quality(sparsify(perm.model, SparsifyConfig()).model)["accuracy"]
    assert metrics["held-out accuracy (%), permuted"] == f"{permuted:.4g}"
    assert at.get("download_button")  # CSV and export

    # No method chosen: a clear message instead of a sweep.
    at.multiselect(key="cmp_methods").set_value([]).run()
    assert at.error[0].value.startswith("Cannot run this sweep: choose at least one method")


def test_sparsify_page_offers_the_calibrated_methods(mlp, digits_cache):
    at = page_app("sparsify", "digits:mlp", TIMEOUT)
    at.run()
    assert at.selectbox(key="sp_method").options == ["magnitude", "random", "wanda", "sparsegpt", "taylor"]
    at.selectbox(key="sp_method").set_value("sparsegpt").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    res = sparsify(mlp, SparsifyConfig(pattern="nm", n=2, m=4, method="sparsegpt"))
    assert at.dataframe[0].value["sparse"].iloc[0] == pytest.approx(mlp.quality(res.model)["accuracy"])
    # Wanda and SparseGPT rank within a layer: a global unstructured ranking is refused with a reason.
    at.radio(key="sp_pattern").set_value("unstructured").run()
    at.radio(key="sp_scope").set_value("global").run()
    assert "use scope='layer'" in at.error[0].value
