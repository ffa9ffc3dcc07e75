"""The Compare page's structure families: nothing runs before the click; the figure and table equal a direct
``family_points`` call with the page's settings; a family that does not apply is named, not an error."""
import json

import pytest

import sparsekit
from sparsekit.structured.equal_cost import family_points
from devtools.apptest import decode, figures, page_app

TIMEOUT = 240


@pytest.fixture(scope="module")
def mlp(digits_cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEKIT_CACHE_DIR", str(digits_cache_dir))
        yield sparsekit.load_model("digits:mlp")


def test_families_section_equals_a_direct_call(mlp, digits_cache):
    at = page_app("compare", "digits:mlp", TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert any("Nothing measured" in c.value for c in at.caption)
    at.multiselect(key="cmp_nm").set_value(["2:4"])
    at.multiselect(key="cmp_sparsity").set_value([70])
    at.multiselect(key="cmp_fam_blocks").set_value([4])
    at.run()
    at.button(key="cmp_fam_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]

    direct = family_points(mlp, unstructured=(0.7,), nm=((2, 4),), slicegpt=(0.2, 0.4), monarch_blocks=(4,),
                           progress=False)
    table = at.dataframe[-1].value
    assert list(table["family"]) == [r.family for r in direct.rows]
    assert list(table["kept params"]) == [r.kept_params for r in direct.rows]
    assert list(table["accuracy"]) == pytest.approx([r.quality["accuracy"] for r in direct.rows])
    # One precision per column: accuracy with 2 decimals under its label with the unit, the share in %.
    config = json.loads(at.dataframe[-1].proto.columns)
    assert config["accuracy"]["label"] == "held-out accuracy (%)" and config["accuracy"]["type_config"]["format"] == "%.2f"
    assert config["kept share"]["label"] == "kept share (%)" and config["kept share"]["type_config"]["format"] == "%.1f"
    assert list(table["kept share"]) == pytest.approx([100 * r.kept_share for r in direct.rows])
    # SliceGPT does not apply to an MLP: named under the figure, not an error
    assert direct.skipped and any("SliceGPT" in c.value for c in at.caption)
    fig = figures(at)[-1]
    plotted = {t["meta"]: decode(t["y"]).tolist() for t in fig["data"] if t.get("meta") in ("unstructured", "N:M")}
    assert set(plotted) == {"unstructured", "N:M"}
    for family, values in plotted.items():
        assert sorted(values) == pytest.approx(sorted(r.quality["accuracy"] for r in direct.rows
                                                      if r.family == family))

    at.radio(key="cmp_fam_x").set_value("bytes").run()  # the other axis: no recomputation needed
    assert not at.exception and figures(at)[-1]["layout"]["xaxis"]["title"]["text"].lower().count("byte")


def test_families_notebook_reproduces_the_section(mlp, digits_cache, downloads):
    from test_page_notebooks import NOTEBOOK_LABEL, run_notebook

    at = page_app("compare", "digits:mlp", TIMEOUT)
    at.run()
    at.multiselect(key="cmp_nm").set_value(["2:4"])
    at.multiselect(key="cmp_sparsity").set_value([50])
    at.multiselect(key="cmp_fam_blocks").set_value([2])
    at.run()
    at.button(key="cmp_fam_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    head, nb = run_notebook(downloads[NOTEBOOK_LABEL])
    table = at.dataframe[-1].value
    from sparsekit.recipes import rounded

    assert head["families"] == [[f, s, int(k), rounded(float(q))] for f, s, k, q in
                                zip(table["family"], table["setting"], table["kept params"], table["accuracy"])]
    assert [row[0] for row in head["families"]] == ["dense", "unstructured", "N:M", "Monarch"]
