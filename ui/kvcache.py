"""The Attention page's KV-cache view (causal LMs): the settings form, the cached computation, and the
sections it draws (metrics, K and V heatmaps, per-head error, generations, the sweep as a study).

The choices are bound to the URL like the rest of the page (``bind="query-params"``), except a pasted
text (too long for a URL). The computation (``kv_view_data``) draws nothing, so tests call it directly;
``kv_computed`` caches it per model, input ids and config. The quality-vs-bytes sweep is a KV study
(``sparsekit.study.kvcells``): its cells are cached one by one, so it runs on the study engine (local, or
Ray where ``SPARSEKIT_RAY_ADDRESS`` is set), and a stopped sweep continues where it stopped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import torch

from sparsekit import viz
from sparsekit.kvcache import (KVConfig, KVResult, causal_module, evaluate_kv, kept_count, run_kv)
from sparsekit.study import StudySpec, run_study, study_records, study_status
from sparsekit.study.aggregate import summarize
from sparsekit.study.kvcells import KV_METHODS, KVStudy, head_dim_of, kv_config_for, kv_text_count, kv_text_ids
from sparsekit.viz.kvview import kv_cache_heatmap, kv_groups_figure
from sparsekit.recipes.kvcache import kv_headline, kv_recipe
from ui.format import table_view
from ui.heavy import heavy_job
from ui.long_jobs import ResumedProgress, job_buttons, job_state
from ui.notebook import notebook_button, upload_digest

URL = "query-params"
METHOD_TITLES = {
    "mustafar-token": "Mustafar, per token (magnitude)", "mustafar-channel": "Mustafar, per channel (magnitude)",
    "mustafar-token-output": "Mustafar, per token (output-aware)",
    "mustafar-channel-output": "Mustafar, per channel (output-aware)",
    "streaming": "StreamingLLM (sinks + recent window)", "h2o": "H2O (heavy hitters + recent window)",
}
HELDOUT = "Held-out text"
YOURS = "Your text"
SWEEP_SPARSITIES = (30, 50, 70, 90)
SWEEP_DEFAULT_METHODS = ("mustafar-token", "mustafar-channel", "streaming", "h2o")
MAX_PROMPT = 32


@dataclass(frozen=True)
class KVSettings:
    """What the form chose (percentages as the user typed them)."""

    method: str
    k_pct: float
    v_pct: float
    window: int
    source: str
    text_index: int
    tokens: int
    text: str
    new_tokens: int


def positions(loaded) -> int | None:
    """The model's context length (positions), or None when its config does not say."""
    config = loaded.module.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def kv_form(loaded) -> KVSettings:
    """The KV view's controls (URL-bound)."""
    c1, c2, c3 = st.columns([2, 1, 1])
    method = c1.selectbox("Method", list(KV_METHODS), format_func=METHOD_TITLES.get, key="kv_method", bind=URL)
    k_pct = c2.number_input("K sparsity (%)", 0.0, 100.0, 50.0, step=10.0, key="kv_k", bind=URL,
                            help="share of each key vector's entries zeroed (Mustafar); 100 % is refused")
    v_pct = c3.number_input("V sparsity (%)", 0.0, 100.0, 50.0, step=10.0, key="kv_v", bind=URL,
                            help="share of each value vector's entries zeroed (Mustafar); 100 % is refused")
    c4, c5, c6 = st.columns([2, 1, 1])
    source = c4.radio("Text", [HELDOUT, YOURS], key="kv_source", horizontal=True, bind=URL)
    window = int(c5.number_input("Residual window (tokens)", 0, 100_000, 16, key="kv_window", bind=URL,
                                 help="the newest tokens kept dense (StreamingLLM and H2O: their recent window)"))
    new_tokens = int(c6.number_input("Tokens to generate", 0, 256, 16, key="kv_new", bind=URL))
    text, text_index, tokens = "", 0, 96
    if source == HELDOUT:
        t1, t2 = st.columns(2)
        text_index = int(t1.number_input("Held-out text number", 0, 10_000, 0, key="kv_text_index", bind=URL,
                                         help="the small LM's held-out pieces laid end to end, cut into texts of "
                                              "this many tokens (never seen in training)"))
        tokens = int(t2.number_input("Tokens per text", 2, 100_000, 96, step=16, key="kv_tokens", bind=URL))
    else:
        text = st.text_area("Your text", "The cache of a language model grows with every token it reads, "
                            "so long prompts cost memory.", key="kv_text", max_chars=200_000)
    return KVSettings(method, float(k_pct), float(v_pct), window, source, text_index, tokens, text, new_tokens)


