"""A model soup as a study (sparsekit.study, kind "soup"): its soups against model_soup run directly with the same
seeds (bit-exact on one thread), a stopped study that continues with only the missing ingredients (counted), cells
shared between soups of different k, the JSON round trip, and refusals of bad specs."""
import dataclasses

import pytest
import torch

import sparsekit
from sparsekit import viz
from sparsekit.recovery import default_recovery_config, model_soup, uniform_soup
from sparsekit.stats import mean_interval
from sparsekit.study import SoupStudy, StudySpec, ingredient_seeds, run_study, soup_results, soup_study, soupcells
from sparsekit.study import soupstudy
from sparsekit.study.store import lookup

pytestmark = pytest.mark.usefixtures("one_thread")

RC = default_recovery_config("image-classifier", steps=6, eval_every=3, lr=2e-3)


def spec_of(k=2, seeds=(0, 1), patterns=("2:4",), methods=("magnitude",), **soup):
    return StudySpec(name="soup test", kind="soup", models=("digits:mlp",), methods=methods, patterns=patterns,
                     seeds=seeds, soup=SoupStudy(ingredients=k, recovery=RC, **soup))


@pytest.fixture
def counted(monkeypatch):
    """The recovery seeds of the ingredients computed (not read from the cache) while the test runs."""
    seeds = []
    real = soupcells.run_ingredient

    def counting(config_text, loaded):
        seeds.append(soupcells.read_cell_config(config_text)[2])
        return real(config_text, loaded)

    monkeypatch.setattr(soupcells, "run_ingredient", counting)
    return seeds


