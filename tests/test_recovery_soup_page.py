"""The Recovery page's Model soup view: a small soup of digits:mlp 2:4 magnitude shows the numbers of the same soup
study run directly and of model_soup; Stop then Continue computes only the missing ingredients; a dense setting
and a model a study cannot load get a message."""
from __future__ import annotations

import ast

import pytest
from streamlit.testing.v1 import AppTest

import sparsekit
from devtools.apptest import decode, figures, page_app
from sparsekit.recipes.soup import soup_headline
from sparsekit.recovery import default_recovery_config, model_soup
from sparsekit.study import SoupStudy, StudySpec, ingredient_seeds, soup_results, soupcells, soupstudy

pytestmark = pytest.mark.usefixtures("one_thread")

MAGNITUDE_24 = sparsekit.SparsifyConfig(pattern="nm", n=2, m=4, method="magnitude")


def soup_page(config: sparsekit.SparsifyConfig = MAGNITUDE_24) -> AppTest:
    at = page_app("recovery", "digits:mlp", 300, config_json=config.to_json(), rc_view="Model soup")
    at.run()
    assert not at.exception, at.exception
    at.number_input(key="rs_k").set_value(2)
    at.number_input(key="rs_steps").set_value(6)
    at.number_input(key="rs_outer").set_value(2)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def by_hand() -> StudySpec:
    """The study the page should build from its inputs (k 2, 6 steps, 2 outer seeds, the default lr)."""
    rc = default_recovery_config("image-classifier", mode="fixed", steps=6, eval_every=6)
    return StudySpec(name=f"soup digits:mlp {MAGNITUDE_24.label()}", kind="soup", models=("digits:mlp",),
                     methods=("magnitude",), patterns=("2:4",), seeds=(0, 1), base=MAGNITUDE_24,
                     soup=SoupStudy(ingredients=2, recovery=rc))


@pytest.fixture
def counted(monkeypatch):
    """Recovery seeds of the ingredients computed (not read from the cache)."""
    seeds = []
    real = soupcells.run_ingredient

    def counting(config_text, loaded):
        seeds.append(soupcells.read_cell_config(config_text)[2])
        return real(config_text, loaded)

    monkeypatch.setattr(soupcells, "run_ingredient", counting)
    return seeds