def kv_inputs(loaded, s: KVSettings) -> tuple[torch.Tensor, KVConfig, int]:
    """``(token ids, config, prompt)`` of the settings; a ``ValueError`` saying what to change otherwise."""
    for name, pct in (("K", s.k_pct), ("V", s.v_pct)):
        if not 0 <= pct < 100:
            raise ValueError(f"{name} sparsity {pct:g} % would zero every entry of a vector (N = kept would be 0): "
                             "choose a sparsity below 100 %")
    limit = positions(loaded)
    if s.source == HELDOUT:
        if limit is not None and s.tokens > limit:
            raise ValueError(f"{s.tokens} tokens per text are past the model's context of {limit} positions: "
                             f"choose at most {limit}")
        ids = kv_text_ids(loaded, s.text_index, s.tokens)
    else:
        if not s.text.strip():
            raise ValueError("the text is empty: write a few words")
        ids = torch.tensor(loaded.tokenizer(s.text, verbose=False)["input_ids"], dtype=torch.long)
        if limit is not None and ids.numel() > limit:
            raise ValueError(f"your text is {ids.numel()} tokens, past the model's context of {limit} positions: "
                             "shorten it")
    n = int(ids.numel())
    if n < 3:
        raise ValueError(f"the text is {n} token{'s' if n != 1 else ''}: it needs at least 3 (a prefill and tokens "
                         "to score)")
    if limit is not None and n + s.new_tokens > limit:
        raise ValueError(f"the text ({n} tokens) and the {s.new_tokens} tokens to generate are past the model's "
                         f"context of {limit} positions: generate at most {max(0, limit - n)} or use a shorter text")
    if s.window >= n - 1:
        raise ValueError(f"the residual window ({s.window} tokens) is as long as the text's {n - 1} cached tokens, "
                         "so nothing would be pruned: choose a window shorter than the text")
    config = kv_config_for(s.method, s.k_pct / 100, s.v_pct / 100, s.window, n - 1, head_dim_of(causal_module(loaded)))
    return ids, config, max(1, min(MAX_PROMPT, n // 4))


@dataclass
class KVView:
    """What the KV view shows for one text and config."""

    result: KVResult
    keys: torch.Tensor
    """``[layers, kv heads, tokens, D]``: the pruned key cache at the end of the text (tokens ``0 .. n - 2``)."""
    values: torch.Tensor
    evicted: list[bool]
    prompt: int


def kv_view_data(loaded, ids: torch.Tensor, config: KVConfig, prompt: int, new_tokens: int) -> KVView:
    """``evaluate_kv`` (generation from the whole text) and the pruned cache of ``run_kv`` (the same run)."""
    result = evaluate_kv(loaded, ids, config, prompt=prompt, new_tokens=new_tokens, generation_prompt=int(ids.numel()))
    trace = run_kv(loaded, ids, config, prompt)
    layers: Any = trace.cache.layers
    keys = torch.stack([layer.keys[0].float() for layer in layers])
    values = torch.stack([layer.values[0].float() for layer in layers])
    evicted = [bool(e) for e in trace.pruner.evicted[: keys.shape[2]].tolist()]
    evicted += [False] * (keys.shape[2] - len(evicted))
    return KVView(result, keys, values, evicted, prompt)


@contextlib.contextmanager
def one_torch_thread():
    """Torch on one thread in this (the session's script) thread, restored after: a token-by-token decode of a
    small model is many tiny ops, where a second thread only waits (default view on lm:small, 2 busy cores:
    0.7-0.9 s on one thread, 8-10 s on two). OpenMP's count is per calling thread, so other sessions keep theirs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@st.cache_resource(show_spinner=False, max_entries=32)
def kv_computed(model_key: str, ids_key: str, config_json: str, prompt: int, new_tokens: int, _loaded,
                _ids) -> KVView:
    """``kv_view_data``, cached per model, text ids (their digest), config and lengths."""
    with one_torch_thread():
        return kv_view_data(_loaded, _ids, KVConfig.from_json(config_json), prompt, new_tokens)


def ids_digest(ids: torch.Tensor) -> str:
    return hashlib.sha256(json.dumps(ids.tolist()).encode()).hexdigest()


def count_caption(config: KVConfig, head_dim: int, cached: int) -> str:
    """The kept-count convention for the chosen setting, in words."""
    if config.method == "mustafar":
        k, v = kept_count(head_dim, config.k_sparsity), kept_count(head_dim, config.v_sparsity)
        return (f"**N = kept.** A vector of D = {head_dim} entries at sparsity s keeps N = D − ⌊s·D⌋: keys keep "
                f"N = {k} of {head_dim}, values N = {v} of {head_dim} (the {config.residual_length} newest tokens "
                "stay dense).")
    kept = (config.sinks + config.window) if config.method == "streaming" else (config.heavy + config.recent)
    what = (f"{config.sinks} sinks + the {config.window} newest" if config.method == "streaming"
            else f"{config.heavy} heavy hitters + the {config.recent} newest")
    return (f"**N = kept.** {METHOD_TITLES['streaming' if config.method == 'streaming' else 'h2o']} evicts whole "
            f"tokens: it keeps {min(kept, cached)} of the {cached} cached tokens ({what}), sized to hold as many "
            "entries as Mustafar at the mean of the K and V sparsity (N = D − ⌊s·D⌋ of each vector).")


def metrics_section(view: KVView) -> None:
    r = view.result
    h = kv_headline(r)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Perplexity", f"{h['perplexity']:.2f}", f"{h['perplexity'] - h['dense_perplexity']:+.2f} vs dense",
              delta_color="inverse", help=f"teacher forced over {r.positions} tokens after the prefill of "
                                          f"{view.prompt}; dense {h['dense_perplexity']:.2f}")
    m2.metric("Next-token agreement", f"{h['agreement']:.1%}", help="share of positions where the argmax equals dense")
    m3.metric("Cache bytes", f"{h['cache_bytes']:,}", f"{h['cache_bytes'] / h['dense_bytes'] - 1:+.1%} vs dense",
              delta_color="inverse",
              help=("Mustafar's bitmap layout" if r.config.method == "mustafar" else "the kept tokens stored dense")
              + f"; dense {h['dense_bytes']:,}, CSR {r.bytes['csr']:,} (fp16 values)")
    m4.metric("Kept entries", f"{h['kept_fraction']:.1%}", help="nonzero cache entries of all, at the end of the text")


def heatmap_section(loaded, view: KVView, ids: torch.Tensor, config: KVConfig) -> tuple[int, int]:
    n_layers, n_heads = int(view.keys.shape[0]), int(view.keys.shape[1])
    c1, c2 = st.columns(2)
    layer = c1.selectbox("Layer", list(range(n_layers)), key="kv_layer", bind=URL)
    head = c2.selectbox("KV head", list(range(n_heads)), key="kv_head", bind=URL)
    tokens = [f"{i} {t}" for i, t in enumerate(loaded.tokenizer.convert_ids_to_tokens(ids[:-1].tolist()))]
    window = min(config.dense_tokens, len(tokens))
    gone = sum(view.evicted)
    note = f"; {gone} tokens evicted (grey rows)" if gone else ""
    h1, h2 = st.columns(2)
    for col, name, x in ((h1, "keys", view.keys), (h2, "values", view.values)):
        col.plotly_chart(kv_cache_heatmap(x[layer, head], tokens=tokens, window=window, colorbar=name[0].upper(),
                                          title=f"pruned {name}, layer {layer} head {head}<br><sup>grey = zeroed{note}</sup>"),
                         width="stretch", key=f"kv_heat_{name}")
    return layer, head


def generations_section(loaded, view: KVView, ids: torch.Tensor) -> None:
    r = view.result
    if not r.dense_generated:
        st.caption("No tokens generated (Tokens to generate is 0).")
        return
    same = sum(a == b for a, b in zip(r.generated, r.dense_generated))
    tail = loaded.tokenizer.decode(ids[-24:].tolist())
    st.caption(f"Greedy generation of {len(r.dense_generated)} tokens after the whole text (…{tail!r}): "
               f"{same} of {len(r.dense_generated)} tokens equal.")
    g1, g2 = st.columns(2)
    g1.markdown("**Dense cache**")
    g1.code(loaded.tokenizer.decode(r.dense_generated), language=None, wrap_lines=True)
    g2.markdown("**Pruned cache**")
    g2.code(loaded.tokenizer.decode(r.generated), language=None, wrap_lines=True)


def result_json(view: KVView, settings: KVSettings) -> str:
    r = view.result
    return json.dumps({"settings": settings.__dict__, "config": json.loads(r.config.to_json()), "prompt": view.prompt,
                       "perplexity": r.perplexity, "dense_perplexity": r.dense_perplexity, "agreement": r.agreement,
                       "kept_fraction": r.kept_fraction, "bytes": r.bytes, "attention_error": r.attention_error,
                       "generated": r.generated, "dense_generated": r.dense_generated}, indent=1)


def error_frame(view: KVView) -> pd.DataFrame:
    return pd.DataFrame([{"layer": i, "head": h, "attention_error": e}
                         for i, row in enumerate(view.result.attention_error) for h, e in enumerate(row)])


def sweep_spec(loaded, s: KVSettings, methods: list[str], sparsities: list[int], texts: int, n_tokens: int) -> StudySpec:
    """The KV study of the sweep: the chosen methods × sparsities over the first ``texts`` held-out texts of
    the view's length, with the view's residual window."""
    settings = KVStudy(tokens=n_tokens, prompt=max(1, min(MAX_PROMPT, n_tokens // 4)), residual_length=s.window,
                       new_tokens=0)
    return StudySpec(name=f"KV sweep {loaded.spec}", kind="kv", models=(loaded.spec,), methods=tuple(methods),
                     patterns=tuple(f"kv:{p / 100:g}" for p in sparsities), seeds=tuple(range(texts)), kv=settings)


def sweep_form(n_texts: int) -> tuple[list[str], list[int], int]:
    c1, c2, c3 = st.columns([3, 2, 1])
    methods = c1.multiselect("Methods", list(KV_METHODS), default=list(SWEEP_DEFAULT_METHODS), key="kv_sweep_methods",
                             wrap=True, format_func=METHOD_TITLES.get)
    sparsities = c2.multiselect("Sparsities (%)", list(range(10, 100, 10)), default=list(SWEEP_SPARSITIES),
                                key="kv_sweep_sparsities", wrap=True)
    texts = int(c3.number_input("Texts", 1, max(1, n_texts), min(3, max(1, n_texts)), key="kv_sweep_texts",
                                help="held-out texts; the interval is taken over them"))
    return methods, sorted(sparsities), texts


@st.cache_data(show_spinner=False, max_entries=64)
def texts_available(model_key: str, tokens: int, _loaded) -> int:
    return kv_text_count(_loaded, tokens)


def sweep_section(loaded, model_key: str, s: KVSettings, n_tokens: int, stem: str) -> None:
    """The quality-vs-bytes sweep as a KV study: Run / Stop / Continue, the figure with intervals over texts."""
    n_texts = texts_available(model_key, n_tokens, loaded)
    methods, sparsities, texts = sweep_form(n_texts)
    if not methods or not sparsities:
        st.error("Choose at least one method and one sparsity for the sweep.")
        return
    try:
        spec = sweep_spec(loaded, s, methods, sparsities, texts, n_tokens)
        spec.validate()
    except ValueError as err:
        st.error(f"Cannot sweep: {err}")
        return
    total = spec.cell_count()
    status = study_status(spec)
    job = job_state("kv_sweep_jobs", spec.study_id)
    if job["status"] == "idle" and status.done == total:
        job["status"] = "done"
    slot = job_buttons(job, st, "kv_sweep", f"Run the sweep ({total} cells)", unit="cells")
    st.download_button("Sweep as a study spec (.json)", spec.to_json(), f"{stem}-kv-study.json",
                       mime="application/json", key="kv_dl_spec",
                       help="run it elsewhere: python -m sparsekit.study run spec.json (--backend ray --ray ADDRESS for a cluster)")
    if job["status"] == "running":
        bar = ResumedProgress("Sweeping", total, "cells")

        def show(st_: Any) -> None:
            bar((st_.done + st_.failed) / st_.total if st_.total else 1.0, f"{st_.done}/{st_.total} cells done")

        with heavy_job("study", loaded, once=None), one_torch_thread():
            result = run_study(spec, progress=show)
        bar.empty()
        job["status"] = "done" if result.status.state == "finished" else "stopped"
        slot.empty()
    records = study_records(spec)
    if not records:
        st.caption(f"{total} cells ({len(methods)} methods × {len(sparsities)} sparsities × {texts} texts of "
                   f"{n_tokens} tokens); each finished cell is kept, so Stop and Continue lose nothing.")
        return
    failed = [r for r in records if not r.done]
    if failed:
        st.warning(f"{len(failed)} cells failed; the first: {failed[0].error}")
    groups = summarize(records)
    rows = sweep_rows(records, n_tokens)
    figure = getattr(viz, "kv_quality_bytes_figure", None)
    if figure is not None:
        st.plotly_chart(figure(rows), width="stretch", key="kv_sweep_library_fig")
    dense = next((r.dense_bytes for r in records if r.done and r.dense_bytes), None)
    st.caption("Texts differ far more in perplexity than the settings do, so with few texts the interval of the "
               "perplexity itself is wide; the perplexity over each text's own dense perplexity varies much less:")
    st.plotly_chart(kv_groups_figure(groups, metric="perplexity_ratio", metric_label="perplexity / dense perplexity",
                                     dense_bytes=dense, title=f"perplexity relative to dense against cache bytes "
                                                              f"(mean and {spec.confidence:.0%} interval over "
                                                              f"{texts} texts)"),
                    width="stretch", key="kv_sweep_ratio")
    st.dataframe(**table_view(group_table(groups)), hide_index=True)
    d1, d2 = st.columns(2)
    d1.download_button("Sweep cells (.csv)", pd.DataFrame(rows).to_csv(index=False), f"{stem}-kv-sweep.csv",
                       mime="text/csv", key="kv_dl_sweep")
    d2.download_button("Sweep cells (.json)", json.dumps(rows, indent=1), f"{stem}-kv-sweep.json",
                       mime="application/json", key="kv_dl_sweep_json")


def group_table(groups) -> pd.DataFrame:
    """One row per method × sparsity: means with their interval over texts, bytes and kept share."""
    out = []
    for g in groups:
        row: dict[str, Any] = {"method": g.method, "pattern": g.pattern, "texts": len(g.seeds)}
        for m in ("perplexity", "perplexity_ratio", "agreement", "attention_error"):
            iv = g.metrics.get(m)
            if iv is not None:
                row[m] = iv.mean
                row[f"{m} interval"] = "—" if not math.isfinite(iv.low) else f"[{iv.low:.4g}, {iv.high:.4g}]"
        row["cache bytes"] = g.memory_bytes
        row["kept entries"] = g.kept_fraction
        out.append(row)
    return pd.DataFrame(out)


def sweep_rows(records, tokens: int) -> list[dict[str, Any]]:
    """Finished KV study records as ``kv_sweep``-style rows (method, sparsity, text, quality, bytes)."""
    out = []
    for r in records:
        if not r.done:
            continue
        b = r.detail["bytes"] if r.detail else {}
        k = r.detail["config"]["k_sparsity"] if r.detail else math.nan
        out.append({"method": r.method, "pattern": r.pattern, "sparsity": float(r.pattern.split(":")[1].split("/")[0])
                    if r.pattern.startswith("kv:") else k, "text": r.seed, "tokens": tokens, "perplexity": r.metrics.get("perplexity"),
                    "dense_perplexity": r.detail.get("dense_perplexity") if r.detail else None,
                    "perplexity_ratio": r.metrics.get("perplexity_ratio"), "agreement": r.metrics.get("agreement"),
                    "attention_error": r.metrics.get("attention_error"),
                    "kept_fraction": r.kept_fraction, "bytes": r.memory_bytes, "bytes_dense": b.get("full"),
                    "bytes_bitmap": b.get("bitmap"), "bytes_csr": b.get("csr"), "bytes_kept_dense": b.get("dense")})
    return out


def kv_section(loaded, model_key: str) -> None:
    """The whole KV-cache view, or one line saying why it does not apply to this model."""
    st.markdown(
        "**KV-cache sparsity** (Mustafar, arXiv 2505.22913): while a causal LM generates, it keeps every token's "
        "keys and values. Mustafar zeroes the smallest-|x| entries of each cached vector (per token) or of each "
        "channel, keeping the newest tokens dense; StreamingLLM and H2O instead evict whole tokens. The model is "
        "run token by token with its cache pruned after every step; the loaded model is never changed.")
    try:
        causal_module(loaded)
    except ValueError as err:
        st.info(f"The KV-cache view does not apply here: {err}. Pick lm:small (or a Hugging Face GPT-2 / Llama "
                "directory) in the sidebar.")
        return
    settings = kv_form(loaded)
    try:
        ids, config, prompt = kv_inputs(loaded, settings)
    except ValueError as err:
        st.error(f"Cannot run the KV view: {err}")
        return
    n = int(ids.numel())
    st.caption(count_caption(config, head_dim_of(causal_module(loaded)), n - 1)
               + f" Text: {n} tokens; prefill {prompt}, the other {n - prompt} scored one token a step.")
    try:
        with st.spinner("Running the model token by token with the pruned cache…"):
            view = kv_computed(model_key, ids_digest(ids), config.to_json(), prompt, settings.new_tokens, loaded, ids)
    except ValueError as err:
        st.error(f"Cannot run the KV view: {err}")
        return
    metrics_section(view)
    layer, head = heatmap_section(loaded, view, ids, config)
    errors = np.array(view.result.attention_error, dtype=float)
    st.plotly_chart(viz.head_grid_figure(errors, title="attention-output error per layer and head "
                                         "(‖O_pruned − O_dense‖ / ‖O_dense‖ over the scored tokens)",
                                         colorbar="error", zmax=None, colorscale="Reds", text_format=".3f"),
                    width="stretch", key="kv_head_error")
    generations_section(loaded, view, ids)
    stem = f"{loaded.name}-kv".replace(" ", "_").replace(":", "-").replace("/", "_").replace(",", "")
    notebook_button(kv_recipe(loaded.spec, settings.method, settings.k_pct / 100, settings.v_pct / 100, settings.window,
                              text_index=settings.text_index if settings.source == HELDOUT else None,
                              tokens=settings.tokens, text=settings.text, new_tokens=settings.new_tokens, layer=layer,
                              head=head, upload_sha256=upload_digest(loaded)), key="kv_notebook")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Result (.json)", result_json(view, settings), f"{stem}.json", mime="application/json",
                       key="kv_dl_result")
    d2.download_button("Per-head error (.csv)", error_frame(view).to_csv(index=False), f"{stem}-head-error.csv",
                       mime="text/csv", key="kv_dl_errors")
    both = torch.cat([view.keys[layer, head], view.values[layer, head]], dim=1).numpy()
    d = int(view.keys.shape[-1])
    cache = pd.DataFrame(both, columns=[f"k{i}" for i in range(d)] + [f"v{i}" for i in range(d)])
    d3.download_button("This head's pruned K and V (.csv)", cache.to_csv(index_label="token"),
                       f"{stem}-L{layer}H{head}.csv", mime="text/csv", key="kv_dl_cache")
    st.subheader("Quality against cache bytes")
    st.markdown("Every chosen method at every sparsity, over held-out texts of the view's length with its residual "
                "window: a KV study on the study engine (each cell cached; Ray where a cluster is configured).")
    sweep_section(loaded, model_key, settings, settings.tokens if settings.source == HELDOUT else n, stem)
