"""Recovery fine-tuning (sparsekit.recovery): the gap formula by hand, the shipped corpus, fixed masks
that never move, STE/SR-STE masks that stay N:M at every step with SAD / flip rate / oscillation
checked against the captured masks, untouched inputs, the error messages, the run store and the
export, text models (tiny Hugging Face checkpoints), the mode comparison and the figures."""
import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load as load_tensors
from torch.nn.utils import parametrize

import sparsekit
from sparsekit import viz
from sparsekit.data import recovery_corpus, recovery_corpus_topics
from sparsekit.models.sentences import SENTENCES
from sparsekit.models.text_metrics import pad, sentence_embeddings, tokenize
from sparsekit.recovery import (
    RecoveryConfig, compare_modes, default_recovery_config, delete_recovery, gap_recovered, layer_levels,
    list_recoveries, load_recovery, make_objective, pooled_embeddings, recover, recover_and_save,
    recovered_model, recovered_safetensors,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread per test


@pytest.fixture(scope="module")
def mlp():
    return sparsekit.load_model("digits:mlp")


@pytest.fixture(scope="module")
def mlp24(mlp):
    return sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="nm", n=2, m=4, method="magnitude"))


def digits_cfg(**kw) -> RecoveryConfig:
    return default_recovery_config("image-classifier", **kw)


def nm_ok(result, name: str, mask: torch.Tensor, n: int, m: int = 4) -> bool:
    """Every group of M consecutive entries along the grouped axis keeps exactly N (counted directly)."""
    groups = result.views[name].matrix(mask).reshape(-1, m).sum(-1)
    return bool((groups == n).all())


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- gap recovered


@pytest.mark.parametrize("dense,before,after,higher,expected", [
    (97.0, 94.0, 96.0, True, 2 / 3),          # accuracy: two of three points back
    (97.0, 94.0, 97.0, True, 1.0),
    (97.0, 94.0, 98.5, True, 1.5),            # better than dense
    (97.0, 94.0, 93.0, True, -1 / 3),         # worse than before
    (1.0, 0.63, 0.8150, True, 0.5),           # cosine fidelity
    (10.0, 50.0, 30.0, False, 0.5),           # perplexity, lower is better
    (10.0, 50.0, 10.0, False, 1.0),
    (10.0, 50.0, 60.0, False, -0.25),
    (97.0, 97.0, 98.0, True, None),           # pruning cost nothing: no gap to recover
    (97.0, 97.0 + 1e-12, 97.0, True, None),
    (97.0, 98.0, 99.0, True, None),           # pruned better than dense
    (10.0, 9.0, 8.0, False, None),            # lower is better and the pruned model is better
    (97.0, float("nan"), 96.0, True, None),
])
def test_gap_recovered_by_hand(dense, before, after, higher, expected):
    got = gap_recovered(dense, before, after, higher_is_better=higher)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


# ----------------------------------------------------------------------------- corpus


def test_corpus_is_larger_than_and_disjoint_from_the_evaluation_sentences():
    corpus = recovery_corpus()
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    assert len(corpus) >= 3 * len(SENTENCES)
    assert len({norm(s) for s in corpus}) == len(corpus)
    assert not {norm(s) for s in corpus} & {norm(s) for s in SENTENCES}
    assert all(s == s.strip() and s and s.isascii() and not s.startswith("#") for s in corpus)
    topics = recovery_corpus_topics()
    assert len(topics) == len(corpus) and len(set(topics)) >= 20 and all(topics)
    lengths = [len(s.split()) for s in corpus]
    assert min(lengths) >= 4 and sum(n > 20 for n in lengths) >= 20


# ----------------------------------------------------------------------------- digits


