"""Attention: see a model's real attention, lay a sparsity pattern over it, measure what it keeps
and costs, and search a pattern per head."""
import json

import pandas as pd
import streamlit as st

from sparsekit import viz
from sparsekit.attention import PATTERNS, PatternSpec, attention_support, capture_attention
from sparsekit.attention.apply import attention_quality, model_shape
from sparsekit.attention.capture import MAX_TOKENS, calibration_captures, passage_ids
from sparsekit.attention.metrics import measure, plan_masks
from sparsekit.attention.patterns import COMBINATORS, MAX_PARAM
from sparsekit.attention.search import ALLOCATIONS, DEFAULT_FAMILIES, SEARCH_FAMILIES, SearchConfig, search_heads
from sparsekit.models.sentences import SENTENCES
from ui.state import ensure_shell, require_model

ensure_shell(__file__)
st.title("Attention")
st.markdown(
    "**Attention sparsity** lets each query look at only some of the keys (a window, a few global "
    "tokens, the columns and diagonals where the weight concentrates), so long inputs cost less. "
    "**Recall** is the share of the dense attention weight a pattern keeps: at high recall the "
    "renormalised attention barely moves, at low recall the head's output changes and the model's "
    "quality with it. Patterns are FlexAttention `mask_mod`s; the loaded model is never changed."
)

loaded, key = require_model()
reason = attention_support(loaded)
if reason:
    st.info(f"{reason}. Pick MiniLM, the digits ViT or a Hugging Face text model in the sidebar.")
    st.stop()

MAX_WIDGET = 4096  # parameter inputs accept more than any sequence, so the library can say why it does not fit
PASSAGE = "Built-in passage (128 tokens)"


@st.cache_resource(show_spinner=False, max_entries=16)
def _capture(model_key: str, input_key: str, _loaded, _inputs):
    return capture_attention(_loaded, _inputs)


@st.cache_resource(show_spinner=False, max_entries=64)
def _quality(model_key: str, pattern_json: str, _loaded, _pattern, layers: tuple | None, heads: tuple | None):
    return attention_quality(_loaded, _pattern, layers=None if layers is None else list(layers),
                             heads=None if heads is None else list(heads))


@st.cache_resource(show_spinner=False, max_entries=4)
def _calibration(model_key: str, count: int, _loaded):
    return calibration_captures(_loaded, count)


@st.cache_resource(show_spinner=False, max_entries=16)
def _search(model_key: str, config_json: str, count: int, _loaded, _config):
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


# ---------------------------------------------------------------------------------------------
# Input and capture

st.subheader("Input")
if loaded.kind == "image-classifier":
    data = _digits()
    n_images = data.x_test.shape[0]
    c1, c2 = st.columns([3, 1])
    idx = int(c1.number_input(f"Held-out digit image (0–{n_images - 1})", 0, n_images - 1, 0, key="att_image"))
    c1.caption(f"Label {int(data.y_test[idx])}. Tokens: a class token (CLS) and 16 patches of 2×2 pixels, "
               "named by patch row and column.")
    c2.image(data.x_test[idx, 0].numpy(), width=96, clamp=True)
    inputs, input_key = data.x_test[idx: idx + 1], f"image:{idx}"
else:
    source = st.radio("Text", [PASSAGE, "Built-in sentence", "Your text"], key="att_source", horizontal=True)
    if source == "Your text":
        text = st.text_area(f"Your text (at most {MAX_TOKENS} tokens)", SENTENCES[0], max_chars=4000, key="att_text")
        inputs, input_key = text, f"text:{text}"
    elif source == PASSAGE:
        inputs = passage_ids(loaded, 128)
        input_key = "passage:128"
    else:
        sentence = st.selectbox("Sentence", SENTENCES, key="att_sentence")
        inputs, input_key = sentence, f"text:{sentence}"

try:
    with st.spinner("Capturing the attention of every layer and head…"):
        capture = _capture(key, input_key, loaded, inputs)
except ValueError as err:
    st.error(f"Cannot capture the attention: {err}")
    st.stop()
n = capture.seq_len
st.caption(f"{n} tokens · {capture.n_layers} layers × {capture.n_heads} heads"
           + (" · decoder: densities count only the causal pairs" if capture.causal else ""))

# ---------------------------------------------------------------------------------------------
# Pattern

st.subheader("Pattern")
left, right = st.columns(2)
try:
    with left:
        spec = pattern_form("att_p", "a_shape")
    with right:
        combine = st.selectbox("Combine with a second pattern", ["none", *COMBINATORS], key="att_combine",
                               format_func=lambda c: {"none": "no", "and": "and (keep where both keep)",
                                                      "or": "or (keep where either keeps)"}[c])
        if combine != "none":
            spec = PatternSpec.combine(combine, spec, pattern_form("att_q", "vertical_stripe"))
    spec.validate(n, n)
