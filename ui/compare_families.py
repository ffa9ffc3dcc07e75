"""Compare page: every family of structure (unstructured, N:M, SliceGPT, Monarch) on one equal-cost axis."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from sparsekit import viz
from sparsekit.models.base import LoadedModel
from sparsekit.structured import MonarchConfig, monarchize, slice_model, structured_zip
from sparsekit.structured.equal_cost import FamilyPoints, family_points
from ui.format import table_view
from ui.heavy import heavy_job
from ui.long_jobs import EstimatingProgress

SLICE_CHOICES = [10, 20, 30, 40, 50]
Settings = tuple[tuple[float, ...], tuple[tuple[int, int], ...], tuple[float, ...], tuple[int, ...]]
BLOCK_CHOICES = [2, 4, 8, 16, 32, 64]


def families_section(loaded: LoadedModel, key: str, nm: Sequence[tuple[int, int]], pcts: Sequence[int],
                     metric: str, label: str, higher: bool) -> tuple[FamilyPoints, Settings] | None:
    """The section: settings, a button that measures every family (magnitude masks, no fine-tuning), the
    figure against kept parameters or stored bytes, the table and a CSV. Returns the points shown and their
    settings ``(unstructured, nm, slicegpt, monarch_blocks)``, if any."""
    st.subheader("Structure families at equal cost")
    st.markdown(
        "Unstructured and N:M masks (the choices above, magnitude), **SliceGPT** (rotate the residual stream by "
        "PCA, then delete a fraction of its width; pre-LayerNorm models: GPT-2, Llama, the digits ViT) and **Monarch** (each Linear "
        "projected onto two block-diagonal factors) on one axis: the parameters the whole model keeps, counted "
        "the same way for every family, or the bytes each stores in its own format. No fine-tuning.")
    c1, c2, c3 = st.columns([1, 1, 1])
    slices = c1.multiselect("SliceGPT (% of width sliced)", SLICE_CHOICES, default=[20, 40], key="cmp_fam_slice",
                            wrap=True, bind="query-params")
    blocks = c2.multiselect("Monarch blocks", BLOCK_CHOICES, default=[4, 16], key="cmp_fam_blocks", wrap=True,
                            bind="query-params")
    x = c3.radio("x axis", ["params", "bytes"], key="cmp_fam_x", horizontal=True,
                 format_func=lambda v: "kept parameters" if v == "params" else "stored bytes")
    settings: Settings = (tuple(p / 100 for p in pcts), tuple(nm), tuple(s / 100 for s in slices), tuple(blocks))
    store = st.session_state.setdefault("cmp_families", {})
    store_key = f"{key}|{settings}"
    if c1.button("Measure the families", key="cmp_fam_run"):
        bar = EstimatingProgress("Measuring each family")
        try:
            with heavy_job("sweep", loaded, label="structure families"):
                store[store_key] = family_points(loaded, unstructured=settings[0], nm=settings[1],
                                                 slicegpt=settings[2], monarch_blocks=settings[3], progress=bar)
        except ValueError as err:
            st.error(f"Cannot measure the families: {err}")
        bar.empty()
    points: FamilyPoints | None = store.get(store_key)
    if points is None:
        st.caption("Nothing measured for these settings yet: each setting prunes, slices or projects a copy and "
                   "measures it (seconds on the digits models, a few minutes on a language model).")
        return None
    values = [v for r in points.rows if (v := r.quality.get(metric)) is not None and v > 0]
    # A perplexity that blows up (a coarse Monarch projection) would flatten every other point: log scale then.
    log_y = bool(values) and not higher and max(values) > 10 * min(values)
    st.plotly_chart(viz.family_cost_figure(points, metric, x=x, metric_label=label, higher_is_better=higher,
                                           log_y=log_y),
                    width="stretch", key="cmp_fam_fig", theme="streamlit")
    if log_y:
        st.caption("The quality axis is logarithmic: the values span more than a factor of 10.")
    table = pd.DataFrame(points.table([metric]))
    st.dataframe(**table_view(*shown_families(table, metric, label)), hide_index=True, width="stretch")
    if points.skipped:
        st.caption("Not measured: " + "; ".join(f"{fam} {setting}: {why}" for fam, setting, why in points.skipped))
    st.download_button("Families (.csv)", table.to_csv(index=False),
                       f"{loaded.name}-families.csv".replace("/", "_"), mime="text/csv", key="cmp_fam_csv")
    _model_download(loaded, points, settings, store_key)
    return points, settings


def shown_families(table: pd.DataFrame, metric: str, label: str) -> tuple[pd.DataFrame, dict]:
    """The families table as the page shows it: the kept share in % with one decimal, the metric under its
    label (with its unit) at one precision for the whole column (2 decimals for values of 10 and more, else 4,
    as ``metric_text`` writes one value), bytes with separators. The values stay numbers."""
    shown = table.copy()
    shown["kept share"] = shown["kept share"] * 100
    values = [abs(v) for v in shown[metric] if v is not None and v == v]
    digits = 2 if values and max(values) >= 10 else 4
    return shown, {"kept share": st.column_config.NumberColumn("kept share (%)", format="%.1f"),
                   metric: st.column_config.NumberColumn(label, format=f"%.{digits}f"),
                   "bytes": st.column_config.NumberColumn("stored bytes", format="localized")}


def _model_download(loaded: LoadedModel, points: FamilyPoints, settings: Settings, store_key: str) -> None:
    """A chosen SliceGPT or Monarch point, made again (deterministic: the same calibration and projection) and
    offered as a zip of its saved folder (safetensors + structure.json; ``load_structured`` reloads it)."""
    measured = {(r.family, r.setting) for r in points.rows}
    values: dict[str, tuple[str, float | int]] = {}
    for f in settings[2]:
        values[f"SliceGPT slice {f:.0%}"] = ("SliceGPT", f)
    for b in settings[3]:
        values[f"Monarch {b} blocks"] = ("Monarch", b)
    labels = [label for label, (family, _) in values.items() if (family, label[len(family) + 1:]) in measured]
    if not labels:
        return
    c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
    pick = c1.selectbox("Download a sliced or Monarch model", labels, key="cmp_fam_pick")
    files = st.session_state.setdefault("cmp_fam_files", {})
    file_key = f"{store_key}|{pick}"
    name = f"{loaded.spec}-{pick}".replace(":", "-").replace("/", "_").replace(" ", "-").replace("%", "pct")
    if c2.button("Prepare the download", key="cmp_fam_prepare"):
        family, value = values[pick]
        try:
            with heavy_job("sweep", loaded, label=f"{pick} for download"), st.spinner(f"Making {pick}"):
                result = (slice_model(loaded, float(value), progress=False) if family == "SliceGPT"
                          else monarchize(loaded, MonarchConfig(blocks=int(value)), progress=False))
                files[file_key] = structured_zip(result, name)
        except ValueError as err:
            st.error(f"Cannot make {pick}: {err}")
    data = files.get(file_key)
    if data is not None:
        st.download_button(f"{pick} (.zip)", data, f"{name}.zip", mime="application/zip", key="cmp_fam_zip")
        st.caption(f"model.safetensors and structure.json, no pickle. Reload: `load_structured('{name}', "
                   f"base=sparsekit.load_model('{loaded.spec}'))` from `sparsekit.structured`.")