def test_fixed_mode_improves_digits_and_never_moves_the_mask(mlp, mlp24):
    seen = []
    rec = recover(mlp24, mlp, digits_cfg(mode="fixed", steps=120, eval_every=40),
                  progress=lambda p: seen.append({k: v.clone() for k, v in p.masks.items()}))
    assert rec.status == "complete" and rec.steps_done == 120 and [iv.step for iv in rec.intervals] == [0, 40, 80, 120]
    assert len(seen) == 1 + 120 + 3  # start, every step, every evaluation
    assert all(set(m) == set(mlp24.masks) and all(torch.equal(m[k], mlp24.masks[k]) for k in m) for m in seen)
    # Independent scores: the pruned model as given, the dense model, and the exported weights.
    before = mlp.quality(mlp24.model)["accuracy"]
    model = recovered_model(rec, mlp)
    after = mlp.quality(model)["accuracy"]
    dense = mlp.quality()["accuracy"]
    assert rec.before == before and rec.after == after and rec.dense == dense
    assert after > before
    assert rec.gap_recovered == pytest.approx((after - before) / (dense - before))
    layers = dict(model.named_modules())
    for name, mask in mlp24.masks.items():
        assert not layers[name].weight[~mask].any()  # pruned weights stayed at zero
    assert rec.step_flip_rate == [0.0] * 120 and not rec.sad_series(from_start=True).any()
    assert rec.run_flips.flips == {k: 0 for k in mlp24.masks}


@pytest.mark.parametrize("mode", ["ste", "srste"])
def test_moving_masks_stay_nm_and_their_metrics_match_the_masks(mode, mlp, mlp24):
    seen = []

    def grab(p):
        if p.event == "step":
            seen.append({k: v.clone() for k, v in p.masks.items()})

    cfg = digits_cfg(mode=mode, steps=30, eval_every=10, lambda_w=2e-3)
    rec = recover(mlp24, mlp, cfg, progress=grab)
    assert rec.status == "complete" and len(seen) == 30
    for masks in seen:
        assert all(nm_ok(mlp24, name, mask, 2) for name, mask in masks.items())
    masks = [dict(mlp24.masks)] + seen
    names = list(mlp24.masks)
    total = sum(mlp24.masks[k].numel() for k in names)
    for t in range(1, 31):
        changed = sum(int((masks[t][k] != masks[t - 1][k]).sum()) for k in names)
        assert rec.step_flip_rate[t - 1] == pytest.approx(changed / total)
    assert sum(rec.step_flip_rate) > 0  # the dense shadow makes pruned weights compete from step 1
    for iv, (a, b) in zip(rec.intervals[1:], [(0, 10), (10, 20), (20, 30)]):
        for k in names:
            assert iv.sad[k] == sparsekit.sad(masks[a][k], masks[b][k])
            assert iv.sad_from_start[k] == sparsekit.sad(mlp24.masks[k], masks[b][k])
        # Oscillation of the 10x128 head, entry by entry in plain Python.
        seq = [masks[t]["head"].flatten().tolist() for t in range(a, b + 1)]
        osc = sum(sum(x != y for x, y in zip(col, col[1:])) >= 2 for col in zip(*seq))
        assert iv.flips.oscillating["head"] == osc
        assert iv.flips.flips["head"] == sum(int((masks[t]["head"] != masks[t - 1]["head"]).sum())
                                             for t in range(a + 1, b + 1))
    final = {name: rec.history.mask(name, -1) for name in names}
    assert all(torch.equal(final[k], seen[-1][k]) for k in names)
    for name in names:
        weight = rec.weights[f"{name}.weight"]
        assert not weight[~final[name]].any()
        assert bool((mlp24.views[name].matrix(weight != 0).reshape(-1, 4).sum(-1) <= 2).all())


@pytest.mark.parametrize("shadow", ["dense", "pruned"])
def test_srste_adds_its_decay_to_the_pruned_shadow_weights(shadow, mlp, mlp24):
    # One plain SGD step from the same start: STE and SR-STE see the same batch and gradient, so
    # their shadow weights differ by exactly lr * λ_w * (1 − E) ⊙ W0.
    lr, lam = 0.5, 0.1
    shadows = {}
    for mode in ("ste", "srste"):
        grab = {}

        def take(p, grab=grab):
            if p.event == "step" and p.step == 1:
                layers = dict(p.model.named_modules())
                grab.update({k: layers[k].parametrizations.weight.original.detach().clone() for k in mlp24.masks})

        recover(mlp24, mlp, digits_cfg(mode=mode, steps=1, eval_every=1, optimizer="sgd", momentum=0.0, lr=lr,
                                       lambda_w=lam, schedule="constant", train="sparse", shadow=shadow),
                progress=take)
        shadows[mode] = grab
    dense_layers = dict(mlp.module.named_modules())
    for name, mask in mlp24.masks.items():
        w0 = dense_layers[name].weight.detach() if shadow == "dense" else torch.zeros(mask.shape)
        expected = lr * lam * torch.where(mask, torch.zeros(()), w0)
        assert torch.allclose(shadows["ste"][name] - shadows["srste"][name], expected, atol=1e-6)


