"""Attention: see a model's real attention, lay a sparsity pattern over it, measure what it keeps
and costs, and search a pattern per head."""
import json

import pandas as pd
import streamlit as st

from sparsekit import viz
from sparsekit.attention import attention_support
from sparsekit.attention.apply import model_shape
from sparsekit.attention.metrics import measure, plan_masks
from sparsekit.attention.search import cached_search, plan_comparison_rows, search_heads
from sparsekit.recipes.attention import attention_headline, attention_recipe
from sparsekit.viz.attention import head_picker_figure
from ui.attention import (GRID_KEY, combined_pattern_form, head_form, input_form, mark_started,
                          partial_search_section, quality_section, scope_form, search_buttons, search_form,
                          was_started)
from ui.cached import attention_calibration, attention_capture, attention_quality
from ui.heavy import heavy_job
from ui.kvcache import kv_section
from ui.long_jobs import ResumedProgress, job_state
from ui.format import change_text, metric_text, table_view
from ui.notebook import notebook_button, upload_digest
from ui.state import require_model

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

if st.radio("View", ["Attention patterns", "KV cache"], key="att_view", horizontal=True, bind="query-params",
            help="KV cache: prune or evict a causal LM's key/value cache while it generates") == "KV cache":
    kv_section(loaded, key)
    st.stop()

# ---------------------------------------------------------------------------------------------
# Input and capture

st.subheader("Input")
inputs, input_key, source = input_form(loaded)

try:
    with st.spinner("Capturing the attention of every layer and head…"):
        capture = attention_capture(key, input_key, loaded, inputs)
except ValueError as err:
    st.error(f"Cannot capture the attention: {err}")
    st.stop()
n = capture.seq_len
st.caption(f"{n} tokens · {capture.n_layers} layers × {capture.n_heads} heads"
           + (" · decoder: densities count only the causal pairs" if capture.causal else ""))

# ---------------------------------------------------------------------------------------------
# Pattern

st.subheader("Pattern")
try:
    spec = combined_pattern_form()
    spec.validate(n, n)
except ValueError as err:
    st.error(f"The pattern does not fit this input: {err}")
    st.stop()
st.caption(f"Pattern: `{spec.label}`")

layer, head = head_form(capture.n_layers, capture.n_heads)

masks = plan_masks(capture, spec)
metrics = measure(capture, spec)
shown = attention_headline(metrics, layer, head)
m1, m2, m3, m4 = st.columns(4)
m1.metric("Density, this head", f"{shown['density_head']:.1%}")
m2.metric("Recall, this head", f"{shown['recall_head']:.1%}")
m3.metric("Output error, this head", f"{shown['error_head']:.3f}",
          help="‖O_sparse − O_dense‖ / ‖O_dense‖ with the softmax renormalised over the kept keys")
m4.metric("Recall, mean of all heads", f"{shown['recall_mean']:.1%}", help=f"mean density {shown['density_mean']:.1%}")
notebook_slot = st.container()  # filled once the page knows what it shows (quality, search)

st.plotly_chart(head_picker_figure(metrics.recall, (layer, head), title="attention mass kept (recall) per layer "
                                   "and head: click a cell to show that head, hover for the mass lost"),
                key=GRID_KEY, on_select="rerun", selection_mode="points", width="stretch")
st.plotly_chart(viz.attention_heatmap(capture.probs[layer, head], capture.tokens, masks[layer, head],
                                      title=f"layer {layer} ({capture.layer_names[layer]}), head {head}: "
                                            "attention, grey = dropped by the pattern"), width="stretch")
tab_d, tab_e = st.tabs(["Density per head", "Output error per head"])
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
scope = scope_form(n_layers, n_heads, layer, head)
quality = quality_section(key, loaded, spec, scope, stem) if scope is not None else None


def offer_notebook(search=None) -> None:
    """The notebook of what the page shows: the quality when it was measured, the search when it ran."""
    with notebook_slot:
        notebook_button(attention_recipe(loaded.spec, source, spec, layer, head,
                                         scope=scope if quality is not None else None, search=search,
                                         upload_sha256=upload_digest(loaded)), key="att_notebook")


# ---------------------------------------------------------------------------------------------
# Search per head

