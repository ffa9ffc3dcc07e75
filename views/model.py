"""Model card: what is loaded, where its parameters are, and how good it is dense."""
import pandas as pd
import streamlit as st

from sparsekit.recipes.model import model_headline, model_recipe
from sparsekit.report import layer_table, params_by_type
from ui.figures import figure
from ui.format import KIND_LABELS, metric_text, source_details, table_view
from ui.next_step import next_step
from ui.notebook import notebook_button, upload_digest
from ui.state import require_model

st.title("Model")
st.markdown(
    "Pruning removes weights from the **Linear and Conv layers**, which hold most of a network's "
    "parameters. This card lists those layers, shows where the parameters sit, and measures the "
    "dense model's quality: the baseline every sparse version is compared with."
)
with st.expander("Start here: a first tour in five steps", expanded="tour_seen" not in st.session_state,
                 icon=":material/flag:"):
    st.session_state["tour_seen"] = True
    st.markdown(
        "1. **Model** (this page): pick a model in the sidebar; MiniLM is a real sentence encoder, the digits "
        "models are small and instant.\n"
        "2. **Sparsify**: choose 2:4 (keep 2 of every 4 weights) and see what quality it costs.\n"
        "3. **Masks**: look inside one layer: which weights survived, and how two masks differ.\n"
        "4. **Attention**: sparse attention patterns (sliding window, BigBird, …) on your own text.\n"
        "5. **Training & topology**: train a 2:4 network from scratch and watch its mask settle (SAD)."
    )
    st.caption("The pages are listed at the top of the sidebar; every page works on the model picked below them.")
    next_step("views/sparsify.py", "Next: Sparsify this model (step 2)", ":material/content_cut:")

loaded, model_key = require_model()

table = layer_table(loaded)
counts = params_by_type(loaded)
c1, c2, c3, c4 = st.columns(4)  # filled once the dense quality is measured (the headline holds both)
notebook_slot = st.empty()

with st.spinner("Measuring dense quality…"):
    dense = loaded.quality()
head = model_headline(loaded, dense)
c1.metric("Parameters", f"{head['params']:,}")
c2.metric("In Linear/Conv layers", f"{head['prunable_share']:.1%}")
c3.metric("Weight memory", f"{head['weight_mb']:,.1f} MB", help="1 MB = 2²⁰ bytes")
c4.metric("Kind", KIND_LABELS.get(head["kind"], head["kind"]))
with notebook_slot.container():
    notebook_button(model_recipe(loaded.spec, upload_sha256=upload_digest(loaded)), key="model_notebook")
st.subheader("Dense quality")
st.dataframe(
    pd.DataFrame([{"metric": loaded.metric_names.get(k, k), "value": v, "shown": metric_text(v)}
                  for k, v in head["quality"].items()]),
    hide_index=True, width="stretch", column_order=["metric", "shown"],
    column_config={"metric": st.column_config.TextColumn("metric", width="large"),
                   "shown": st.column_config.TextColumn("value")},
)
if loaded.info.get("eval_budget"):
    st.caption(f"Measured on {loaded.info['eval_budget']}.")
if loaded.kind == "encoder":
    st.caption("Fidelity metrics compare a model with the dense model itself, so the dense model scores 1 by definition.")

left, right = st.columns([1, 2])
with left:
    st.plotly_chart(figure("params_by_type_figure", model_key, counts), width="stretch")
with right:
    st.subheader(f"Prunable layers ({head['prunable_layers']})")
    st.dataframe(**table_view(pd.DataFrame(table), {"params": st.column_config.NumberColumn("params", format="localized")}),
                 hide_index=True, height=min(38 + 35 * len(table), 360))

with st.expander("Source details"):
    st.dataframe(pd.DataFrame(source_details(loaded), columns=["detail", "value"]), hide_index=True, width="stretch")
    for note in loaded.info.get("notes", []):
        st.warning(note)