def test_inputs_are_not_mutated(mlp, mlp24):
    dense_before, result_before = state(mlp.module), state(mlp24.model)
    masks_before = {k: v.clone() for k, v in mlp24.masks.items()}
    grads_before = [p.requires_grad for p in mlp.module.parameters()]
    recover(mlp24, mlp, digits_cfg(mode="srste", steps=5, eval_every=5, shadow="dense"))
    recover(mlp24, mlp, digits_cfg(mode="fixed", steps=5, eval_every=5, train="sparse"))
    for before, module in ((dense_before, mlp.module), (result_before, mlp24.model)):
        after = module.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
        assert not any(parametrize.is_parametrized(m) for m in module.modules())
    assert all(torch.equal(mlp24.masks[k], masks_before[k]) for k in masks_before)
    assert [p.requires_grad for p in mlp.module.parameters()] == grads_before


@pytest.mark.parametrize("kw,message", [
    (dict(steps=0), "steps must be between 1"),
    (dict(steps=-5), "steps must be between 1"),
    (dict(mode="magic"), "mode must be one of fixed, ste, srste"),
    (dict(lr=0.0), "learning rate must be > 0"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(batch_size=5000), "batch size must be between 1 and 1024"),
    (dict(batch_size=1100), "batch size must be between 1 and 1024"),
    (dict(steps=10, eval_every=20), r"eval_every must be between 1 and steps \(10\)"),
    (dict(steps=1000, eval_every=1), "over the limit of 200"),
    (dict(lambda_w=-1e-4), "λ_w"),
    (dict(loss="cosine"), "loss 'cosine' does not apply to a model of kind 'image-classifier'"),
    (dict(loss="psnr"), "loss must be one of"),
    (dict(shadow="random"), "shadow must be one of"),
    (dict(steps=2.5), "steps must be an integer"),
])
def test_bad_settings_get_clear_messages(kw, message, mlp, mlp24):
    with pytest.raises(ValueError, match=message):
        recover(mlp24, mlp, digits_cfg(**{**dict(steps=20, eval_every=10), **kw}))


def test_bad_inputs_get_clear_messages(mlp, mlp24):
    unstructured = sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.5))
    for mode in ("ste", "srste"):
        with pytest.raises(ValueError, match=f"mode '{mode}' recomputes an N:M mask.*use mode='fixed'"):
            recover(unstructured, mlp, digits_cfg(mode=mode, steps=5, eval_every=5))
    assert recover(unstructured, mlp, digits_cfg(mode="fixed", steps=2, eval_every=2)).status == "complete"
    dense = sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="dense"))
    with pytest.raises(ValueError, match="nothing to recover"):
        recover(dense, mlp, digits_cfg(steps=5, eval_every=5))
    cnn = sparsekit.load_model("digits:cnn")
    with pytest.raises(ValueError, match="does not belong to digits CNN"):
        recover(mlp24, cnn, digits_cfg(steps=5, eval_every=5))
    with pytest.raises(ValueError, match="a corpus is for text models"):
        recover(mlp24, mlp, digits_cfg(steps=5, eval_every=5), corpus=["A sentence."])
    with pytest.raises(ValueError, match="mode must be one of"):
        compare_modes(mlp24, mlp, digits_cfg(steps=5, eval_every=5), modes=("fixed", "sgd"))


def test_layer_levels_read_each_layers_n(mlp24):
    assert layer_levels(mlp24) == {k: 2 for k in mlp24.masks}
    fc1 = mlp24.masks["fc1"]
    mixed = dataclasses.replace(mlp24, masks={**mlp24.masks, "fc1": sparsekit.nm_mask(torch.randn(fc1.shape), 1, 4)})
    assert layer_levels(mixed)["fc1"] == 1 and layer_levels(mixed)["fc2"] == 2
    broken = fc1.clone()
    broken[0, :4] = True
    with pytest.raises(ValueError, match="fc1 is not N:M with M=4"):
        layer_levels(dataclasses.replace(mlp24, masks={**mlp24.masks, "fc1": broken}))


