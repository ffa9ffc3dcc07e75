"""Streamlit pieces of the Attention page: its forms (input, pattern, layer and head, scope, search
settings), the quality section and the click on the layer × head grid; the captures and searches are
cached in ``ui.cached``.

The page's main choices are bound to the URL (``bind="query-params"``; the widget key is the query
parameter), so a reload or a shared link opens the same view.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd
import streamlit as st

from sparsekit import viz

from sparsekit.attention import PATTERNS, PatternSpec
from sparsekit.attention.capture import passage_ids
from sparsekit.attention.masks import MAX_PARAM
from sparsekit.attention.search import ALLOCATIONS, DEFAULT_FAMILIES, SEARCH_FAMILIES, SearchConfig
from sparsekit.attention.specs import COMBINATORS
from sparsekit.cache import get_cache, make_key
from sparsekit.models.sentences import SENTENCES
from sparsekit.recipes.attention import PASSAGE_TOKENS, AttentionInput, fit_text_input, token_limit
from ui.cached import attention_quality, digits_data
from ui.format import change_text, metric_text

MAX_WIDGET = 4096  # parameter inputs accept more than any sequence, so the library can say why it does not fit
# Browsers refuse a paste longer than max_chars outright (the box stays empty), so the bound sits far above
# any text the model takes; the page cuts long texts to the token limit itself and says so.
MAX_TEXT_CHARS = 200_000
PASSAGE = "Built-in passage (128 tokens)"
GRID_KEY = "att_grid"
URL = "query-params"


def pattern_form(prefix: str, default: str) -> PatternSpec:
    """Widgets for one pattern; raises ValueError for an invalid combination of values."""
    names = list(PATTERNS)
    name = st.selectbox("Pattern", names, index=names.index(default), format_func=lambda n: PATTERNS[n].title,
                        key=f"{prefix}_name", bind=URL)
    info = PATTERNS[name]
    st.caption(f"Keeps {info.summary}.")
    values = {}
    cols = st.columns(3)
    for i, p in enumerate(info.params):
        wkey = f"{prefix}_{name}_{p.name}"
        with cols[i % 3]:
            if p.kind == "bool":
                values[p.name] = st.checkbox(p.name, p.default, key=wkey, help=p.help, bind=URL)
            elif p.kind == "int":
                values[p.name] = int(st.number_input(p.name, p.minimum, min(p.maximum, MAX_PARAM, MAX_WIDGET),
                                                     p.default, key=wkey, help=p.help, bind=URL))
            elif p.kind == "choice":
                values[p.name] = st.selectbox(p.name, p.choices, index=p.choices.index(p.default), key=wkey,
                                              help=p.help, bind=URL)
            else:
                values[p.name] = st.text_input(p.name, p.default, max_chars=200, key=wkey, help=p.help, bind=URL)
    return PatternSpec.of(name, **values)


def input_form(loaded):
    """Widgets choosing the input to capture: a held-out digit for the ViT, text otherwise.

    Returns:
        ``(inputs, input_key, source)``: what ``capture_attention`` takes, a cache key naming it, and
        the choice as an ``AttentionInput`` (for the notebook).
    """
    if loaded.kind == "image-classifier":
        data = digits_data()
        n_images = data.x_test.shape[0]
        c1, c2 = st.columns([3, 1])
        idx = int(c1.number_input(f"Held-out digit image (0–{n_images - 1})", 0, n_images - 1, 0, key="att_image",
                                  bind=URL))
        c1.caption(f"Label {int(data.y_test[idx])}. Tokens: a class token (CLS) and 16 patches of 2×2 pixels, "
                   "named by patch row and column.")
        c2.image(data.x_test[idx, 0].numpy(), width=96, clamp=True)
        return data.x_test[idx: idx + 1], f"image:{idx}", AttentionInput("image", image=idx)
    source = st.radio("Text", [PASSAGE, "Built-in sentence", "Your text"], key="att_source", horizontal=True,
                      bind=URL)
    if source == "Your text":
        limit = token_limit(loaded)
        # Not bound to the URL: a pasted text can be far longer than a URL may be.
        text = st.text_area(f"Your text (the first {limit} tokens are used)", SENTENCES[0], max_chars=MAX_TEXT_CHARS,
                            key="att_text")
        chosen = AttentionInput("text", text=text)
        inputs, n_tokens = fit_text_input(loaded, text)  # the text itself, or its first ids when too long
        if isinstance(inputs, str):
            return inputs, f"text:{text}" if text.strip() else "text:", chosen
        st.info(f"Your text was {len(text):,} characters / {n_tokens:,} tokens; {loaded.name} takes at most "
                f"{limit} tokens here, so the first {len(inputs)} tokens are shown.")
        return inputs, "ids:" + hashlib.sha256(json.dumps(inputs).encode()).hexdigest(), chosen
    if source == PASSAGE:
        return passage_ids(loaded, PASSAGE_TOKENS), f"passage:{PASSAGE_TOKENS}", AttentionInput("passage")
    sentence = st.selectbox("Sentence", SENTENCES, key="att_sentence", bind=URL)
    return sentence, f"text:{sentence}", AttentionInput("sentence", text=sentence)


def combined_pattern_form() -> PatternSpec:
    """A pattern, optionally combined with a second one; raises ValueError for invalid values."""
    left, right = st.columns(2)
    with left:
        spec = pattern_form("att_p", "a_shape")
    with right:
        combine = st.selectbox("Combine with a second pattern", ["none", *COMBINATORS], key="att_combine", bind=URL,
                               format_func=lambda c: {"none": "no", "and": "and (keep where both keep)",
                                                      "or": "or (keep where either keeps)"}[c])
        if combine != "none":
            spec = PatternSpec.combine(combine, spec, pattern_form("att_q", "vertical_stripe"))
    return spec


def selected_head(selection: Any, n_layers: int, n_heads: int) -> tuple[int, int] | None:
    """The head a click on ``head_picker_figure`` picked.

    Args:
        selection: the chart's selection state (``st.plotly_chart(..., on_select="rerun")``:
            ``{"selection": {"points": [{"x": head, "y": layer, ...}, ...]}}``), or None.
        n_layers: layers of the grid.
        n_heads: heads per layer.

    Returns:
        ``(layer, head)`` of the last point that is a cell of the grid, else None.
    """
    try:
        points = list(selection["selection"]["points"])
    except (KeyError, TypeError):
        return None
    for point in reversed(points):
        x, y = (point.get("x"), point.get("y")) if isinstance(point, dict) else (None, None)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in (x, y)):
            layer, head = int(y), int(x)
            if 0 <= layer < n_layers and 0 <= head < n_heads:
                return layer, head
    return None


def head_form(n_layers: int, n_heads: int) -> tuple[int, int]:
    """Layer and head pickers (bound to the URL). A new click on the head grid (``GRID_KEY``) sets
    them first; the same selection seen again does not, so the pickers stay usable after a click."""
    state = st.session_state.get(GRID_KEY)
    seen = json.dumps(state, sort_keys=True, default=str)
    if st.session_state.get(f"{GRID_KEY}_seen") != seen:
        st.session_state[f"{GRID_KEY}_seen"] = seen
        picked = selected_head(state, n_layers, n_heads)
        if picked is not None:
            st.session_state["att_layer"], st.session_state["att_head"] = picked
    c1, c2 = st.columns(2)
    layer = c1.selectbox("Layer", list(range(n_layers)), key="att_layer", bind=URL)
    head = c2.selectbox("Head", list(range(n_heads)), key="att_head", bind=URL)
    return layer, head


def _fit_choice(key: str, size: int, fallback: int) -> bool:
    # A choice carried over from a bigger model holds indices this one lacks: keep those that exist.
    chosen = st.session_state.get(key)
    if not chosen:
        return False
    kept = [i for i in chosen if isinstance(i, int) and 0 <= i < size]
    if len(kept) == len(chosen):
        return False
    st.session_state[key] = kept or [fallback]
    return True


def scope_form(n_layers: int, n_heads: int, layer: int, head: int) -> tuple[tuple | None, tuple | None] | None:
    """Where to apply the pattern: ``(None, None)`` for everywhere, else the chosen layers and heads;
    None (with an error shown) when the user chose no layer or no head."""
    scope = st.radio("Apply to", ["All layers and heads", "Chosen layers and heads"], key="att_scope",
                     horizontal=True, bind=URL)
    if scope == "All layers and heads":
        return None, None
    fitted = [_fit_choice("att_layers", n_layers, layer), _fit_choice("att_heads", n_heads, head)]
    if any(fitted):
        st.info(f"The chosen layers and heads were fitted to this model ({n_layers} layers × {n_heads} heads).")
    s1, s2 = st.columns(2)
    layers = tuple(s1.multiselect("Layers", list(range(n_layers)), default=[layer], key="att_layers", wrap=True))
    heads = tuple(s2.multiselect("Heads", list(range(n_heads)), default=[head], key="att_heads", wrap=True))
    if not layers or not heads:
        st.error("Choose at least one layer and one head to apply the pattern to.")
        return None
    return layers, heads


def quality_section(model_key: str, loaded, spec: PatternSpec, scope: tuple[tuple | None, tuple | None],
                    stem: str):
    """End-to-end quality with the pattern inside the model (on ``scope``): headline metric, mean
    density, the table and its download; a pattern the model cannot run gets an error, and the
    rest of the page still runs. Returns the ``AttentionQuality`` shown (None after an error)."""
    layers, heads = scope
    st.caption("The quality metric runs on the model's own evaluation set (for MiniLM the 240 built-in sentences, "
               "mostly 10–40 tokens; for the ViT the held-out digits), not on the input above. Each evaluation "
               "input gets the pattern over its own tokens, and a window longer than a short sentence covers all "
               "of it, so the density the pattern actually had there is shown next to the quality.")
    try:
        with st.spinner("Running the model with the pattern in its attention…"):
            q = attention_quality(model_key, spec.to_json(), loaded, spec, layers, heads)
    except ValueError as err:
        st.error(f"Cannot run the model with this pattern: {err}")
        return None
    headline = next(iter(q.sparse))
    k1, k2 = st.columns(2)
    k1.metric(loaded.metric_names.get(headline, headline), metric_text(q.sparse[headline]),
              f"{change_text(q.sparse[headline] - q.dense[headline], q.sparse[headline])} vs dense",
              delta_color="normal" if loaded.higher_is_better.get(headline, True) else "inverse")
    k2.metric("Mean density on the evaluation inputs", f"{q.mean_density:.1%}")
    frame = pd.DataFrame(q.rows(loaded.metric_names))
    st.dataframe(frame, hide_index=True)
    st.download_button("Quality (.csv)", frame.to_csv(index=False), f"{stem}-quality.csv", mime="text/csv",
                       key="att_dl_quality")
    return q


def search_form() -> tuple[SearchConfig, int]:
    """The per-head search settings: ``(config, number of calibration inputs)``."""
    f1, f2, f3 = st.columns(3)
    budget_pct = f1.number_input("Density budget (% of attention pairs)", 0.0, 100.0, 30.0, step=5.0,
                                 key="att_budget")
    allocation = f2.radio("Budget applies to", ALLOCATIONS, key="att_allocation", horizontal=True,
                          format_func=lambda a: {"head": "each head", "global": "the mean over heads"}[a])
    count = int(f3.number_input("Calibration inputs", 1, 64, 16, key="att_calib"))
    families = st.multiselect("Pattern families searched", list(SEARCH_FAMILIES), default=list(DEFAULT_FAMILIES),
                              key="att_families", wrap=True, format_func=lambda f: PATTERNS[f].title)
    return SearchConfig(budget=budget_pct / 100, allocation=allocation, families=tuple(families)), count


def search_buttons(job: dict[str, Any]) -> Any:
    """The search's button for the job's status, with a press applied: Run (``att_search``) when idle,
    Stop (``att_search_stop``) while running, Continue (``att_search_continue``) when stopped; none once
    done. Returns the placeholder holding it, to clear when the search finishes in this run."""
    slot = st.empty()
    stop_drawn = job["status"] == "running"
    if stop_drawn and slot.button("Stop", key="att_search_stop", help="keep the layers measured so far and show them"):
        job["status"] = "stopped"
    if job["status"] == "idle" and slot.button("Run the per-head search", key="att_search", type="primary"):
        job["status"] = "running"
    elif job["status"] == "stopped" and slot.button("Continue", key="att_search_continue", type="primary",
                                                    help="measure only the layers not done yet"):
        job["status"] = "running"
    if job["status"] == "running" and not stop_drawn:
        slot.button("Stop", key="att_search_stop", help="keep the layers measured so far and show them")
    return slot


def _started_key(model_key: str, job_id: str) -> str:
    return make_key("attention-search-page", model_key, job_id)


def mark_started(model_key: str, job_id: str) -> None:
    """Note on disk that the page started this search, so a reload looks for its stored layers."""
    get_cache()[_started_key(model_key, job_id)] = "1"


def was_started(model_key: str, job_id: str) -> bool:
    """Whether the page ever started this search (the calibration captures are needed to find its layers:
    without this note, a page view would compute them just to find nothing)."""
    return get_cache().get(_started_key(model_key, job_id)) is not None


def partial_search_section(result) -> None:
    """A stopped search: what it measured (the finished layers' best pattern within the budget per
    head; the other layers empty) and a note that Continue measures only the rest."""
    total = result.choice.shape[0]
    st.warning(f"Stopped after {result.layers_done} of {total} layers. The grid and the table show the finished "
               "layers (the others are empty); Continue measures only the rest.")
    if result.config.allocation == "global":
        st.caption("Each finished head shows its best pattern within the budget on its own; the budget over the "
                   "mean of all heads is shared out once every layer is measured.")
    st.plotly_chart(viz.head_grid_figure(result.plan_recall, title="best recall within the budget per layer and head "
                                         "(empty: not measured yet)", colorbar="recall"), width="stretch")
    frame = pd.DataFrame(result.rows()).drop(columns=["uniform_pattern", "uniform_density", "uniform_recall"])
    st.dataframe(frame.style.format({"density": "{:.4f}", "recall": "{:.4f}"}, na_rep="—"), hide_index=True,
                 height=320)
