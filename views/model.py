"""Model card: what is loaded, where its parameters are, and how good it is dense."""
import pandas as pd
import streamlit as st

from sparsekit import viz
from sparsekit.sparsify import layer_table, params_by_type
from ui.state import require_model

st.title("Model")
st.markdown(
    "Pruning removes weights from the **Linear and Conv layers**, which hold most of a network's "
    "parameters. This card lists those layers, shows where the parameters sit, and measures the "
    "dense model's quality: the baseline every sparse version is compared with."
)

loaded, _ = require_model()

table = layer_table(loaded)
counts = params_by_type(loaded)
prunable = sum(r["params"] for r in table)
c1, c2, c3, c4 = st.columns(4)
c1.metric("Parameters", f"{loaded.n_params:,}")
c2.metric("In Linear/Conv layers", f"{prunable / loaded.n_params:.1%}")
c3.metric("Weight memory", f"{loaded.n_bytes / 2**20:,.1f} MB")
c4.metric("Kind", loaded.kind)

with st.spinner("Measuring dense quality…"):
    dense = loaded.quality()
st.subheader("Dense quality")
st.dataframe(
    pd.DataFrame([{"metric": loaded.metric_names.get(k, k), "value": v} for k, v in dense.items()]),
    hide_index=True,
)
if loaded.kind == "encoder":
    st.caption("Fidelity metrics compare a model with the dense model itself, so the dense model scores 1 by definition.")

left, right = st.columns([1, 2])
with left:
    st.plotly_chart(viz.params_by_type_figure(counts), width="stretch")
with right:
    st.subheader(f"Prunable layers ({len(table)})")
    st.dataframe(pd.DataFrame(table), hide_index=True, height=360)

info = {k: v for k, v in loaded.info.items() if k != "notes"}
with st.expander("Source details"):
    st.json(info)
    for note in loaded.info.get("notes", []):
        st.warning(note)