def test_store_export_and_stop(tmp_cache, mlp, mlp24):
    calls = []
    rec = recover_and_save(mlp24, mlp, digits_cfg(mode="ste", steps=40, eval_every=10), name="mine",
                           stop=lambda: calls.append(1) or len(calls) > 12)
    assert rec.status == "stopped" and rec.steps_done == 12 and rec.intervals[-1].step == 12
    assert "stopped at step 12 of 40" in rec.message
    back = load_recovery(rec.run_id)
    for f in ("status", "steps_done", "step_loss", "step_flip_rate", "run_flips", "dense_quality",
              "config", "sparsify_config", "name", "history"):
        assert getattr(back, f) == getattr(rec, f), f
    # Step 0 has a NaN loss (NaN != NaN): compare the intervals through their JSON text.
    assert json.dumps([iv.to_json() for iv in back.intervals]) == json.dumps([iv.to_json() for iv in rec.intervals])
    assert back.weights.keys() == rec.weights.keys() and all(torch.equal(back.weights[k], rec.weights[k])
                                                             for k in rec.weights)
    assert [e["run_id"] for e in list_recoveries()] == [rec.run_id]
    assert list_recoveries()[0]["status"] == "stopped" and list_recoveries()[0]["name"] == "mine"
    # The export loads into the dense architecture and scores what the record says.
    module = sparsekit.load_model("digits:mlp").module
    module.load_state_dict(load_tensors(recovered_safetensors(back)), strict=True)
    assert mlp.quality(module)["accuracy"] == back.after
    json.dumps(back.to_dict(), allow_nan=False)
    delete_recovery(rec.run_id)
    assert list_recoveries() == []
    with pytest.raises(KeyError):
        load_recovery(rec.run_id)


def test_compare_modes_on_the_same_budget(mlp, mlp24):
    cfg = digits_cfg(steps=20, eval_every=10)
    comp = compare_modes(mlp24, mlp, cfg)
    assert list(comp.records) == ["fixed", "ste", "srste"]
    assert all(r.steps_done == 20 and r.config.steps == 20 for r in comp.records.values())
    rows = {row["mode"]: row for row in comp.rows()}
    assert rows["fixed mask"]["SAD from pruned mask"] == 0 and rows["fixed mask"]["mean flip rate"] == 0
    assert rows["STE"]["SAD from pruned mask"] > 0
    # Same seed, same batches: the comparison's fixed run is the standalone fixed run.
    alone = recover(mlp24, mlp, dataclasses.replace(cfg, mode="fixed"))
    assert alone.step_loss == comp.records["fixed"].step_loss


def test_figures_carry_the_records_numbers(mlp, mlp24):
    comp = compare_modes(mlp24, mlp, digits_cfg(steps=12, eval_every=4), modes=("fixed", "srste"))
    recs = list(comp.records.values())
    curves = viz.recovery_curves_figure(recs)
    assert list(curves.data[0].y) == [iv.quality["accuracy"] for iv in recs[0].intervals]
    assert list(curves.data[3].y) == recs[1].step_loss
    sad = viz.recovery_sad_figure(recs, fraction=False)
    assert list(sad.data[1].y) == recs[1].sad_series()[1:].tolist()
    flips = viz.flip_rate_figure(recs)
    assert list(flips.data[2].y) == pytest.approx(recs[1].step_flip_rate)
    heat = viz.recovery_sad_heatmap(recs[1])
    assert heat.data[0].z.shape == (len(mlp24.masks), 3)
    gap = viz.recovery_gap_figure(recs)
    assert len(gap.data[0].y) == 2


# ----------------------------------------------------------------------------- text models


