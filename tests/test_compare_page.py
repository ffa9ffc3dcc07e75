"""The Compare page through AppTest: figures and tables against independent runs, runs only on a click
(per model), permutation with progress, Stop and Continue, export, and choices read from the URL."""
import copy

import pytest
import torch
from streamlit.runtime.scriptrunner_utils.exceptions import StopException

import sparsekit
import sparsekit.permutation
from sparsekit.permutation import permute_channels
from sparsekit.sparsify import SparsifyConfig, sparsify
from ui.format import change_text, metric_text
from ui.long_jobs import duration_text, time_left
from devtools.apptest import decode, figures, page_app

TIMEOUT = 180


@pytest.fixture(scope="module")
def mlp(digits_cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEKIT_CACHE_DIR", str(digits_cache_dir))
        yield sparsekit.load_model("digits:mlp")


def test_compare_page_sweep_figures_tables(mlp, digits_cache):
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
        data = [t for t in fig["data"] if t.get("meta") != "labels"]
        assert len(data) == 4
        for trace in data:
            pattern = "2:4" if trace["meta"] == "N:M" else "unstructured 70%"
            acc, sparsity, mb = expected[(pattern, trace["legendgroup"])]
            assert decode(trace["y"])[0] == pytest.approx(acc)
            assert decode(trace["x"])[0] == pytest.approx(sparsity if slot == 1 else mb)
        assert fig["layout"]["legend"]["orientation"] == "h"
    # The dense reference line is drawn at the dense accuracy.
    assert by_sparsity["layout"]["shapes"][0]["y0"] == pytest.approx(mlp.quality()["accuracy"])
    assert at.get("download_button")

    # No method chosen: a clear message instead of a sweep; the other sections stay.
    at.multiselect(key="cmp_methods").set_value([]).run()
    assert at.error[0].value.startswith("Cannot run this sweep: choose at least one method")
    assert not at.exception and "Channel permutation for N:M" in [s.value for s in at.subheader]


def test_permutation_and_export_do_not_wait_for_the_sweep(mlp, digits_cache):
    at = page_app("compare", "digits:mlp", TIMEOUT)
    at.run()
    assert not at.exception
    assert "25 settings" in at.info[0].value and not at.get("plotly_chart")  # the sweep has not run...
    heads = [s.value for s in at.subheader]
    assert "Channel permutation for N:M" in heads and "Export" in heads  # ...and both sections are there
    assert at.button(key="cmp_perm_run") is not None
    assert at.selectbox(key="cmp_export_setting").value == "2:4 magnitude"
    assert any(b.proto.label == "Export (.zip)" for b in at.get("download_button"))


def test_sweep_runs_only_on_a_click_per_model(mlp, digits_cache):
    at = page_app("compare", "digits:mlp", TIMEOUT)
    at.run()
    at.multiselect(key="cmp_methods").set_value(["random"])
    at.multiselect(key="cmp_nm").set_value(["1:4"])
    at.multiselect(key="cmp_sparsity").set_value([]).run()
    assert "1 settings for digits MLP" in at.info[0].value
    at.button(key="cmp_run").click().run()
    assert not at.exception and len(figures(at)) == 2

    # Another model: the prompt again, nothing computed without a click.
    at.sidebar.selectbox(key="model_source").set_value("digits:cnn").run()
    assert not at.exception, at.exception
    assert not figures(at) and "1 settings for digits CNN" in at.info[0].value
    assert at.button(key="cmp_run").proto.label == "Run comparison (1 settings)"

    # Back to the MLP: already run, so the results are there at once.
    at.sidebar.selectbox(key="model_source").set_value("digits:mlp").run()
    assert len(figures(at)) == 2 and not at.info
    random_14 = sparsify(mlp, SparsifyConfig(pattern="nm", n=1, m=4, method="random"))
    assert at.dataframe[0].value.loc["1:4", "random"] == pytest.approx(mlp.quality(random_14.model)["accuracy"])

    # A new session (a reload) with the same model and choices: also at once, from the disk cache.
    fresh = page_app("compare", "digits:mlp", TIMEOUT)
    fresh.query_params.update({"cmp_methods": "random", "cmp_nm": "1:4", "cmp_sparsity": ""})
    fresh.run()
    assert len(figures(fresh)) == 2 and not fresh.info


def test_choices_come_from_the_url(mlp, digits_cache):
    at = page_app("compare", "digits:mlp", TIMEOUT)
    at.query_params.update({"cmp_methods": ["wanda", "taylor"], "cmp_nm": "4:8", "cmp_sparsity": "90"})
    at.run()
    assert not at.exception
    assert at.multiselect(key="cmp_methods").value == ["wanda", "taylor"]
    assert at.multiselect(key="cmp_nm").value == ["4:8"]
    assert at.multiselect(key="cmp_sparsity").value == [90]
    assert "4 settings" in at.info[0].value
    for key in ("cmp_methods", "cmp_nm", "cmp_sparsity"):
        ms = at.multiselect(key=key)
        assert ms.proto.query_param_key == key and ms.proto.wrap  # bound to the URL; chips wrap


def manual_permuted_accuracy(mlp, perms):
    """Accuracy of 2:4 magnitude after permuting by hand: fc2's inputs (fc1's outputs), head's
    inputs (fc2's outputs), the digits MLP's only elementwise pairs."""
    model = copy.deepcopy(mlp.module)
    with torch.no_grad():
        for consumer, producer in (("fc2", "fc1"), ("head", "fc2")):
            if consumer in perms:
                p = torch.tensor(perms[consumer])
                prod, cons = getattr(model, producer), getattr(model, consumer)
                prod.weight.copy_(prod.weight[p])
                prod.bias.copy_(prod.bias[p])
                cons.weight.copy_(cons.weight[:, p])
    return mlp.quality(sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4)).model)["accuracy"]


