"""'Open as notebook' on the Sensitivity, Studies and Benchmarks pages: the downloaded notebook, run in a
fresh kernel, prints the values the page shows (formatted as the page formats them)."""
from __future__ import annotations

import math


from devtools.apptest import page_app
from sparsekit.recipes import rounded
from test_page_notebooks import NOTEBOOK_LABEL, run_notebook, same
from ui.format import metric_text


def _source(nb) -> str:
    return "\n".join(c.source for c in nb.cells)


def _figures(nb) -> int:
    return sum(1 for c in nb.cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {}))


def _column(frame, name: str) -> list:
    return [None if isinstance(v, float) and math.isnan(v) else rounded(float(v)) for v in frame[name]]


def test_sensitivity_page_notebook(downloads, tmp_cache):
    at = page_app("sensitivity", "digits:mlp", 300)
    at.run()
    at.selectbox(key="sen_method").set_value("wanda")
    at.multiselect(key="sen_pcts").set_value([90])
    at.multiselect(key="sen_nm").set_value(["4:8"])
    at.run()
    at.button(key="sen_run").click().run()
    at.slider(key="sen_target").set_value(60).run()
    at.button(key="sen_alloc").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    src = _source(nb)
    assert "SensitivityConfig(method='wanda', sparsities=(0.9,), nm=((4, 8),))" in src
    assert "sparsity=0.6, method='wanda'" in src and "load_model('digits:mlp')" in src
    assert head["settings"] == ["4:8", "90%"]
    # The subheader's dense quality and the caption's Spearman ρ.
    assert any(f"positive = worse than dense {metric_text(head['dense_quality'])})" in h.value for h in at.subheader)
    rho = ", ".join(f"{s}: {r}" for s, r in zip(head["settings"], head["spearman"]))
    assert any(c.value.startswith(f"Spearman ρ of proxy vs measured drop across units: {rho} (") for c in at.caption)
    # The per-unit table.
    table = at.dataframe[0].value
    assert list(table["unit"]) == head["units"] and list(table["weights"]) == head["weights"]
    for j, setting in enumerate(head["settings"]):
        assert same(_column(table, f"drop {setting}"), [row[j] for row in head["drop"]])
        assert same(_column(table, f"proxy {setting}"), [row[j] for row in head["proxy"]])
    # The allocation comparison.
    compare = at.dataframe[1].value
    assert list(compare["allocation"]) == [r["allocation"] for r in head["allocation"]] == ["uniform", "sensitivity"]
    assert same(_column(compare, "pruned share"), [r["pruned share"] for r in head["allocation"]])
    quality = next(c for c in compare.columns if c not in ("allocation", "pruned share", "note"))
    assert same(_column(compare, quality), [r["quality"] for r in head["allocation"]])
    assert list(compare["note"]) == [r["note"] for r in head["allocation"]]
    assert _figures(nb) == 3  # heatmap, proxy vs drop, chosen sparsity per layer


