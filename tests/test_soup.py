"""Sparse Model Soups (sparsekit.recovery.soup): the soup's weights against a plain-loop average of the
ingredients, its zero pattern against the mask, ingredients against single recoveries run on their own,
the qualities against fresh evaluations, the card against the object, untouched inputs, further rounds
(nested masks, one step sparser) and the refusals."""
import dataclasses

import pytest
import torch

import sparsekit
from sparsekit.display import fmt
from sparsekit.recovery import (
    SoupResult, default_recovery_config, model_soup, next_config, recover, recovered_model, uniform_soup,
)

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3


@pytest.fixture(scope="module")
def mlp():
    return sparsekit.load_model("digits:mlp")


@pytest.fixture(scope="module")
def mlp24(mlp):
    return sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="nm", n=2, m=4, method="magnitude"),
                              progress=False)


def cfg(**kw):
    return default_recovery_config("image-classifier", **{"steps": 6, "eval_every": 6, **kw})


@pytest.fixture(scope="module")
def soup(mlp, mlp24):
    dense_before = {k: v.clone() for k, v in mlp.module.state_dict().items()}
    pruned_before = {k: v.clone() for k, v in mlp24.model.state_dict().items()}
    masks_before = {k: v.clone() for k, v in mlp24.masks.items()}
    calls = []
    threads = torch.get_num_threads()  # module-scoped: set up before the per-test one_thread fixture
    torch.set_num_threads(1)
    try:
        out = model_soup(mlp24, mlp, cfg(mode="ste", seed=5), ingredients=K,
                         progress=lambda f, m: calls.append((f, m)))
    finally:
        torch.set_num_threads(threads)
    return out, calls, dense_before, pruned_before, masks_before


def test_soup_is_the_plain_average_of_the_ingredients(soup):
    s = soup[0]
    records = s.last.ingredients
    assert len(records) == K
    state = s.model.state_dict()
    assert set(state) == set(records[0].weights)
    for key, value in state.items():
        total = torch.zeros_like(records[0].weights[key], dtype=torch.float64)
        for rec in records:
            total = total + rec.weights[key].double()
        torch.testing.assert_close(value.double(), total / K, rtol=0, atol=1e-6)


def test_soup_zero_pattern_is_the_mask(soup, mlp24):
    s = soup[0]
    assert set(s.masks) == set(mlp24.masks)
    modules = dict(s.model.named_modules())
    for name, mask in s.masks.items():
        assert torch.equal(mask, mlp24.masks[name])
        weight = modules[name].weight.detach()
        assert torch.equal(weight != 0, mask), name  # kept entries nonzero, pruned exactly zero
        assert bool((weight[~mask] == 0).all())


def test_ingredients_are_single_fixed_runs_with_their_seeds(soup, mlp, mlp24):
    s = soup[0]
    assert s.config.mode == "fixed"  # a moving mask would give each ingredient its own mask
    assert s.last.seeds == [5, 6, 7]
    for seed, rec in zip(s.last.seeds, s.last.ingredients):
        alone = recover(mlp24, mlp, cfg(mode="fixed", seed=seed), progress=False)
        for key, value in alone.weights.items():
            assert torch.equal(rec.weights[key], value), (seed, key)
    a, b = s.last.ingredients[:2]
    assert any(not torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_qualities_equal_fresh_evaluations(soup, mlp):
    s = soup[0]
    metric = s.metric
    assert metric == next(iter(mlp.quality()))
    assert s.soup == pytest.approx(mlp.quality(s.model)[metric])
    scores = [mlp.quality(recovered_model(rec, mlp))[metric] for rec in s.last.ingredients]
    assert s.ingredients == pytest.approx(scores)
    assert s.best == pytest.approx(max(scores))
    assert s.mean == pytest.approx(sum(scores) / len(scores))
    assert s.dense == pytest.approx(mlp.quality()[metric])


def test_card_fields_equal_the_object(soup):
    s = soup[0]
    card = s.summary_card()
    m = s.metric
    assert card.headline[f"soup {m}"] == fmt(s.soup)
    assert card.headline[f"best ingredient {m}"] == fmt(s.best)
    assert card.headline[f"mean ingredient {m}"] == fmt(s.mean)
    assert card.headline[f"dense {m}"] == fmt(s.dense)
    assert card.headline["ingredients"].startswith(f"{K} ")
    assert card.headline["rounds"] == "1"
    assert list(card.rows) == s.rows()
    row = s.rows()[0]
    assert (row["soup"], row["best"], row["mean"]) == (s.soup, s.best, s.mean)
    assert row["worst"] == min(s.ingredients)
    assert "SoupResult" in repr(s) and "<table>" in s._repr_html_()


def test_inputs_unchanged_and_progress_reaches_the_end(soup, mlp, mlp24):
    s, calls, dense_before, pruned_before, masks_before = soup
    for k, v in mlp.module.state_dict().items():
        assert torch.equal(v, dense_before[k]), k
    for k, v in mlp24.model.state_dict().items():
        assert torch.equal(v, pruned_before[k]), k
    assert all(torch.equal(mlp24.masks[k], v) for k, v in masks_before.items())
    assert s.model is not mlp24.model
    fractions = [f for f, _ in calls]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_different_masks_are_refused(mlp, mlp24):
    other = sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.5),
                               progress=False)
    a = recover(mlp24, mlp, cfg(steps=1, eval_every=1), progress=False)
    b = recover(other, mlp, cfg(steps=1, eval_every=1), progress=False)
    with pytest.raises(ValueError, match="different mask from ingredient 0 in layer"):
        uniform_soup([a, b])
    with pytest.raises(ValueError, match="at least 2 ingredients"):
        uniform_soup([a])
    empty = dataclasses.replace(a, weights={})
    with pytest.raises(ValueError, match="has no weights"):
        uniform_soup([a, empty])