def test_the_study_soup_equals_model_soup_with_the_same_seeds(tmp_cache, counted):
    spec = spec_of(k=3, seeds=(0, 1), patterns=("2:4", "unstructured:0.7"))
    assert spec.cell_count() == 12 and [c.seed for c in spec.cells()][:6] == [0, 1, 2, 0, 1, 2]
    got = soup_study(spec, progress=False)
    assert sorted(counted) == sorted([0, 1, 2, 3, 4, 5] * 2) and got.complete and len(got.outcomes) == 4
    mlp = sparsekit.load_model("digits:mlp")
    for pattern, cfg in (("2:4", sparsekit.SparsifyConfig(pattern="nm", n=2, m=4, method="magnitude")),
                         ("unstructured:0.7", sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.7,
                                                                       method="magnitude"))):
        pruned = sparsekit.sparsify(mlp, cfg, progress=False)
        mine = [o for o in got.outcomes if o.pattern == pattern]
        assert [o.outer for o in mine] == [0, 1]
        for o in mine:
            assert o.seeds == tuple(ingredient_seeds(o.outer, 3))
            ref = model_soup(pruned, mlp, RC, ingredients=3, seeds=o.seeds, progress=False)
            assert o.soup == ref.soup and list(o.ingredients) == ref.ingredients
            assert (o.best, o.mean, o.dense) == (ref.best, ref.mean, ref.dense)
            assert o.before == ref.last.pruned_quality[ref.metric]
            # The soup's weights: averaged from the stored records, equal to model_soup's model.
            cells = [c for c in spec.cells() if c.pattern == pattern and c.seed in o.seeds]
            stored = lookup(c.key for c in cells)
            state, masks = uniform_soup([soupcells.ingredient_run(stored[c.key].detail) for c in cells])
            ref_state = ref.model.state_dict()
            assert state.keys() == ref_state.keys()
            assert all(torch.equal(state[k], ref_state[k]) for k in state)
            assert all(torch.equal(masks[k], ref.masks[k]) for k in masks)
        # The summary: intervals over outer seeds and paired differences, from the soups.
        group = next(g for g in got.groups if g.pattern == pattern)
        assert group.outers == (0, 1)
        assert group.levels["soup"] == mean_interval([o.soup for o in mine], spec.confidence)
        # Each pair's difference rounded to 10 decimals, then the interval (plain loop, stats' own t interval).
        diffs = [round(o.soup - o.mean, 10) for o in mine]
        ref_diff = mean_interval(diffs, spec.confidence)
        assert group.soup_minus_mean.diff.mean == round(sum(diffs) / len(diffs), 10)
        assert (group.soup_minus_mean.diff.low, group.soup_minus_mean.diff.high) == pytest.approx(
            (ref_diff.low, ref_diff.high), abs=1e-12, nan_ok=True)
        assert group.soup_minus_mean.a_lower == sum(d < 0 for d in diffs)
        assert group.soup_minus_mean.ties == sum(d == 0 for d in diffs)
        assert group.soup_minus_best.diff.mean == pytest.approx(sum(o.soup - o.best for o in mine) / 2)
    # Differences that cancel give exactly 0 (the soup scored 1/360 above its mean ingredient on one seed and
    # 1/360 below on the other: rounded first, the mean was 5e-11).
    cancel = soupstudy.rounded_difference([96.80555555555556, 97.5], [96.71296296296296, 97.59259259259258], 0.95)
    assert cancel.diff.mean == 0.0 and cancel.a_lower == 1 and cancel.ties == 0
    # The table names its units and the CSV has one row per setting.
    assert any("held-out accuracy (%)" in k for k in got.rows()[0]) and "soup − mean (pp)" in got.rows()[0]
    assert len(got.csv().strip().splitlines()) == 3
    assert "4 soups" in repr(got).replace("soups 4", "4 soups") and "soup accuracy" in repr(got)
    # The figure: one trace per level, each setting's mean and interval over outer seeds.
    fig = viz.soup_figure(got)
    assert [t.name for t in fig.data] == ["dense", "pruned, before recovery", "mean ingredient", "best ingredient",
                                          "soup", "soup − best", "soup − mean"]
    soup_trace = fig.data[4]
    # The right panel: the paired differences with their intervals, on their own axis.
    for trace, attr in ((fig.data[5], "soup_minus_best"), (fig.data[6], "soup_minus_mean")):
        assert trace.xaxis == "x2" and list(trace.y) == [getattr(g, attr).diff.mean for g in got.groups]
        assert list(trace.error_y.arrayminus) == [getattr(g, attr).diff.mean - getattr(g, attr).diff.low
                                                  for g in got.groups]
    assert list(soup_trace.x) == [g.label for g in got.groups]
    assert list(soup_trace.y) == [g.levels["soup"].mean for g in got.groups]
    assert list(soup_trace.error_y.array) == [g.levels["soup"].high - g.levels["soup"].mean for g in got.groups]
    assert soup_trace.marker.color[0] == viz.MODE_COLORS["fixed"]
    assert fig.data[1].marker.color[0] == viz.method_color("magnitude")
    assert len(viz.soup_figure([]).data) == 0
    # Read again from the cache: nothing computed, the same soups.
    counted.clear()
    again = soup_results(spec)
    assert counted == [] and again.outcomes == got.outcomes


def test_a_stopped_study_continues_with_only_the_missing_ingredients(tmp_cache, counted):
    spec = spec_of(k=2, seeds=(0, 1))
    first = run_study(spec, progress=False, stop=lambda: len(counted) >= 1)
    assert first.status.state == "stopped" and len(counted) == 1
    part = soup_results(spec)
    assert part.ingredients_done == 1 and part.ingredients_total == 4 and part.outcomes == [] and not part.complete
    counted.clear()
    # Three more ingredients make the first soup (outer seed 0) and stop.
    run_study(spec, progress=False, stop=lambda: len(counted) >= 1)
    part = soup_results(spec)
    assert len(counted) == 1 and part.ingredients_done == 2 and [o.outer for o in part.outcomes] == [0]
    counted.clear()
    done = soup_study(spec, progress=False)
    assert sorted(counted) == [2, 3] and done.complete and [o.outer for o in done.outcomes] == [0, 1]
    assert done.status.computed == 2
    assert done.outcomes[0] == part.outcomes[0]
    # Ingredients are cells keyed by pruning, recovery settings and seed: a soup of k = 3 from outer seed 0 uses
    # seeds 0, 1, 2, all done above, and computes nothing.
    counted.clear()
    three = soup_study(spec_of(k=3, seeds=(0,)), progress=False)
    assert counted == [] and three.outcomes[0].seeds == (0, 1, 2)


