"""Attribution drift: Integrated Gradients of the dense and the sparse model, side by side."""
import pandas as pd
import streamlit as st

from sparsekit import attribution as attr
from sparsekit import viz
from sparsekit.recipes.attribution import IMAGE_COUNT, attribution_recipe, image_headline, text_headline
from ui.cached import image_maps, pair_maps, pair_set
from ui.format import MISSING, table_view
from ui.notebook import notebook_button, upload_digest
from ui.state import require_model, sparsified
from ui.widgets import config_form, current_config

st.title("Attribution drift")
st.markdown(
    "Accuracy can survive pruning while the reasons change. **Integrated Gradients** splits one output into "
    "contributions of the input features that add up to the output's change from a blank input; if the sparse "
    "model still looks at the same evidence, its map matches the dense one (correlation near 1). Digits models "
    "explain the predicted class pixel by pixel; sentence encoders explain a pair's similarity token by token."
)

loaded, key = require_model()
is_image = loaded.kind == "image-classifier"
is_text = loaded.kind == "encoder" and hasattr(loaded.module, "get_input_embeddings") and loaded.tokenizer is not None
if not (is_image or is_text):
    st.info(f"Attribution drift covers digits classifiers and sentence encoders; {loaded.name} is a {loaded.kind}.")
    st.stop()

config = config_form("at", current_config(), compact=True)
if config is None:
    st.stop()
try:
    with st.spinner(f"Pruning a copy ({config.label()})…"):
        result = sparsified(key, loaded, config)
except ValueError as err:
    st.error(f"Cannot apply these settings: {err}")
    st.stop()
if config.pattern == "dense":
    st.info("The dense setting prunes nothing, so both maps are the same. Pick N:M or unstructured above.")

if is_image:
    steps = st.slider("Integration steps", 16, 128, 64, step=16, key="at_steps",
                      help="More steps make the attributions add up more exactly to the output change.")
    count = IMAGE_COUNT
    with st.spinner(f"Integrated Gradients on {count} held-out digits…"):
        maps = image_maps(key, config.to_json(), steps, count, loaded.module, result.model)
    idx = st.selectbox("Image", list(range(count)), key="at_image",
                       format_func=lambda i: f"#{i}: digit {maps.labels[i]} (dense says {maps.targets[i]}, "
                                             f"sparse says {maps.sparse_predictions[i]})")
    st.plotly_chart(viz.attribution_maps_figure(maps.images[idx], maps.dense[idx], maps.sparse[idx],
                                                title=f"Integrated Gradients for class {maps.targets[idx]}",
                                                correlation=maps.correlation[idx]),
                    width="stretch", key="at_maps")
    head = image_headline(maps, idx)
    c = st.columns(4)
    c[0].metric("Correlation (this image)", f"{head['correlation']:.3f}")
    c[1].metric(f"Mean correlation ({count} images)", f"{head['mean_correlation']:.3f}")
    c[2].metric(f"Top-{attr.TOP_PIXELS} pixel overlap (mean)", f"{head['mean_top_overlap']:.0%}")
    c[3].metric("Same prediction", f"{head['same_prediction']:.0%}")
    notebook_button(attribution_recipe(loaded.spec, config, steps, image=idx, upload_sha256=upload_digest(loaded)),
                    key="at_notebook")
    st.caption(f"Both models explain the dense model's predicted class, from a black image. Completeness: the "
               f"attributions sum to the logit change within {head['max_abs_delta']:.2g} (largest error).")
    st.plotly_chart(viz.agreement_figure([f"#{i} ({maps.labels[i]})" for i in range(count)], maps.correlation),
                    width="stretch", key="at_agreement")
    st.dataframe(**table_view(pd.DataFrame(maps.rows())), hide_index=True, width="stretch")
else:
    steps = st.slider("Integration steps", 8, 64, 16, step=8, key="at_steps",
                      help="Each step is one encoder forward and backward per sentence and model.")
    default_a, default_b = attr.DEFAULT_PAIRS[0]
    a = st.text_input("Sentence A", default_a, max_chars=attr.MAX_SENTENCE_CHARS, key="at_a")
    b = st.text_input("Sentence B", default_b, max_chars=attr.MAX_SENTENCE_CHARS, key="at_b")
    if not a.strip() or not b.strip():
        st.error("Both sentences need some text.")
        st.stop()
    with st.spinner("Layer Integrated Gradients over the token embeddings…"):
        pair = pair_maps(key, config.to_json(), steps, a, b, loaded.module, result.model, loaded.tokenizer)
    head = text_headline(pair)
    c = st.columns(3)
    c[0].metric("Similarity, dense", f"{head['dense_similarity']:.3f}")
    # A change of similarity is neither good nor bad: its delta stays grey.
    c[1].metric("Similarity, sparse", f"{head['sparse_similarity']:.3f}", f"{head['similarity_change']:+.3f}",
                delta_color="off")
    c[2].metric("Token attribution correlation", MISSING if head["correlation"] is None else f"{head['correlation']:.3f}")
    notebook_slot = st.empty()  # filled at the end, once it is known whether the pairs were summarised
    st.plotly_chart(viz.token_attribution_figure(pair.tokens_a, pair.dense_a, pair.sparse_a, title="Sentence A"),
                    width="stretch", key="at_tokens_a")
    st.plotly_chart(viz.token_attribution_figure(pair.tokens_b, pair.dense_b, pair.sparse_b, title="Sentence B"),
                    width="stretch", key="at_tokens_b")
    st.caption("Each model explains its own cosine similarity: A with B's embedding fixed, then B with A's. The "
               "baseline keeps [CLS]/[SEP] and replaces the other tokens by [PAD]; per-token values sum to the "
               f"similarity change within {head['max_abs_delta']:.2g}.")
    st.subheader("Agreement over built-in pairs")
    count = st.slider("Pairs", 2, len(attr.DEFAULT_PAIRS), 4, key="at_pairs")
    if st.button("Summarise agreement", key="at_summary_run"):
        st.session_state["at_summary_request"] = (config.to_json(), steps, count)
    summarised = st.session_state.get("at_summary_request") == (config.to_json(), steps, count)
    if summarised:
        with st.spinner(f"Attributing {count} sentence pairs with both models…"):
            results, summary = pair_set(key, config.to_json(), steps, count, loaded.module, result.model,
                                        loaded.tokenizer)
        head = text_headline(pair, summary)
        c = st.columns(3)
        c[0].metric("Mean correlation", f"{head['mean_correlation']:.3f}")
        c[1].metric("Top token agreement", f"{head['top_token_agreement']:.0%}")
        c[2].metric("Mean |similarity change|", f"{head['mean_abs_similarity_change']:.3f}")
        st.dataframe(**table_view(pd.DataFrame([p.row() for p in results])), hide_index=True, width="stretch")
    with notebook_slot.container():
        notebook_button(attribution_recipe(loaded.spec, config, steps, sentences=(a, b),
                                           pairs=count if summarised else None, upload_sha256=upload_digest(loaded)),
                        key="at_notebook")