def test_the_page_soup_equals_the_study_and_model_soup(tmp_cache, counted):
    at = soup_page()
    assert [b.label for b in at.button if b.key == "rs_run"] == ["Make soups (4 ingredients of 6 steps)"]
    at.button(key="rs_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("4 of 4 ingredients done, 2 soup(s)" in s.value for s in at.success)
    assert sorted(counted) == [0, 1, 2, 3]
    spec = by_hand()
    direct = soup_results(spec)  # the cells the page stored are the hand-built spec's: nothing is computed
    assert sorted(counted) == [0, 1, 2, 3] and direct.complete
    head = soup_headline(direct)
    table = at.dataframe[0].value
    # One row per level or difference, one column per pruned setting: the study's row on its side.
    row = head["table"][0]
    assert list(table.columns) == ["level", row["pruned"]]
    assert dict(zip(table["level"], table[row["pruned"]])) == {k: str(v) for k, v in row.items()
                                                               if k not in ("model", "pruned")}
    assert "soup: held-out accuracy (%)" in set(table["level"]) and "soup − mean (pp)" in set(table["level"])
    # Done: no Stop button is left on the page.
    assert not [b for b in at.button if b.key in ("rs_stop", "rs_continue")]
    # The figure's soup point is the mean of model_soup's soups, run directly with the same seeds.
    mlp = sparsekit.load_model("digits:mlp")
    pruned = sparsekit.sparsify(mlp, MAGNITUDE_24, progress=False)
    soups = [model_soup(pruned, mlp, spec.soup.recovery, ingredients=2, seeds=ingredient_seeds(o, 2),
                        progress=False) for o in (0, 1)]
    assert [o.soup for o in direct.outcomes] == [s.soup for s in soups]
    fig = figures(at)[0]
    by_name = {t["name"]: decode(t["y"])[0] for t in fig["data"]}
    group = direct.groups[0]
    assert by_name["soup − mean"] == pytest.approx(group.soup_minus_mean.diff.mean, abs=1e-12)
    assert by_name["soup − best"] == pytest.approx(group.soup_minus_best.diff.mean, abs=1e-12)
    # The levels' axis spans their intervals (a few points), not 0-100.
    low, high = fig["layout"]["yaxis"]["range"]
    levels = [group.levels[lv] for lv in ("dense", "before", "mean", "best", "soup")]
    assert low < min(i.low for i in levels) and high > max(i.high for i in levels) and high - low < 20
    assert by_name["soup"] == pytest.approx(sum(s.soup for s in soups) / 2, abs=1e-9)
    assert by_name["mean ingredient"] == pytest.approx(sum(s.mean for s in soups) / 2, abs=1e-9)
    assert by_name["best ingredient"] == pytest.approx(sum(s.best for s in soups) / 2, abs=1e-9)
    assert by_name["dense"] == pytest.approx(soups[0].dense, abs=1e-9)
    csv = next(b for b in at.get("download_button") if b.proto.label == "Download the table (CSV)")
    assert csv is not None
    assert direct.csv().startswith("model,method,pattern,metric")


def test_stop_then_continue_computes_only_the_missing_ingredients(tmp_cache, counted, monkeypatch):
    real = soupstudy.run_study

    def stopping(spec, backend=None, **kwargs):  # what a Stop press after the first ingredient does
        kwargs["stop"] = lambda: len(counted) >= 1
        return real(spec, backend, **kwargs)

    monkeypatch.setattr(soupstudy, "run_study", stopping)
    at = soup_page()
    at.button(key="rs_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert counted == [0]
    assert any("Stopped after 1 of 4 ingredients" in w.value for w in at.warning)
    assert [b.label for b in at.button if b.key == "rs_continue"] == ["Continue"]
    # A reload finds the finished ingredient and offers Continue.
    again = soup_page()
    assert any("Stopped after 1 of 4 ingredients" in w.value for w in again.warning)
    assert [b.label for b in again.button if b.key == "rs_continue"] == ["Continue"]
    monkeypatch.setattr(soupstudy, "run_study", real)
    at.button(key="rs_continue").click().run()
    assert not at.exception and not at.error and not at.warning, [e.value for e in at.error]
    assert sorted(counted) == [0, 1, 2, 3]  # ingredient 0 was not computed again
    assert any("4 of 4 ingredients done" in s.value for s in at.success)
    table = at.dataframe[0].value
    row = soup_headline(soup_results(by_hand()))["table"][0]
    assert dict(zip(table["level"], table[row["pruned"]])) == {k: str(v) for k, v in row.items()
                                                               if k not in ("model", "pruned")}


def test_a_dense_setting_and_an_unloadable_model_get_a_message(tmp_cache):
    at = page_app("recovery", "digits:mlp", 300, config_json=sparsekit.SparsifyConfig(pattern="dense").to_json(),
                  rc_view="Model soup")
    at.run()
    assert not at.exception
    assert any("Prune the model on the Sparsify page first" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "rs_run"]
    from ui.recovery_soup import soup_spec

    class Uploaded:  # a study loads its model by spec: an upload has none it could load
        spec, kind, name = "upload:abc", "image-classifier", "my upload"

    with pytest.raises(ValueError, match="unknown model 'upload:abc'"):
        soup_spec(Uploaded(), MAGNITUDE_24, 2, 6, 1e-3, 2)


@pytest.mark.slow
def test_open_as_notebook_prints_the_page_values(tmp_cache, monkeypatch):
    import streamlit
    from test_page_notebooks import NOTEBOOK_LABEL, run_notebook, same

    from sparsekit.recipes import rounded

    seen: dict[str, bytes] = {}
    original = streamlit.download_button

    def capture(label, data, *args, **kwargs):
        if label == NOTEBOOK_LABEL:
            seen[kwargs.get("key", "")] = data() if callable(data) else data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "download_button", capture)
    at = soup_page()
    at.button(key="rs_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    head, nb = run_notebook(seen["rs_notebook"])
    text = "\n".join(c.source for c in nb.cells)
    assert "kind='soup'" in text and "SoupStudy(ingredients=2" in text and "study.soup_study(spec, 'local')" in text
    assert head["ingredients"] == "4 of 4" and head["soups"] == 2
    assert same(head["table"], rounded(soup_headline(soup_results(by_hand()))["table"]))
    # The notebook's direct model_soup of outer seed 0 equals the study's soup of that seed.
    shown = [o for c in nb.cells for o in c.get("outputs", []) if c.source.startswith("from sparsekit.recovery")]
    soup, study_soup = ast.literal_eval(shown[-1]["data"]["text/plain"])  # a tuple of two floats
    assert soup == study_soup


def test_a_minilm_soup_says_what_it_costs_before_it_runs(tmp_cache):
    at = page_app("recovery", "minilm", 300, config_json=MAGNITUDE_24.to_json(), rc_view="Model soup")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    loaded = sparsekit.load_model("minilm")
    note = " ".join(i.value for i in at.info)
    assert "6 ingredients is a whole recovery run of 50 steps" in note
    assert f"about {loaded.n_params * 4 * 1.4 / 2**20:,.0f} MB each" in note
    assert [b.label for b in at.button if b.key == "rs_run"] == ["Make soups (6 ingredients of 50 steps)"]
