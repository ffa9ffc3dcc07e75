"""Stop and Continue on the per-head pattern search (#23 item 1): each measured layer is kept on disk as it
finishes, the same call run again measures only the rest, and the result equals an uninterrupted search's
bit for bit. The library (a stop hook, an exception in the unit save, damaged entries), the Attention page
(Stop, a reload, Continue) and Ctrl-C in a separate process."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import sparsekit
from devtools import ROOT
from devtools.apptest import page_app
from sparsekit.attention import calibration_captures, materialize
from sparsekit.attention import search as search_mod
from sparsekit.attention import search_units
from sparsekit.attention.capture import AttentionCapture
from sparsekit.attention.search import SearchConfig, cached_search, candidate_specs, evaluate_candidates, search_heads
from sparsekit.cache import get_cache

N_LAYERS, N_HEADS = 5, 3


def synthetic_captures(seed: int = 0, lengths=(12, 20, 12)) -> list[AttentionCapture]:
    """Captures of a made-up model with 5 layers of 3 heads (inputs of two lengths)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        scores = torch.randn(N_LAYERS, N_HEADS, n, n, generator=gen) * 2
        qkv = [torch.randn(N_LAYERS, N_HEADS, n, 8, generator=gen) for _ in range(3)]
        out.append(AttentionCapture(scores, scores.softmax(-1), *qkv, [f"t{i}" for i in range(n)], False,
                                    [f"layer{i}" for i in range(N_LAYERS)], "synthetic"))
    return out


def same(a, b) -> bool:
    """Two complete searches are the same, bit for bit."""
    return (a.complete and b.complete and a.candidates == b.candidates and torch.equal(a.density, b.density)
            and torch.equal(a.recall, b.recall) and torch.equal(a.choice, b.choice) and a.uniform == b.uniform
            and a.rows() == b.rows())


@pytest.fixture
def saved(monkeypatch) -> list[int]:
    """The layers stored (= measured) while the test runs."""
    calls: list[int] = []
    real = search_units.save_unit

    def counting(key, layer, unit):
        calls.append(layer)
        real(key, layer, unit)

    monkeypatch.setattr(search_units, "save_unit", counting)
    return calls


@pytest.fixture
def one_layer_blocks(monkeypatch):
    """Every block one layer (a stop can come after any layer)."""
    monkeypatch.setattr(search_mod, "BLOCK_SECONDS", 0.0)


@pytest.mark.parametrize("allocation", ["head", "global"])
def test_a_stopped_search_continues_with_only_the_missing_layers(tmp_cache, saved, allocation):
    caps = synthetic_captures()
    config = SearchConfig(budget=0.4, allocation=allocation)
    whole = search_heads(caps, config, progress=False, use_cache=False)
    assert saved == [] and whole.complete and whole.not_reached == ()
    part = search_heads(caps, config, progress=False, stop=lambda: len(saved) >= 1)
    assert not part.complete and saved == [0] and part.not_reached == (1, 2, 3, 4) and part.layers_done == 1
    assert torch.equal(part.density[:, 0], whole.density[:, 0]) and torch.equal(part.recall[:, 0], whole.recall[:, 0])
    assert part.density[:, 1:].isnan().all() and (part.choice[1:] == -1).all()
    # The finished layer shows each head's best candidate within the budget (a plain loop over candidates).
    for head in range(N_HEADS):
        fits = [c for c in range(len(part.candidates)) if whole.density[c, 0, head] <= 0.4]
        best = max(fits, key=lambda c: (float(whole.recall[c, 0, head]), -float(whole.density[c, 0, head]), -c))
        assert int(part.choice[0, head]) == best
    rows = part.rows()
    assert all(r["pattern"] is None and r["density"] is None and r["recall"] is None for r in rows if r["layer"] > 0)
    assert all(r["pattern"] is not None for r in rows if r["layer"] == 0)
    assert all(spec is None for row in part.plan.heads[1:] for spec in row)
    with pytest.raises(ValueError, match="stopped after 1 of 5 layers"):
        part.summary()
    with pytest.raises(ValueError, match="run the same call again"):
        part.uniform_spec  # noqa: B018
    # Nothing is measured to show a stopped search; a finished one is not mistaken for it.
    shown = cached_search(caps, config, partial=True)
    assert shown is not None and not shown.complete and shown.rows() == rows and saved == [0]
    assert cached_search(caps, config) is None
    done = search_heads(caps, config, progress=False)
    assert saved == [0, 1, 2, 3, 4]  # the first layer was not measured again
    assert same(done, whole)
    again = cached_search(caps, config)
    assert again is not None and same(again, whole) and len(saved) == N_LAYERS