except ValueError as err:
    st.error(f"The pattern does not fit this input: {err}")
    st.stop()
st.caption(f"Pattern: `{spec.label}`")

c1, c2 = st.columns(2)
layer = c1.selectbox("Layer", list(range(capture.n_layers)), key="att_layer",
                     format_func=lambda i: f"{i} ({capture.layer_names[i]})")
head = c2.selectbox("Head", list(range(capture.n_heads)), key="att_head")

masks = plan_masks(capture, spec)
metrics = measure(capture, spec)
m1, m2, m3, m4 = st.columns(4)
m1.metric("Density, this head", f"{metrics.density[layer, head].item():.1%}")
m2.metric("Recall, this head", f"{metrics.recall[layer, head].item():.1%}")
m3.metric("Output error, this head", f"{metrics.error[layer, head].item():.3f}",
          help="‖O_sparse − O_dense‖ / ‖O_dense‖ with the softmax renormalised over the kept keys")
mean = metrics.mean()
m4.metric("Recall, mean of all heads", f"{mean['recall']:.1%}", help=f"mean density {mean['density']:.1%}")

st.plotly_chart(viz.attention_heatmap(capture.probs[layer, head], capture.tokens, masks[layer, head],
                                      title=f"layer {layer}, head {head}: attention, grey = dropped by the pattern"),
                width="stretch")
tab_r, tab_d, tab_e = st.tabs(["Recall per head", "Density per head", "Output error per head"])
with tab_r:
    st.plotly_chart(viz.head_grid_figure(metrics.recall, title="attention recall per layer and head",
                                         colorbar="recall"), width="stretch")
with tab_d:
    st.plotly_chart(viz.head_grid_figure(metrics.density, title="density per layer and head", colorbar="density"),
                    width="stretch")
with tab_e:
    st.plotly_chart(viz.head_grid_figure(metrics.error, title="relative output error per layer and head",
                                         colorbar="error", zmax=None, colorscale="Reds"), width="stretch")

stem = f"{loaded.name}-attention".replace(" ", "_").replace(":", "-").replace("/", "_")
d1, d2, d3 = st.columns(3)
d1.download_button("Per-head metrics (.csv)", metrics.to_csv(), f"{stem}-metrics.csv", mime="text/csv",
                   key="att_dl_metrics")
head_frame = pd.DataFrame(capture.probs[layer, head].numpy(), index=capture.tokens, columns=capture.tokens)
d2.download_button("This head's attention (.csv)", head_frame.to_csv(), f"{stem}-L{layer}H{head}.csv",
                   mime="text/csv", key="att_dl_head")
d3.download_button("Pattern (.json)", spec.to_json(), f"{stem}-pattern.json", mime="application/json",
                   key="att_dl_pattern")

# ---------------------------------------------------------------------------------------------
# End to end

st.subheader("Quality with the pattern inside the model")
n_layers, n_heads = model_shape(loaded)
scope = st.radio("Apply to", ["All layers and heads", "Chosen layers and heads"], key="att_scope", horizontal=True)
layers = heads = None
if scope != "All layers and heads":
    s1, s2 = st.columns(2)
    layers = tuple(s1.multiselect("Layers", list(range(n_layers)), default=[layer], key="att_layers"))
    heads = tuple(s2.multiselect("Heads", list(range(n_heads)), default=[head], key="att_heads"))
    if not layers or not heads:
        st.error("Choose at least one layer and one head to apply the pattern to.")
        st.stop()
st.caption("The quality metric runs on the model's own evaluation set (for MiniLM the 240 built-in sentences, "
           "mostly 10–40 tokens; for the ViT the held-out digits), not on the input above. Each evaluation input "
           "gets the pattern over its own tokens, and a window longer than a short sentence covers all of it, "
           "so the density the pattern actually had there is shown next to the quality.")
try:
    with st.spinner("Running the model with the pattern in its attention…"):
        q = _quality(key, spec.to_json(), loaded, spec, layers, heads)
except ValueError as err:
    st.error(f"Cannot run the model with this pattern: {err}")
    st.stop()
headline = next(iter(q.sparse))
k1, k2 = st.columns(2)
k1.metric(loaded.metric_names.get(headline, headline), f"{q.sparse[headline]:.4g}",
          f"{q.sparse[headline] - q.dense[headline]:+.4g} vs dense",
          delta_color="normal" if loaded.higher_is_better.get(headline, True) else "inverse")
