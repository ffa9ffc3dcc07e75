"""Masks: look inside one layer's mask, its N:M groups, and compare two masks."""
import dataclasses
import json

import pandas as pd
import streamlit as st

from sparsekit.recipes.masks import masks_headline, masks_recipe
from ui.figures import figure
from ui.format import table_view
from ui.next_step import next_step
from ui.notebook import notebook_button, upload_digest
from ui.state import require_model, sparsified
from ui.widgets import apply_linked_config, config_form, config_link_value, current_config, linked

LINK_CONFIG = "mask_config"  # the URL parameter holding the setting shown
SPARSIFY_PAGE = "views/sparsify.py"

st.title("Masks")
st.markdown(
    "A mask says which weights survive (kept = 1). Magnitude masks keep the large weights, so the "
    "kept and pruned |w| histograms separate; N:M masks keep exactly N in every group of M along a "
    "row. **SAD** (Sparse Architecture Divergence, from SR-STE) counts the positions where two masks "
    "disagree."
)

loaded, key = require_model()

# A shared link carries the sender's setting: it is applied before the page reads the current one.
apply_linked_config(LINK_CONFIG)
config = current_config()
st.query_params[LINK_CONFIG] = config_link_value(config)
st.caption(f"Showing the masks of **{config.label()}**.")
next_step(SPARSIFY_PAGE, "Change the setting on the Sparsify page", ":material/content_cut:")
try:
    result = sparsified(key, loaded, config)
except ValueError as err:
    st.error(f"Cannot apply the current settings: {err}")
    st.stop()
if not result.masks:
    st.info("The current settings prune nothing (dense, or every layer was skipped). Pick a pattern on the "
            "Sparsify page.")
    st.stop()


def chart(fig, **kw) -> None:
    # The app theme (light or dark) sets the backgrounds: no figure here fixes one.
    st.plotly_chart(fig, width="stretch", theme="streamlit", **kw)


names = list(result.masks)
layer = linked("mask_layer", True, "not a pruned layer under this setting (" + ", ".join(names[:6])
              + (", …" if len(names) > 6 else "") + ")",
              lambda: st.selectbox("Layer", names, key="mask_layer", bind="query-params"))
orig = dict(loaded.module.named_modules())[layer].weight.detach()
mask = result.masks[layer]
w2, m2 = result.matrix_view(layer, orig), result.matrix_view(layer, mask)
rows, cols = m2.shape
nm = config.pattern == "nm" and cols % config.m == 0
head = masks_headline(result, layer)
st.caption(f"Weight {tuple(orig.shape)} shown as a {rows}×{cols} matrix (rows = outputs, N:M groups run along "
           f"each row; conv weights as [out, kh·kw·in] for channel grouping). Kept "
           f"{head['kept']:,} of {head['numel']:,} ({head['kept_share']:.1%}).")
notebook_slot = st.empty()  # filled at the end, when the zoom, group and second setting are known
irow = start = 0

overview, zoom_tab, groups_tab, compare_tab = st.tabs(["Overview", "Zoom", "N:M groups", "Compare"],
                                                      key="mask_view", bind="query-params")
# Built once per input (ui.figures): a rerun that changes only the zoom or the second setting rebuilds only
# that figure. The key names the model, the setting shown and the layer; each figure adds its own inputs.
shown = json.dumps([key, config.to_json(), layer])
with overview:
    chart(figure("mask_heatmap", shown, m2, title=f"{layer}: kept fraction per tile", m=config.m if nm else None))
    left, right = st.columns(2)
    with left:
        chart(figure("magnitude_histogram", shown, w2, m2))
    with right:
        chart(figure("density_profile", shown, m2))

with zoom_tab:
    z1, z2, z3 = st.columns(3)
    size = z3.slider("Block size", 4, 64, 12, key="zoom_size", bind="query-params", help="values are printed up to 20×20")
    row0 = int(z1.number_input("First row", 0, max(0, rows - 1), 0, key="zoom_row", bind="query-params"))
    col0 = int(z2.number_input("First column", 0, max(0, cols - 1), 0, key="zoom_col", bind="query-params"))
    chart(figure("mask_zoom_figure", f"{shown}|{row0},{col0},{size}", w2, m2, row0, col0, size, size,
                 m=config.m if nm else None))