@pytest.mark.parametrize("kw, message", [
    ({"ingredients": 1}, "between 2 and"),
    ({"ingredients": 0}, "between 2 and"),
    ({"ingredients": 2.0}, "must be an integer"),
    ({"rounds": 0}, "rounds must be between 1"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"seeds": [1, 2, 3]}, "distinct"),
])
def test_bad_arguments_are_refused(mlp, mlp24, kw, message):
    with pytest.raises(ValueError, match=message):
        model_soup(mlp24, mlp, cfg(), progress=False, **{"ingredients": 2, **kw})


def test_next_config_and_its_refusals(mlp):
    nm = sparsekit.SparsifyConfig(pattern="nm", n=2, m=4)
    assert (next_config(nm).n, next_config(nm).m) == (1, 4)
    with pytest.raises(ValueError, match="no sparser N:M"):
        next_config(dataclasses.replace(nm, n=1))
    un = sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.7)
    assert next_config(un, 0.1).sparsity == pytest.approx(0.8)
    with pytest.raises(ValueError, match="over 0.99"):
        next_config(dataclasses.replace(un, sparsity=0.95), 0.1)
    with pytest.raises(ValueError, match="sparsity step"):
        next_config(un, 0.0)
    with pytest.raises(ValueError, match="uniform allocation"):
        next_config(dataclasses.replace(un, allocation="owl"))
    rnd = sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.5, method="random"),
                             progress=False)
    with pytest.raises(ValueError, match="at random"):
        model_soup(rnd, mlp, cfg(), ingredients=2, rounds=2, progress=False)
    one4 = sparsekit.sparsify(mlp, dataclasses.replace(sparsekit.SparsifyConfig(pattern="nm", n=1, m=4)),
                              progress=False)
    with pytest.raises(ValueError, match="no sparser N:M"):
        model_soup(one4, mlp, cfg(), ingredients=2, rounds=2, progress=False)


def test_two_rounds_prune_the_soup_within_its_mask(mlp):
    result = sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.6), progress=False)
    s = model_soup(result, mlp, cfg(steps=3, eval_every=3), ingredients=2, rounds=2, prune_more=0.15,
                   progress=False)
    assert isinstance(s, SoupResult) and len(s.rounds) == 2
    assert s.rounds[1].sparsify_config.sparsity == pytest.approx(0.75)
    first = s.rounds[0].ingredients[0].history
    first_masks = first.masks(len(first) - 1)
    for name, mask in s.masks.items():
        assert not bool((mask & ~first_masks[name]).any()), name  # pruned weights stay pruned
        assert abs(1 - mask.float().mean().item() - 0.75) < 0.01
        weight = dict(s.model.named_modules())[name].weight.detach()
        assert bool((weight[~mask] == 0).all())
    # Round 2 starts from the round-1 soup pruned further: its before-recovery quality is that model's.
    pruned2 = sparsekit.sparsify(
        _soup_module(s, mlp), s.rounds[1].sparsify_config, progress=False)
    assert s.rounds[1].pruned_quality == pytest.approx(mlp.quality(pruned2.model))
    assert [r["round"] for r in s.rows()] == [1, 2]


def _soup_module(s: SoupResult, mlp):
    """The round-1 soup rebuilt from its ingredients by a plain average (independent of model_soup)."""
    import copy
    module = copy.deepcopy(mlp.module)
    recs = s.rounds[0].ingredients
    module.load_state_dict({k: sum(r.weights[k].double() for r in recs).div(len(recs)).float()
                            for k in recs[0].weights})
    return module.eval()
