"""Issue #24, One style (audit round): a SAD figure's title names the same unit as its value axis (the
axis is in % of weights; the title said 'fraction of weights')."""
from __future__ import annotations

import numpy as np
import pytest

from sparsekit.viz.recovery import recovery_sad_figure
from sparsekit.viz.training import sad_series_figure
from tests.test_style import _train_run


def _units(fig) -> tuple[str, str]:
    title, axis = fig.layout.title.text, fig.layout.yaxis.title.text
    return title[title.rindex("("):], axis[axis.rindex("("):]


@pytest.mark.parametrize("kind", ["interval", "cumulative", "from_first", "to_final"])
@pytest.mark.parametrize("fraction", [True, False])
def test_training_sad_title_and_axis_name_one_unit(kind, fraction):
    run, report = _train_run("ste")
    title, axis = _units(sad_series_figure([run], reports=[report], kind=kind, fraction=fraction))
    assert title == axis == ("(% of weights)" if fraction else "(weights)")


class _Recovery:
    """What the recovery SAD figure reads of a run: label, evaluation steps and SAD series."""
    label = "STE 2:4"
    run_id = "r1"

    def steps(self):
        return np.array([0, 10, 20])

    def sad_series(self, layer=None, *, from_start=False, fraction=False):
        counts = np.array([0.0, 30.0, 40.0 if from_start else 10.0])
        return counts / 1000 if fraction else counts


@pytest.mark.parametrize("from_start", [True, False])
@pytest.mark.parametrize("fraction", [True, False])
def test_recovery_sad_title_and_axis_name_one_unit(from_start, fraction):
    run = _Recovery()
    fig = recovery_sad_figure([run], from_start=from_start, fraction=fraction, colors={"r1": "#000000"})
    title, axis = _units(fig)
    assert title == axis == ("(% of weights)" if fraction else "(weights)")


# One precision (#24 "96.1111 next to 96.11"): Compare and Sensitivity wrote their headline numbers with
# `:.4g` (a perplexity of 123.456 as 123.5, 97.5 % as 97.5) where Sparsify writes ui.format.metric_text
# (123.46, 97.50). The real numbers are swapped for ones where the two styles differ.

def test_compare_headline_numbers_have_the_sparsify_page_precision(tmp_cache, monkeypatch):
    import sparsekit.recipes.compare as recipe
    from devtools.apptest import page_app
    from ui.format import change_text, metric_text

    real = recipe.compare_headline

    def headline(metric, **kw):
        head = real(metric, **kw)
        if "best_first" in head:
            head["dense"] = 123.456
            head["best_first"] = {p: [(m, 97.5) for m, _ in ranked] for p, ranked in head["best_first"].items()}
        if "permuted" in head:
            head["plain"], head["permuted"] = 123.456, 120.0
        return head

    monkeypatch.setattr(recipe, "compare_headline", headline)
    at = page_app("compare", "digits:mlp", 600)
    at.run()
    at.multiselect(key="cmp_methods").set_value(["magnitude"])
    at.multiselect(key="cmp_nm").set_value(["2:4"])
    at.multiselect(key="cmp_sparsity").set_value([])
    at.run()
    at.button(key="cmp_run").click().run()
    at.button(key="cmp_perm_run").click().run()
    assert not at.exception, at.exception
    line = next(m.value for m in at.markdown if m.value.startswith("Dense:"))
    assert line.startswith(f"Dense: {metric_text(123.456)} (") and "magnitude 97.50" in line, line
    metrics = {m.label: (m.value, m.proto.delta) for m in at.metric}
    plain = next(v for k, v in metrics.items() if "magnitude 2:4" in k)
    permuted = next(v for k, v in metrics.items() if k.endswith("permuted"))
    assert plain[0] == "123.46" and permuted == ("120.00", change_text(120.0 - 123.456, 123.456)), metrics


def test_sensitivity_subheader_has_the_sparsify_page_precision(tmp_cache, monkeypatch):
    import sparsekit.recipes.sensitivity as recipe
    from devtools.apptest import page_app

    real = recipe.sensitivity_headline

    def headline(scan):
        return {**real(scan), "dense_quality": 123.456}

    monkeypatch.setattr(recipe, "sensitivity_headline", headline)
    at = page_app("sensitivity", "digits:mlp", 600)
    at.run()
    at.multiselect(key="sen_pcts").set_value([50])
    at.multiselect(key="sen_nm").set_value([])
    at.run()
    if any(b.key == "sen_run" for b in at.button):
        at.button(key="sen_run").click().run()
    assert not at.exception, at.exception
    assert any("worse than dense 123.46)" in h.value for h in at.subheader), [h.value for h in at.subheader]


# Cut-off chips (#24: Recovery "SR-STE", the Studies pattern chip, Benchmarks "0.5"): in a column a multiselect
# keeps its chips on one scrolling row and the last one fades out under the clear button; the Benchmarks page
# wraps them (d7f54e2). Every settings multiselect of the other pages wraps them too.

@pytest.mark.parametrize("page, radio", [("study", None), ("study", ("st_kind", "training")), ("recovery", None),
                                         ("sensitivity", None), ("compare", None), ("training", None),
                                         ("attention", ("att_scope", "Chosen layers and heads"))])
def test_every_multiselect_wraps_its_chips(tmp_cache, page, radio):
    from devtools.apptest import page_app
    at = page_app(page, "digits:vit" if page == "attention" else "digits:cnn", 300)
    at.run()
    if radio is not None:
        at.radio(key=radio[0]).set_value(radio[1]).run()
    assert not at.exception, at.exception
    boxes = at.multiselect
    assert len(boxes) >= 1
    assert [ms.key for ms in boxes if not ms.proto.wrap] == [], page