def test_encoder_distillation_on_a_tiny_bert(model_root):
    loaded = sparsekit.load_model("hf:tiny-bert")
    ids = pad(tokenize(loaded.tokenizer, list(recovery_corpus()[:5])), 0)
    with torch.no_grad():
        pooled = pooled_embeddings(loaded.module, ids["input_ids"], ids["attention_mask"])
        reference = sentence_embeddings(loaded.module, ids["input_ids"], ids["attention_mask"])
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=-1), reference, atol=1e-6)
    objective = make_objective(loaded, "cosine+mse", recovery_corpus()[:40])
    with torch.no_grad():
        assert float(objective.loss(loaded.module, objective.batch(torch.arange(8)))) == pytest.approx(0, abs=1e-5)
    result = sparsekit.sparsify(loaded, sparsekit.SparsifyConfig(pattern="nm", n=2, m=4))
    rec = recover(result, loaded, default_recovery_config("encoder", mode="srste", steps=6, eval_every=3, lr=1e-3),
                  corpus=recovery_corpus()[:40])
    assert rec.status == "complete" and rec.loss_kind == "cosine" and rec.metric == "cosine"
    assert all(math.isfinite(v) for v in rec.step_loss)
    assert all(nm_ok(result, k, rec.history.mask(k, -1), 2) for k in result.masks)
    for corpus, message in (([], "the corpus is empty"), (["  ", ""], "the corpus is empty"),
                            ("one string", "list of sentences"), ([1, 2], "list of sentences")):
        with pytest.raises(ValueError, match=message):
            recover(result, loaded, default_recovery_config("encoder", steps=2, eval_every=2), corpus=corpus)
    with pytest.raises(ValueError, match="batch size must be between 1 and 3"):
        recover(result, loaded, default_recovery_config("encoder", steps=2, eval_every=2, batch_size=8),
                corpus=["One.", "Two words.", "Three more words."])
    shared = recover(result, loaded, default_recovery_config("encoder", steps=1, eval_every=1, batch_size=2),
                     corpus=[SENTENCES[0], "A sentence of our own."])
    assert any("also evaluation sentences" in n for n in shared.notes)


@pytest.mark.parametrize("spec", ["tiny-llama", "family/tiny-gpt2"])
def test_causal_lm_next_token_distillation(spec, model_root):
    loaded = sparsekit.load_model(f"hf:{spec}")
    objective = make_objective(loaded, "kl", recovery_corpus()[:20])
    with torch.no_grad():
        assert float(objective.loss(loaded.module, objective.batch(torch.arange(4)))) == pytest.approx(0, abs=1e-5)
    result = sparsekit.sparsify(loaded, sparsekit.SparsifyConfig(pattern="nm", n=2, m=4))
    seen = []
    rec = recover(result, loaded, default_recovery_config("causal-lm", mode="ste", steps=4, eval_every=2, lr=1e-3),
                  corpus=recovery_corpus()[:20], progress=lambda p: seen.append(dict(p.masks)))
    assert rec.status == "complete" and rec.loss_kind == "kl" and rec.metric == "perplexity"
    assert rec.higher_is_better is False and all(v >= 0 for v in rec.step_loss)
    # GPT-2's Conv1D stores [in, out]: the groups run along the stored rows, and stay N:M.
    assert all(nm_ok(result, k, m, 2) for masks in seen for k, m in masks.items())
    with pytest.raises(ValueError, match="loss 'labels' does not apply"):
        recover(result, loaded, default_recovery_config("causal-lm", steps=2, eval_every=2, loss="labels"))


class _BreaksAt:
    """A digits objective whose loss turns NaN at one step (the way a too-high learning rate ends)."""

    def __init__(self, inner, step: int) -> None:
        self.inner, self.at, self.calls = inner, step, 0
        self.n_examples, self.loss_kind = inner.n_examples, inner.loss_kind

    def batch(self, idx):
        return self.inner.batch(idx)

    def loss(self, model, batch):
        self.calls += 1
        value = self.inner.loss(model, batch)
        return value * float("nan") if self.calls == self.at else value


def test_a_diverging_loss_fails_with_a_message(tmp_cache, mlp, mlp24):
    objective = _BreaksAt(make_objective(mlp, "labels"), 4)
    rec = recover_and_save(mlp24, mlp, digits_cfg(mode="ste", steps=10, eval_every=5), objective=objective)
    assert rec.status == "failed" and "the training loss became nan at step 4" in rec.message
    assert rec.steps_done == 3 and rec.weights and load_recovery(rec.run_id).status == "failed"
    json.dumps(rec.to_dict(), allow_nan=False)