def test_spec_round_trip_and_keys():
    spec = spec_of(k=3, seeds=(0, 2))
    back = StudySpec.from_json(spec.to_json())
    assert back == spec and back.soup == spec.soup and isinstance(back.soup.recovery, type(RC))
    assert [c.key for c in back.cells()] == [c.key for c in spec.cells()]
    assert [c.seed for c in spec.cells()] == [0, 1, 2, 6, 7, 8]
    # The mode and the seed of the given recovery settings do not enter the key (each cell sets them).
    other = dataclasses.replace(spec, soup=SoupStudy(ingredients=3, recovery=dataclasses.replace(RC, seed=9,
                                                                                                  mode="ste")))
    assert [c.key for c in other.cells()] == [c.key for c in spec.cells()]
    longer = dataclasses.replace(spec, soup=SoupStudy(ingredients=3, recovery=dataclasses.replace(RC, steps=7)))
    assert not {c.key for c in longer.cells()} & {c.key for c in spec.cells()}
    assert spec.cells()[0].sparsify_config().n == 2


@pytest.mark.parametrize("change, message", [
    (dict(soup=SoupStudy(ingredients=1)), "2 to 64 ingredients"),
    (dict(soup=SoupStudy(ingredients=2.5)), "2 to 64 ingredients"),
    (dict(soup=SoupStudy(ingredients=65)), "2 to 64 ingredients"),
    (dict(soup=SoupStudy(rounds=2)), "runs one round"),
    (dict(soup=SoupStudy(rounds=0)), "rounds must be"),
    (dict(methods=("nosuch",)), "unknown method"),
    (dict(patterns=("dense",)), "bad pattern 'dense'"),
    (dict(patterns=("unstructured:0",)), "bad pattern"),
    (dict(lambda_w=(1e-4,)), "lambda_w"),
    (dict(soup=SoupStudy(recovery=dataclasses.replace(RC, steps=0))), "steps"),
    (dict(models=("nosuch:model",)), "unknown model"),
    (dict(seeds=()), "no seeds"),
])
def test_bad_soup_specs_are_refused_with_messages(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(spec_of(), **change).validate()


def test_soup_settings_belong_to_a_soup_study():
    with pytest.raises(ValueError, match="soup settings belong to a soup study"):
        StudySpec(kind="oneshot", soup=SoupStudy()).validate()
    with pytest.raises(ValueError, match="soup_results reads a soup study"):
        soup_results(StudySpec(kind="oneshot", methods=("magnitude",)))
    with pytest.raises(ValueError, match="a soup needs a pruned model|prunes nothing"):
        soupcells.check_soup_spec(dataclasses.replace(spec_of(), patterns=("dense",)))


@pytest.mark.slow
def test_a_soup_study_continues_on_ray_and_equals_the_local_one(ray_cluster, tmp_path, monkeypatch, counted):
    import os

    from sparsekit.study import study_records

    spec = spec_of(k=2, seeds=(0, 1))
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "local-cache"))
    local = soup_study(spec, "local", progress=False)
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "ray-cache"))
    counted.clear()
    run_study(spec, "local", progress=False, stop=lambda: len(counted) >= 1)  # one ingredient here, then stopped
    got = soup_study(spec, "ray", ray_address=ray_cluster.address, progress=False)
    assert got.status.computed == 3 and got.complete and len(counted) == 1  # the other three on Ray workers
    workers = {r.seed: r.worker["pid"] for r in study_records(spec)}
    assert workers[counted[0]] == os.getpid() and all(p != os.getpid() for s, p in workers.items() if s != counted[0])
    assert got.outcomes == local.outcomes  # the soups of weights recovered in Ray workers equal the local ones