def _rows(frame) -> list[dict]:
    return [{k: rounded(v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def test_study_page_notebook(downloads, tmp_cache):
    at = page_app("study", "digits:mlp", 300)
    at.run()
    at.multiselect(key="st_models").set_value(["digits:mlp"])
    at.multiselect(key="st_methods").set_value(["magnitude", "random"])
    at.multiselect(key="st_patterns").set_value(["2:4", "unstructured:0.7"])
    at.number_input(key="st_seeds").set_value(2)
    at.text_input(key="st_name").set_value("notebook study")
    at.run()
    at.button(key="st_run").click().run()
    at.radio(key="st_cost").set_value("memory_bytes").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    src = _source(nb)
    assert ("StudySpec(name='notebook study', methods=('magnitude', 'random'), patterns=('2:4', 'unstructured:0.7'), "
            "seeds=(0, 1))") in src
    assert "run_study(spec, 'local')" in src and "cost = 'memory_bytes'" in src
    assert head["cells"] == 8 and head["failed"] == 0 and head["cost"] == "memory_bytes"
    best, every = (d.value for d in at.dataframe)  # "Best method per pattern", "Every setting"
    assert same(_rows(best), head["best"]) and same(_rows(every), head["settings"])
    assert [c.value for c in at.caption if c.value in head["differences"]] == head["differences"]
    assert len(head["differences"]) == 2 and len(head["intervals"]) == 4 and head["pareto"]
    assert _figures(nb) == 2  # quality against sparsity, Pareto front


def test_benchmarks_page_notebook(downloads, tmp_cache):
    at = page_app("benchmarks", "digits:mlp", 300)
    at.run()
    at.multiselect(key="bench_suites").set_value(["formats"])
    at.select_slider(key="bench_size").set_value(512)
    at.multiselect(key="bench_densities").set_value([0.1, 0.5])
    at.number_input(key="bench_repeats").set_value(3)
    at.button(key="bench_run").click().run()
    at.run()  # shown again from the store, as after any later change on the page
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    key = at.session_state["bench_last"]
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    src = _source(nb)
    assert f"run = load_run('{key}')" in src
    assert "suites=('formats',)" in src and "formats_shape=(512, 512)" in src and "densities=(0.1, 0.5)" in src
    assert "repeats=3" in src and "device='cpu'" in src
    # The ceilings, the table of all cases, and the page's claims (failures, cases over the budget).
    assert head["ceilings"]["matmul"] == next(m.value for m in at.metric if m.label.startswith("Dense matmul"))
    assert head["ceilings"]["copy"] == next(m.value for m in at.metric if m.label.startswith("Copy bandwidth"))
    table = at.dataframe[-1].value
    assert [(r["suite"], r["case"], r["backend"], r["status"]) for r in head["cases"]] == list(
        zip(table["suite"], table["case"], table["backend"], table["status"]))
    assert same([r["speedup"] for r in head["cases"]], _column(table, "speedup"))
    faster = {}
    for suite, case, backend, speedup in zip(table["suite"], table["case"], table["backend"], table["speedup"]):
        if speedup > 1:
            faster.setdefault(f"{suite} {backend}", []).append(case)
    assert head["faster"] == faster
    assert head["failed"] == 0 and not at.warning and head["over_budget"] == 0 and head["verdicts"] == []
    # One figure per suite, as on the page (whose "Run here" and "History" tabs both show this run).
    assert _figures(nb) == 1 and {c.key.split("_")[1] for c in at.get("plotly_chart")} == {"formats"}


def test_study_page_notebook_of_a_training_study(downloads, tmp_cache):
    at = page_app("study", "digits:mlp", 300)
    at.run()
    at.radio(key="st_kind").set_value("training").run()
    at.selectbox(key="st_arch").set_value("mlp")
    at.number_input(key="st_epochs").set_value(2)
    at.number_input(key="st_tseeds").set_value(2)
    at.run()
    at.button(key="st_run").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    assert "train=TrainConfig(arch='mlp', epochs=2)" in _source(nb) and "pareto" not in head
    (every,) = (d.value for d in at.dataframe)
    assert same(_rows(every), head["settings"]) and head["metric"] == at.selectbox(key="st_metric").value
    assert [c.value for c in at.caption if c.value in head["differences"]] == head["differences"] != []
    assert _figures(nb) == 1  # the intervals over seeds


def test_recipe_branches_write_valid_code():
    """The branches the page tests above do not take: a proxy-only scan, a run the page did not make."""
    import ast

    from sparsekit.bench import BenchRun, CaseResult
    from sparsekit.recipes.benchmarks import benchmarks_headline, benchmarks_recipe
    from sparsekit.recipes.sensitivity import sensitivity_recipe
    from sparsekit.sensitivity import SensitivityConfig

    proxy = sensitivity_recipe("digits:cnn", SensitivityConfig(mode="proxy", grouping="block-kind"), target=0.5)
    run = BenchRun(env={"device": "cuda", "device_name": "GPU"}, suites=["linear"], results=[
        CaseResult("linear", "64x64 b8", "dense", "cuda", "fp16", {"out_features": 64, "in_features": 64, "batch": 8},
                   median_ms=2.0),
        CaseResult("linear", "64x64 b8", "cusparselt", "cuda", "fp16",
                   {"out_features": 64, "in_features": 64, "batch": 8}, median_ms=1.0, speedup=2.0)])
    imported = benchmarks_recipe(run, "bench-run:0123456789abcdef")
    for recipe in (proxy, imported):
        for cell in recipe.all_cells():
            if cell.kind == "code":
                ast.parse(cell.source)
    text = proxy.to_script()
    assert "mode='proxy'" in text and "sensitivity_proxy_figure" not in text and "allocation" not in text
    text = imported.to_script()
    assert "BenchRun.from_json" in text and "run_benchmarks(" not in text and "verdicts(run.results)" in text
    head = benchmarks_headline(run)
    assert head["faster"] == {"linear cusparselt": ["64x64 b8"]}
    assert head["verdicts"][0]["verdict"] == "2:4 faster from batch 8 on this device"
