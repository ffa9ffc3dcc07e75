"""Streamlit pieces of the Attention page: cached captures and searches, and its forms (input, pattern,
scope, search settings)."""
from __future__ import annotations

import streamlit as st

from sparsekit.attention import PATTERNS, PatternSpec, capture_attention
from sparsekit.attention.apply import attention_quality
from sparsekit.attention.capture import MAX_TOKENS, calibration_captures, passage_ids
from sparsekit.attention.patterns import COMBINATORS, MAX_PARAM
from sparsekit.attention.search import ALLOCATIONS, DEFAULT_FAMILIES, SEARCH_FAMILIES, SearchConfig, search_heads
from sparsekit.models.sentences import SENTENCES

MAX_WIDGET = 4096  # parameter inputs accept more than any sequence, so the library can say why it does not fit
PASSAGE = "Built-in passage (128 tokens)"


@st.cache_resource(show_spinner=False, max_entries=16)
def cached_capture(model_key: str, input_key: str, _loaded, _inputs):
    return capture_attention(_loaded, _inputs)


@st.cache_resource(show_spinner=False, max_entries=64)
def cached_quality(model_key: str, pattern_json: str, _loaded, _pattern, layers: tuple | None, heads: tuple | None):
    return attention_quality(_loaded, _pattern, layers=None if layers is None else list(layers),
                             heads=None if heads is None else list(heads))


@st.cache_resource(show_spinner=False, max_entries=4)
def _calibration(model_key: str, count: int, _loaded):
    return calibration_captures(_loaded, count)


@st.cache_resource(show_spinner=False, max_entries=16)
def cached_search(model_key: str, config_json: str, count: int, _loaded, _config):
    return search_heads(_calibration(model_key, count, _loaded), _config)


@st.cache_resource(show_spinner=False)
def _digits():
    from sparsekit.models.digits import digits_split

    return digits_split()


def pattern_form(prefix: str, default: str) -> PatternSpec:
    """Widgets for one pattern; raises ValueError for an invalid combination of values."""
    names = list(PATTERNS)
    name = st.selectbox("Pattern", names, index=names.index(default), format_func=lambda n: PATTERNS[n].title,
                        key=f"{prefix}_name")
    info = PATTERNS[name]
    st.caption(f"Keeps {info.summary}.")
    values = {}
    cols = st.columns(3)
    for i, p in enumerate(info.params):
        wkey = f"{prefix}_{name}_{p.name}"
        with cols[i % 3]:
            if p.kind == "bool":
                values[p.name] = st.checkbox(p.name, p.default, key=wkey, help=p.help)
            elif p.kind == "int":
                values[p.name] = int(st.number_input(p.name, p.minimum, min(p.maximum, MAX_PARAM, MAX_WIDGET),
                                                     p.default, key=wkey, help=p.help))
            elif p.kind == "choice":
                values[p.name] = st.selectbox(p.name, p.choices, index=p.choices.index(p.default), key=wkey,
                                              help=p.help)
            else:
                values[p.name] = st.text_input(p.name, p.default, max_chars=200, key=wkey, help=p.help)
    return PatternSpec.of(name, **values)


def input_form(loaded):
    """Widgets choosing the input to capture: a held-out digit for the ViT, text otherwise.

    Returns:
        ``(inputs, input_key)``: what ``capture_attention`` takes, and a cache key naming it.
    """
    if loaded.kind == "image-classifier":
        data = _digits()
        n_images = data.x_test.shape[0]
        c1, c2 = st.columns([3, 1])
        idx = int(c1.number_input(f"Held-out digit image (0–{n_images - 1})", 0, n_images - 1, 0, key="att_image"))
        c1.caption(f"Label {int(data.y_test[idx])}. Tokens: a class token (CLS) and 16 patches of 2×2 pixels, "
                   "named by patch row and column.")
        c2.image(data.x_test[idx, 0].numpy(), width=96, clamp=True)
        return data.x_test[idx: idx + 1], f"image:{idx}"
    source = st.radio("Text", [PASSAGE, "Built-in sentence", "Your text"], key="att_source", horizontal=True)
    if source == "Your text":
        text = st.text_area(f"Your text (at most {MAX_TOKENS} tokens)", SENTENCES[0], max_chars=4000, key="att_text")
        return text, f"text:{text}"
    if source == PASSAGE:
        return passage_ids(loaded, 128), "passage:128"
    sentence = st.selectbox("Sentence", SENTENCES, key="att_sentence")
    return sentence, f"text:{sentence}"


def combined_pattern_form() -> PatternSpec:
    """A pattern, optionally combined with a second one; raises ValueError for invalid values."""
    left, right = st.columns(2)
    with left:
        spec = pattern_form("att_p", "a_shape")
    with right:
        combine = st.selectbox("Combine with a second pattern", ["none", *COMBINATORS], key="att_combine",
                               format_func=lambda c: {"none": "no", "and": "and (keep where both keep)",
                                                      "or": "or (keep where either keeps)"}[c])
        if combine != "none":
            spec = PatternSpec.combine(combine, spec, pattern_form("att_q", "vertical_stripe"))
    return spec


def scope_form(n_layers: int, n_heads: int, layer: int, head: int) -> tuple[tuple | None, tuple | None]:
    """Where to apply the pattern: ``(None, None)`` for everywhere, else the chosen layers and heads.

    Stops the page when the chosen scope is empty."""
    scope = st.radio("Apply to", ["All layers and heads", "Chosen layers and heads"], key="att_scope",
                     horizontal=True)
    if scope == "All layers and heads":
        return None, None
    s1, s2 = st.columns(2)
    layers = tuple(s1.multiselect("Layers", list(range(n_layers)), default=[layer], key="att_layers"))
    heads = tuple(s2.multiselect("Heads", list(range(n_heads)), default=[head], key="att_heads"))
    if not layers or not heads:
        st.error("Choose at least one layer and one head to apply the pattern to.")
        st.stop()
    return layers, heads


def search_form() -> tuple[SearchConfig, int]:
    """The per-head search settings: ``(config, number of calibration inputs)``."""
    f1, f2, f3 = st.columns(3)
    budget_pct = f1.number_input("Density budget (% of attention pairs)", 0.0, 100.0, 30.0, step=5.0,
                                 key="att_budget")
    allocation = f2.radio("Budget applies to", ALLOCATIONS, key="att_allocation", horizontal=True,
                          format_func=lambda a: {"head": "each head", "global": "the mean over heads"}[a])
    count = int(f3.number_input("Calibration inputs", 1, 64, 16, key="att_calib"))
    families = st.multiselect("Pattern families searched", list(SEARCH_FAMILIES), default=list(DEFAULT_FAMILIES),
                              key="att_families", format_func=lambda f: PATTERNS[f].title)
    return SearchConfig(budget=budget_pct / 100, allocation=allocation, families=tuple(families)), count