def test_an_exception_in_the_unit_save_keeps_the_finished_layers(tmp_cache, tmp_path, saved, monkeypatch,
                                                                 one_layer_blocks):
    caps = synthetic_captures(1)
    counting = search_units.save_unit

    def interrupted(key, layer, unit):  # Ctrl-C while the third layer is being written
        if len(saved) == 2:
            raise KeyboardInterrupt
        counting(key, layer, unit)

    monkeypatch.setattr(search_units, "save_unit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search_heads(caps, SearchConfig(), progress=False)
    assert saved == [0, 1]
    monkeypatch.setattr(search_units, "save_unit", counting)
    done = search_heads(caps, SearchConfig(), progress=False)
    assert saved == [0, 1, 2, 3, 4]  # three layers measured: the rest
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "uninterrupted"))
    fresh = search_heads(caps, SearchConfig(), progress=False)
    assert same(done, fresh) and saved == [0, 1, 2, 3, 4] + list(range(N_LAYERS))


def test_damaged_units_are_measured_again(tmp_cache, saved):
    caps = synthetic_captures(2)
    whole = search_heads(caps, SearchConfig(), progress=False)
    assert saved == list(range(N_LAYERS))
    specs = candidate_specs(SearchConfig().families, 20)
    key = search_units.search_key(caps, specs)
    good = json.loads(get_cache()[search_units.unit_key(key, 1)])
    cache = get_cache()
    cache[search_units.unit_key(key, 1)] = "{not json"
    cache[search_units.unit_key(key, 2)] = json.dumps({**good, "density": good["density"][:-1]})  # a candidate short
    cache[search_units.unit_key(key, 3)] = json.dumps({**good, "recall": [[1.5] * N_HEADS] * len(specs)})
    cache[search_units.unit_key(key, 4)] = b"\x00\xff binary"
    again = search_heads(caps, SearchConfig(), progress=False)
    assert saved == list(range(N_LAYERS)) + [1, 2, 3, 4]
    assert same(again, whole)


def test_a_recall_a_rounding_step_above_one_reads_back(tmp_cache, saved):
    caps = synthetic_captures(7)  # a full-coverage candidate sums its float32 recall to just over 1 here
    whole = search_heads(caps, SearchConfig(), progress=False)
    assert 1 < whole.recall.max().item() <= 1 + search_units.SLACK
    found = cached_search(caps, SearchConfig())
    assert found is not None and same(found, whole) and saved == list(range(N_LAYERS))