st.subheader("Search a pattern per head")
st.markdown(
    "Heads differ: some look locally, some at a few global tokens. The search measures every "
    "candidate pattern on calibration inputs and gives each head the one with the highest recall "
    "within the density budget; it is then compared with the single best pattern used for every "
    "head at no more density."
)
config, count = search_form()
config_json = json.dumps({"config": config.to_json(), "count": count})
job_id = f"{key}|{config_json}"
job = job_state("att_search_jobs", job_id)
if job["status"] == "idle" and not job.get("looked") and was_started(key, job_id):
    # A reload (a new session) finds the layers a stopped search kept; nothing is measured without a click.
    job["looked"] = True
    try:
        found = cached_search(attention_calibration(key, count, loaded), config, partial=True)
    except ValueError:
        found = None  # the search itself says why, when the button is pressed
    if found is not None and not found.complete:
        job["status"] = "stopped"
button_slot = search_buttons(job)
if job["status"] == "idle" and job.get("error"):
    st.error(job["error"])
    offer_notebook()
    st.stop()
job.pop("error", None)  # a press clears it
if job["status"] == "idle":
    st.caption("Press the button to search with these settings. Each finished layer is kept on disk: Stop shows "
               "the layers done so far, and Continue measures only the rest.")
    offer_notebook()
    st.stop()
try:
    with st.spinner("Capturing the calibration inputs…"):
        captures = attention_calibration(key, count, loaded)
    if job["status"] == "running":
        mark_started(key, job_id)
        bar = ResumedProgress("Searching", captures[0].n_layers, "layers")
        # Each layer is stored as it finishes: a Stop press (a rerun) or a closed tab keeps them.
        with heavy_job("attention_search", loaded, once=f"attention_search {key} {config_json} {count}"):
            result = search_heads(captures, config, progress=bar)
        bar.empty()
        job["status"] = "done" if result.complete else "stopped"
        button_slot.empty()
        if not result.complete:  # the library's stop ended it: the next press carries on
            button_slot.button("Continue", key="att_search_continue", help="measure only the layers not done yet")
    else:
        result = job["result"] if job["status"] == "done" else cached_search(captures, config, partial=True)
except ValueError as err:
    # Back to the Run button (drawn by the next run: this one used its key), with the message kept until a press.
    job["status"], job["error"] = "idle", f"Cannot search: {err}"
    st.rerun()
if result is None or not result.complete:
    if result is None:
        st.info("The search was stopped before its first layer finished; Continue starts it.")
    else:
        partial_search_section(result)
    offer_notebook()
    st.stop()
if job["status"] != "done":  # another session finished the search this one had stopped
    job["status"] = "done"
    button_slot.empty()
job["result"] = result
try:
    with st.spinner("Running the model with the plan and with the uniform pattern…"):
        plan_q = attention_quality(key, result.plan.to_json(), loaded, result.plan, None, None)
        uniform_q = attention_quality(key, result.uniform_spec.to_json(), loaded, result.uniform_spec, None, None)
except ValueError as err:
    st.error(f"Cannot search: {err}")
    offer_notebook()
    st.stop()
offer_notebook((config, count))

summary = result.summary()
headline = next(iter(plan_q.sparse))
r1, r2, r3 = st.columns(3)
r1.metric("Per-head plan: mean density", f"{summary['plan_density']:.1%}", help="on the calibration inputs")
r2.metric("Per-head plan: mean recall", f"{summary['plan_recall']:.1%}",
          f"{summary['plan_recall'] - summary['uniform_recall']:+.1%} vs uniform")
r3.metric(loaded.metric_names.get(headline, headline), metric_text(plan_q.sparse[headline]),
          f"{change_text(plan_q.sparse[headline] - uniform_q.sparse[headline], plan_q.sparse[headline])} vs uniform",
          delta_color="normal" if loaded.higher_is_better.get(headline, True) else "inverse")
compare = pd.DataFrame(plan_comparison_rows(result, plan_q, uniform_q, loaded.metric_names))
st.dataframe(**table_view(compare), hide_index=True)
st.plotly_chart(viz.plan_grid_figure(
    result, title="chosen pattern per head (cell text: recall on the calibration inputs)"), width="stretch")
st.plotly_chart(viz.search_tradeoff_figure(result), width="stretch")
st.dataframe(**table_view(pd.DataFrame(result.rows())), hide_index=True, height=320)

st.markdown("**Downloads**")
d1, d2 = st.columns(2)
d1.download_button("Per-head plan (.csv)", result.to_csv(), f"{stem}-search.csv", mime="text/csv", key="att_dl_search")
d2.download_button("Plan (.json)", result.plan.to_json(), f"{stem}-plan.json", mime="application/json",
                   key="att_dl_plan")