def test_permutation_progress_stop_and_continue(mlp, digits_cache, monkeypatch):
    at = page_app("compare", "digits:mlp", TIMEOUT)
    at.run()
    assert at.selectbox(key="cmp_perm_pattern").value == "2:4" and not at.metric  # nothing searched yet

    # The user's Stop press arrives while the second layer is searched: a rerun interrupts the
    # script there (simulated by the exception Streamlit raises into an interrupted run).
    real = sparsekit.permutation.search_permutation
    calls = []

    def interrupted(matrix, n, m, **kw):
        calls.append(tuple(matrix.shape))
        if len(calls) == 2:
            raise StopException()
        return real(matrix, n, m, **kw)

    monkeypatch.setattr(sparsekit.permutation.channels, "search_permutation", interrupted)
    at.button(key="cmp_perm_run").click().run()
    assert not at.exception and len(calls) == 2
    assert at.button(key="cmp_perm_stop").proto.label == "Stop"  # shown while the search ran
    monkeypatch.setattr(sparsekit.permutation.channels, "search_permutation", real)

    at.button(key="cmp_perm_stop").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Stopped after 1 layer(s); 1 not searched" in w.value for w in at.warning)
    layers = at.dataframe[0].value
    assert list(layers["layer"]) == ["fc2"] and "perm" not in layers.columns
    full = permute_channels(mlp, 2, 4, max_seconds_per_layer=10.0)
    job = next(iter(at.session_state["cmp_perm_jobs"].values()))
    assert job["parts"][0]["perm"] == full.perms["fc2"].tolist()  # the finished layer was kept as it was
    metrics = {m.label: m for m in at.metric}
    partial = manual_permuted_accuracy(mlp, {"fc2": job["parts"][0]["perm"]})
    assert metrics["held-out accuracy (%), permuted"].value == metric_text(partial)

    at.button(key="cmp_perm_continue").click().run()
    assert not at.exception and not at.error and not at.warning
    assert list(at.dataframe[0].value["layer"]) == ["fc2", "head"]
    metrics = {m.label: m for m in at.metric}
    assert metrics["Recovered share of the gap"].value == f"{full.recovered_share():.1%}"
    permuted = manual_permuted_accuracy(mlp, {k: v.tolist() for k, v in full.perms.items()})
    assert metrics["held-out accuracy (%), permuted"].value == metric_text(permuted)
    plain = mlp.quality(sparsify(mlp, SparsifyConfig()).model)["accuracy"]
    assert metrics["held-out accuracy (%), magnitude 2:4"].value == metric_text(plain)
    change = permuted - plain
    assert metrics["held-out accuracy (%), permuted"].proto.delta == (change_text(change, plain) if change else "")
    assert not at.get("button") or all(b.key != "cmp_perm_stop" for b in at.button)

    # Finished searches are cached: a new session shows the result without a click.
    again = page_app("compare", "digits:mlp", TIMEOUT)
    again.run()
    assert {m.label: m.value for m in again.metric}["Recovered share of the gap"] == f"{full.recovered_share():.1%}"


def test_time_left_estimate():
    assert time_left(0.25, 10.0) == pytest.approx(30.0)  # a quarter in 10 s: three quarters to go
    assert time_left(1.0, 10.0) == 0.0
    assert time_left(0.01, 10.0) is None and time_left(0.5, 0.5) is None  # too early to tell
    assert duration_text(30.0) == "about 30 s" and duration_text(600.0) == "about 10 min"


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