def test_numbers_do_not_depend_on_the_blocks_and_match_a_plain_loop(tmp_cache, monkeypatch):
    caps = synthetic_captures(3)
    config = SearchConfig(budget=0.5)
    monkeypatch.setattr(search_mod, "BLOCK_SECONDS", 0.0)
    one_by_one = search_heads(caps, config, progress=False, use_cache=False)
    monkeypatch.setattr(search_mod, "BLOCK_SECONDS", 1e9)  # blocks of 1, 2 and 2 layers
    blocks = []
    real = search_units.measure_layers
    monkeypatch.setattr(search_units, "measure_layers", lambda g, s, layers, *a: blocks.append(list(layers))
                        or real(g, s, layers, *a))
    doubling = search_heads(caps, config, progress=False, use_cache=False)
    assert blocks == [[0], [1, 2], [3, 4]]
    dens, rec = evaluate_candidates(caps, one_by_one.candidates)  # every layer in one pass
    assert same(one_by_one, doubling)
    assert torch.equal(dens, one_by_one.density) and torch.equal(rec, one_by_one.recall)
    # A plain loop over inputs, layers and heads for a few candidates (no search or metrics code).
    for c in (0, len(one_by_one.candidates) // 2, len(one_by_one.candidates) - 1):
        spec = one_by_one.candidates[c]
        for layer in range(N_LAYERS):
            for head in range(N_HEADS):
                d = r = 0.0
                for cap in caps:
                    n = cap.seq_len
                    mask = materialize(spec.build(cap.context(layer)), n, n, head=head)
                    d += int(mask.sum()) / (n * n)
                    r += float((cap.probs[layer, head].double() * mask).sum(-1).mean())
                assert math.isclose(one_by_one.density[c, layer, head], d / len(caps), rel_tol=1e-12)
                assert math.isclose(one_by_one.recall[c, layer, head], r / len(caps), rel_tol=1e-5)


def test_another_budget_measures_nothing_again_and_bad_input_is_refused(tmp_cache, saved):
    caps = synthetic_captures(4)
    search_heads(caps, SearchConfig(budget=0.3), progress=False)
    assert saved == list(range(N_LAYERS))
    other = search_heads(caps, SearchConfig(budget=0.6, allocation="global"), progress=False)
    assert other.complete and saved == list(range(N_LAYERS))
    assert same(other, search_heads(caps, SearchConfig(budget=0.6, allocation="global"), progress=False,
                                    use_cache=False))
    with pytest.raises(ValueError, match="budget must be above 0"):
        cached_search(caps, SearchConfig(budget=0), partial=True)
    with pytest.raises(ValueError, match="below what the sparsest candidate needs"):
        search_heads(caps, SearchConfig(budget=0.001), progress=False)
    with pytest.raises(ValueError, match="at least one calibration capture"):
        search_heads([], SearchConfig(), progress=False)
    with pytest.raises(TypeError, match="progress must be"):
        search_heads(caps, SearchConfig(), progress="yes")  # type: ignore[arg-type]
    # A family whose grid changes the candidates is another search: nothing stored for it yet.
    assert cached_search(caps, SearchConfig(families=("sliding_window",)), partial=True) is None


def test_block_sizes():
    assert search_units.block_size(None, 5.0, 6) == 1
    assert search_units.block_size((1, 1.0), 5.0, 6) == 2
    assert search_units.block_size((2, 4.9), 5.0, 3) == 3  # doubled, then cut to what remains
    assert search_units.block_size((4, 7.0), 5.0, 9) == 4
    assert search_units.block_size((4, 10.5), 5.0, 9) == 2
    assert search_units.block_size((1, 30.0), 5.0, 9) == 1


def test_progress_false_and_a_progress_callback(tmp_cache, capsys, one_layer_blocks):
    caps = synthetic_captures(5)
    quiet = search_heads(caps, SearchConfig(), progress=False)
    assert quiet.complete and capsys.readouterr() == ("", "")
    seen: list[tuple[float, str]] = []
    search_heads(caps, SearchConfig(), progress=lambda f, m: seen.append((f, m)), use_cache=False)
    assert seen == [(i / N_LAYERS, f"layer {i} ({i + 1}/{N_LAYERS})") for i in range(N_LAYERS)] + [(1.0, "done")]
    seen.clear()
    search_heads(caps, SearchConfig(), progress=lambda f, m: seen.append((f, m)))  # all stored: nothing to measure
    assert seen == [(1.0, "done")]


# ---------------------------------------------------------------------------------------------------------
# The Attention page


def test_attention_page_stop_then_continue_measures_only_the_rest(tmp_cache, tmp_path, saved, monkeypatch):
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    counting = search_units.save_unit

    def stopped(key, layer, unit):  # a Stop press reruns the page: the run ends at its next call
        counting(key, layer, unit)
        if len(saved) == 1:
            raise StopException()

    at = page_app("attention", "digits:vit", 300, att_calib=8)
    at.run()
    assert not at.exception
    monkeypatch.setattr(search_units, "save_unit", stopped)
    at.button(key="att_search").click().run()
    assert not at.exception and saved == [0]
    assert at.button(key="att_search_stop").proto.label == "Stop"  # drawn while the search ran
    monkeypatch.setattr(search_units, "save_unit", counting)
    at.button(key="att_search_stop").click().run()
    assert not at.exception and not at.error
    assert "Stopped after 1 of 2 layers" in " ".join(w.value for w in at.warning) and saved == [0]
    table = at.dataframe[-1].value
    assert len(table) == 8 and table["density"].iloc[:4].notna().all() and table["density"].iloc[4:].isna().all()
    assert table["pattern"].iloc[4:].isna().all() and table["pattern"].iloc[:4].notna().all()
    assert any(b.label == "Continue" for b in at.button)
    # A reload (a new session) shows the same stopped state, measuring nothing.
    again = page_app("attention", "digits:vit", 300, att_calib=8)
    again.run()
    assert not again.exception and not again.error
    assert "Stopped after 1 of 2 layers" in " ".join(w.value for w in again.warning) and saved == [0]
    assert again.button(key="att_search_continue").proto.label == "Continue"
    again.button(key="att_search_continue").click().run()
    assert not again.exception and not again.error and not again.warning
    assert saved == [0, 1]  # the first layer was not measured again
    assert not any(b.label in ("Continue", "Stop") for b in again.button)
    shown = again.dataframe[-1].value
    # The page's table equals an uninterrupted search's in an empty cache.
    vit = sparsekit.load_model("digits:vit")
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "uninterrupted"))
    whole = search_heads(calibration_captures(vit, 8), SearchConfig(), progress=False)
    assert shown.to_dict("records") == whole.rows()
    assert again.dataframe[-2].value["pattern"].iloc[2] == whole.uniform_spec.label
    # The first session's Continue now finds every layer on disk.
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_cache))
    at.button(key="att_search_continue").click().run()
    assert not at.exception and not at.warning and at.dataframe[-1].value.to_dict("records") == whole.rows()
    assert saved == [0, 1] + [0, 1]  # the uninterrupted search in its own cache, nothing more