k2.metric("Mean density on the evaluation inputs", f"{q.mean_density:.1%}")
quality_frame = pd.DataFrame(q.rows(loaded.metric_names))
st.dataframe(quality_frame, hide_index=True)
st.download_button("Quality (.csv)", quality_frame.to_csv(index=False), f"{stem}-quality.csv", mime="text/csv",
                   key="att_dl_quality")

# ---------------------------------------------------------------------------------------------
# Search per head

st.subheader("Search a pattern per head")
st.markdown(
    "Heads differ: some look locally, some at a few global tokens. The search measures every "
    "candidate pattern on calibration inputs and gives each head the one with the highest recall "
    "within the density budget; it is then compared with the single best pattern used for every "
    "head at no more density."
)
f1, f2, f3 = st.columns(3)
budget_pct = f1.number_input("Density budget (% of attention pairs)", 0.0, 100.0, 30.0, step=5.0, key="att_budget")
allocation = f2.radio("Budget applies to", ALLOCATIONS, key="att_allocation", horizontal=True,
                      format_func=lambda a: {"head": "each head", "global": "the mean over heads"}[a])
count = int(f3.number_input("Calibration inputs", 1, 64, 16, key="att_calib"))
families = st.multiselect("Pattern families searched", list(SEARCH_FAMILIES), default=list(DEFAULT_FAMILIES),
                          key="att_families", format_func=lambda f: PATTERNS[f].title)
config = SearchConfig(budget=budget_pct / 100, allocation=allocation, families=tuple(families))
config_json = json.dumps({"config": config.to_json(), "count": count})
if st.button("Run the per-head search", key="att_search", type="primary"):
    st.session_state["att_search_ran"] = config_json
if st.session_state.get("att_search_ran") != config_json:
    st.caption("Press the button to search with these settings.")
    st.stop()
try:
    with st.spinner("Measuring every candidate on the calibration inputs…"):
        result = _search(key, config_json, count, loaded, config)
    with st.spinner("Running the model with the plan and with the uniform pattern…"):
        plan_q = _quality(key, result.plan.to_json(), loaded, result.plan, None, None)
        uniform_q = _quality(key, result.uniform_spec.to_json(), loaded, result.uniform_spec, None, None)
except ValueError as err:
    st.error(f"Cannot search: {err}")
    st.stop()

summary = result.summary()
r1, r2, r3 = st.columns(3)
r1.metric("Per-head plan: mean density", f"{summary['plan_density']:.1%}", help="on the calibration inputs")
r2.metric("Per-head plan: mean recall", f"{summary['plan_recall']:.1%}",
          f"{summary['plan_recall'] - summary['uniform_recall']:+.1%} vs uniform")
r3.metric(loaded.metric_names.get(headline, headline), f"{plan_q.sparse[headline]:.4g}",
          f"{plan_q.sparse[headline] - uniform_q.sparse[headline]:+.4g} vs uniform",
          delta_color="normal" if loaded.higher_is_better.get(headline, True) else "inverse")
compare = pd.DataFrame([
    {"setting": "dense", "pattern": "full attention", "calibration density": 1.0, "calibration recall": 1.0,
     "evaluation density": 1.0, **{loaded.metric_names.get(k, k): v for k, v in plan_q.dense.items()}},
    {"setting": "per-head plan", "pattern": f"{len(result.family_counts())} families",
     "calibration density": summary["plan_density"], "calibration recall": summary["plan_recall"],
     "evaluation density": plan_q.mean_density, **{loaded.metric_names.get(k, k): v for k, v in plan_q.sparse.items()}},
    {"setting": "uniform", "pattern": summary["uniform"], "calibration density": summary["uniform_density"],
     "calibration recall": summary["uniform_recall"], "evaluation density": uniform_q.mean_density,
     **{loaded.metric_names.get(k, k): v for k, v in uniform_q.sparse.items()}},
])
st.dataframe(compare, hide_index=True)
st.plotly_chart(viz.plan_grid_figure(
    result, title="chosen pattern per head (cell text: recall on the calibration inputs)"), width="stretch")
st.plotly_chart(viz.search_tradeoff_figure(result), width="stretch")
st.dataframe(pd.DataFrame(result.rows()), hide_index=True, height=320)

st.markdown("**Downloads**")
d1, d2 = st.columns(2)
d1.download_button("Per-head plan (.csv)", result.to_csv(), f"{stem}-search.csv", mime="text/csv", key="att_dl_search")
d2.download_button("Plan (.json)", result.plan.to_json(), f"{stem}-plan.json", mime="application/json", key="att_dl_plan")
