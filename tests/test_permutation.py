"""Channel permutation: progress, stopping early, resuming; checked against a full run and plain loops."""
import json

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.permutation import permute_channels, search_permutation

NO_TIME_LIMIT = 1e9  # results then depend on the rounds only, never on this machine's speed


def chain(width: int = 16, depth: int = 4, seed: int = 0) -> nn.Sequential:
    """Linear/ReLU chain whose columns have uneven scales, so every layer has swaps to find."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Linear(8, width)]
    for _ in range(depth - 1):
        mods += [nn.ReLU(), nn.Linear(width, width)]
    model = nn.Sequential(*mods)
    with torch.no_grad():
        for mod in model:
            if isinstance(mod, nn.Linear):
                mod.weight.mul_(torch.rand(mod.weight.shape[1]) * 3)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return chain()


@pytest.fixture(scope="module")
def x():
    return torch.randn(32, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def full(model, x):
    return permute_channels(model, 2, 4, calibration=x, max_seconds_per_layer=NO_TIME_LIMIT, use_cache=False)


def original_coordinates_masks(result, model, n=2, m=4):
    """N:M masks of the permuted copy, mapped back to the original weights' rows and columns.

    A consumer's columns moved by its own perm, its rows by the perm of the layer it produces for.
    """
    out_perm = {}
    for row in result.rows:
        for producer in row["producers"].split(", "):
            out_perm[producer] = result.perms[row["layer"]]
    permuted = dict(result.model.named_modules())
    masks = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        w = permuted[name].weight.detach()
        mask = sparsekit.nm_mask(w, n, m)
        back = torch.empty_like(mask)
        rows = out_perm.get(name, torch.arange(w.shape[0]))
        cols = result.perms.get(name, torch.arange(w.shape[1]))
        # permuted[i, j] = original[rows[i], cols[j]]
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                back[rows[i], cols[j]] = mask[i, j]
        masks[name] = back
    return masks


def test_progress_rises_to_one(model, x):
    seen = []
    permute_channels(model, 2, 4, calibration=x, max_seconds_per_layer=NO_TIME_LIMIT, use_cache=False,
                     progress=lambda f, msg: seen.append((f, msg)))
    fractions = [f for f, _ in seen]
    assert fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(a <= b for a, b in zip(fractions, fractions[1:]))
    for layer in ("2", "4", "6"):  # every searched layer is named while it runs
        assert any(f": {layer}" in msg for _, msg in seen)


def test_full_run_permutes_every_hidden_layer(model, x, full):
    assert [r["layer"] for r in full.rows] == ["2", "4", "6"]
    assert full.layers_searched == 3 and not full.stopped and full.not_reached == []
    assert all(r["swaps"] > 0 for r in full.rows)
    with torch.no_grad():
        assert torch.allclose(full.model(x), model(x), atol=1e-5)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_stop_after_k_layers_keeps_exactly_those(model, x, full, k):
    finished = []

    def on_layer(row):
        finished.append(row["layer"])

    part = permute_channels(model, 2, 4, calibration=x, max_seconds_per_layer=NO_TIME_LIMIT, use_cache=False,
                            on_layer=on_layer, should_stop=lambda: len(finished) >= k)
    names = ["2", "4", "6"]
    assert part.stopped and part.layers_searched == k
    assert [r["layer"] for r in part.rows] == names[:k] == finished
    assert part.not_reached == names[k:]
    for name in names[:k]:
        assert torch.equal(part.perms[name], full.perms[name])
    assert set(part.perms) == set(names[:k])
    with torch.no_grad():
        assert torch.allclose(part.model(x), model(x), atol=1e-5)
    # The same weights are pruned in the finished layers as after the full run; every other layer
    # is pruned as if nothing had been permuted.
    part_masks = original_coordinates_masks(part, model)
    full_masks = original_coordinates_masks(full, model)
    originals = dict(model.named_modules())
    for name in names:
        if name in names[:k]:
            assert torch.equal(part_masks[name], full_masks[name])
        else:
            assert torch.equal(part_masks[name], sparsekit.nm_mask(originals[name].weight.detach(), 2, 4))
    # Layers that neither were searched nor produce for a searched layer keep their weights.
    touched = {p for r in part.rows for p in [r["layer"], *r["producers"].split(", ")]}
    permuted = dict(part.model.named_modules())
    for name in ("0", *names):
        if name not in touched:
            assert torch.equal(permuted[name].weight, originals[name].weight)


def test_stop_mid_search_leaves_that_layer_unpermuted(model, x, full):
    in_search = []

    def progress(fraction, message):  # note when layer "4" has finished its first round of swaps
        if ": 4, round 1" in message:
            in_search.append(message)

    part = permute_channels(model, 2, 4, calibration=x, max_seconds_per_layer=NO_TIME_LIMIT, use_cache=False,
                            progress=progress, should_stop=lambda: bool(in_search))
    assert in_search and part.stopped
    assert [r["layer"] for r in part.rows] == ["2"] and part.not_reached == ["4", "6"]
    assert torch.equal(part.perms["2"], full.perms["2"])
    assert torch.equal(dict(part.model.named_modules())["4"].weight, dict(model.named_modules())["4"].weight)


def test_resume_finishes_like_a_full_run(model, x, full):
    first = permute_channels(model, 2, 4, calibration=x, max_seconds_per_layer=NO_TIME_LIMIT, use_cache=False,
                             should_stop=lambda: True if len(done) >= 1 else False,
                             on_layer=(done := []).append)
    assert first.layers_searched == 1
    searched = []
    rest = permute_channels(model, 2, 4, calibration=x, max_seconds_per_layer=NO_TIME_LIMIT, use_cache=False,
                            resume=done, on_layer=searched.append)
    assert [r["layer"] for r in searched] == ["4", "6"]  # the resumed layer was not searched again
    assert not rest.stopped and rest.layers_searched == 3
    for name in ("2", "4", "6"):
        assert torch.equal(rest.perms[name], full.perms[name])
    # Resuming with a stop at once applies the stored layers and nothing else.
    again = permute_channels(model, 2, 4, calibration=x, resume=done, should_stop=lambda: True, use_cache=False)
    assert again.layers_searched == 1 and again.not_reached == ["4", "6"]
    assert torch.equal(again.perms["2"], full.perms["2"])


def test_resume_that_does_not_fit_is_refused(model, x, full):
    row = dict(full.rows[0])
    with pytest.raises(ValueError, match="does not fit"):
        permute_channels(model, 2, 4, calibration=x, resume=[{**row, "perm": row["perm"][:-1]}])
    with pytest.raises(ValueError, match="does not fit"):
        permute_channels(model, 2, 4, calibration=x, resume=[{**row, "producers": "nope"}])
    with pytest.raises(ValueError, match="resume"):
        permute_channels(model, 2, 4, calibration=x, resume=[{"layer": "2"}])
    with pytest.raises(ValueError, match="list of layer rows"):
        permute_channels(model, 2, 4, calibration=x, resume={"2": row})


def test_search_progress_and_stop():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(16, 64, generator=gen) * torch.rand(64, generator=gen)
    seen = []
    r = search_permutation(w, 2, 4, max_seconds=NO_TIME_LIMIT, progress=lambda f, msg: seen.append(f))
    assert seen[-1] == 1.0 and all(a <= b for a, b in zip(seen, seen[1:])) and not r.stopped
    assert r.rounds <= len(seen) <= r.rounds + 1  # after every round with swaps, then at the end
    stopped = search_permutation(w, 2, 4, should_stop=lambda: True)
    assert stopped.stopped and stopped.rounds == 0 and torch.equal(stopped.perm, torch.arange(64))
    assert stopped.kept_after == stopped.kept_before


def test_the_same_call_goes_on_from_the_layers_it_kept_on_disk(model, x, full, tmp_cache):
    from sparsekit.cache import get_cache
    from sparsekit.permutation.channels import _LayerRows

    searched: list[str] = []

    def run(**kw):
        searched.clear()
        result = permute_channels(model, 2, 4, calibration=x, max_seconds_per_layer=NO_TIME_LIMIT,
                                  on_layer=lambda row: searched.append(row["layer"]), **kw)
        return result, list(searched)

    first, _ = run(should_stop=lambda: len(searched) >= 1)
    searched = list(searched)
    assert first.stopped and searched == ["2"] and first.stored_layers == []
    rest, searched = run()  # the same call: no rows handed over
    assert searched == ["4", "6"] and rest.stored_layers == ["2"] and not rest.stopped
    for name in ("2", "4", "6"):
        assert torch.equal(rest.perms[name], full.perms[name])
    assert [r["kept_after"] for r in rest.rows] == [r["kept_after"] for r in full.rows]
    again, searched = run()
    assert searched == [] and again.stored_layers == ["2", "4", "6"]
    with torch.no_grad():
        assert torch.allclose(again.model(x), model(x), atol=1e-5)
    # other inputs never take them; a damaged or misfit row is searched again; use_cache=False ignores them
    assert run(max_rounds=7)[0].stored_layers == []
    other = chain(seed=3)
    assert permute_channels(other, 2, 4, calibration=x, max_seconds_per_layer=NO_TIME_LIMIT).stored_layers == []
    rows = _LayerRows(model, 2, 4, 100, NO_TIME_LIMIT)
    get_cache().set(rows._key("4"), "{not json")
    get_cache().set(rows._key("6"), json.dumps({**full.rows[2], "perm": [0, 0, 1]}))
    fixed, searched = run()
    assert fixed.stored_layers == ["2"] and searched == ["4", "6"]
    assert run(use_cache=False)[1] == ["2", "4", "6"]