def test_attention_page_search_stopped_by_the_library_offers_continue(tmp_cache, saved, monkeypatch):
    real = search_mod.search_heads

    def stopping(captures, config, **kwargs):  # what a stop hook after the first layer does
        kwargs.setdefault("stop", lambda: len(saved) >= 1)
        return real(captures, config, **kwargs)

    monkeypatch.setattr(search_mod, "search_heads", stopping)
    at = page_app("attention", "digits:vit", 300, att_calib=4)
    at.run()
    at.button(key="att_search").click().run()
    assert not at.exception and not at.error and saved == [0]
    assert "Stopped after 1 of 2 layers" in " ".join(w.value for w in at.warning)
    assert [b.key for b in at.button if b.key and b.key.startswith("att_search")] == ["att_search_continue"]
    monkeypatch.setattr(search_mod, "search_heads", real)
    at.button(key="att_search_continue").click().run()
    assert not at.exception and not at.error and not at.warning and saved == [0, 1]
    vit = sparsekit.load_model("digits:vit")
    whole = real(calibration_captures(vit, 4), SearchConfig(), progress=False, use_cache=False)
    assert at.dataframe[-1].value.to_dict("records") == whole.rows()


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C in a separate process

JOB = """
import json, os, sys, time
import torch
from sparsekit.attention import search as search_mod, search_units
from sparsekit.attention.search import SearchConfig, search_heads
sys.path.insert(0, os.path.join({root!r}, "tests"))
from test_headsearch_continue import synthetic_captures
search_mod.BLOCK_SECONDS = 0.0  # one layer per unit
DELAY = float(os.environ.get("PAUSE_AFTER_UNIT", "0"))
real = search_units.save_unit
computed = []
def save(key, layer, unit):
    real(key, layer, unit)
    computed.append(layer)
    print("UNIT", len(computed), flush=True)
    time.sleep(DELAY)
search_units.save_unit = save
res = search_heads(synthetic_captures(7), SearchConfig(budget=0.35, allocation="global"), progress=False)
print("COMPUTED", len(computed), flush=True)
print("RESULT", json.dumps([res.density.tolist(), res.recall.tolist(), res.choice.tolist(), res.uniform, res.rows()]))
"""


def _command() -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(JOB).format(root=str(ROOT))]


def _env(cache, pause: float = 0.0) -> dict[str, str]:
    return {**os.environ, "SPARSEKIT_CACHE_DIR": str(cache), "PAUSE_AFTER_UNIT": str(pause),
            "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


def _run(cache) -> tuple[int, object]:
    out = subprocess.run(_command(), env=_env(cache), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("COMPUTED", "RESULT")))
    return int(lines["COMPUTED"]), json.loads(lines["RESULT"])


@pytest.mark.slow
def test_sigint_keeps_the_finished_layers_and_the_rerun_measures_only_the_rest(tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.Popen(_command(), env=_env(cache, pause=30.0), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the first layer is on disk (or the process ends)
        assert first.startswith("UNIT 1"), (first, proc.stderr.read() if proc.stderr else "")
        proc.send_signal(signal.SIGINT)  # Ctrl-C while it pauses after that layer
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-3000:]
    assert "RESULT" not in out
    done_before = 1 + sum(line.startswith("UNIT") for line in out.splitlines())
    assert done_before < N_LAYERS
    computed, resumed = _run(cache)
    assert computed == N_LAYERS - done_before  # no finished layer was measured again
    again, _ = _run(cache)
    assert again == 0
    fresh_count, fresh = _run(tmp_path / "fresh")
    assert fresh_count == N_LAYERS and resumed == fresh