with groups_tab:
    if not nm:
        st.info("The group views are for N:M masks: pick an N:M pattern on the Sparsify page.")
    else:
        st.subheader("N:M group inspector")
        g1, g2 = st.columns(2)
        irow = int(linked("grp_row", True, f"the row is a whole number from 0 to {rows - 1}", lambda: g1.number_input(
            "Row", 0, rows - 1, 0, key="grp_row", bind="query-params")))
        n_groups = cols // config.m
        start = int(linked("grp_start", True, f"the first group is a whole number from 0 to {n_groups - 1}",
                           lambda: g2.number_input("First group", 0, n_groups - 1, 0, key="grp_start",
                                                   bind="query-params")))
        chart(figure("nm_group_figure", f"{shown}|{irow},{start}", w2, m2, config.m, irow, start,
                     min(8, n_groups - start)))
        st.subheader("Which positions each group kept")
        chart(figure("nm_pattern_figure", shown, m2, config.m))
        st.caption(f"Every group of {config.m} along a row keeps {config.n} positions: one of the patterns above "
                   "(1 = kept, position 0 first). Magnitude pruning of weights without positional structure uses "
                   "them about equally; a skew shows positions the layer favours.")

with compare_tab:
    st.caption("Pick a second setting (e.g. random instead of magnitude, or 1:4 instead of 2:4).")
    default_b = dataclasses.replace(config, method="random" if config.method == "magnitude" else "magnitude")
    other = config_form("mb", default_b, compact=True, url=True)  # in the link, as the setting shown
    result_b = None
    if other is not None:
        try:
            result_b = sparsified(key, loaded, other)
        except ValueError as err:
            st.error(f"Cannot apply the comparison settings: {err}")
    if result_b is not None and layer not in result_b.masks:
        st.warning(f"{layer} is not pruned under {other.label()}, so there is nothing to compare.")
    elif result_b is not None:
        mb2 = result.matrix_view(layer, result_b.masks[layer])
        diff = masks_headline(result, layer, result_b)
        kept_a, kept_b = diff["kept"], diff["kept_b"]
        d1, d2, d3, d4 = st.columns(4)
        # A SAD share is a size, not a change: no arrow, no colour. A change in the kept count is
        # neither good nor bad: grey, and none at all when there is no change.
        d1.metric("SAD, this layer", f"{diff['sad_layer']:,}",
                  f"{diff['sad_layer_share']:.2%} of weights" if diff["sad_layer"] else None,
                  delta_color="off", delta_arrow="off")
        d2.metric(f"SAD, {diff['common_layers']} layers", f"{diff['sad_total']:,}",
                  f"{diff['sad_total_share']:.2%} of weights" if diff["sad_total"] else None,
                  delta_color="off", delta_arrow="off")
        d3.metric("Kept in both", f"{diff['both_kept']:,}")
        d4.metric("Kept, second mask", f"{kept_b:,}", f"{kept_b - kept_a:+,}" if kept_b != kept_a else None,
                  delta_color="off", delta_description="vs this mask")
        chart(figure("mask_diff_figure", f"{shown}|{other.to_json()}", m2, mb2, labels=(config.label(), other.label())))
        st.dataframe(**table_view(pd.DataFrame([{"both kept": diff["both_kept"], f"only {config.label()}": diff["only_a"],
                                                 f"only {other.label()}": diff["only_b"],
                                                 "both pruned": diff["both_pruned"]}])),
                     hide_index=True)

with notebook_slot.container():
    notebook_button(masks_recipe(loaded.spec, config, layer, other if result_b is not None else None,
                                 zoom=(row0, col0, size), group=(irow, start), upload_sha256=upload_digest(loaded)),
                    key="mask_notebook")
