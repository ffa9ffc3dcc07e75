"""Recovery: fine-tune the pruned model to win back quality (fixed mask, STE, SR-STE on one budget), with
live curves, SAD per interval and per layer, flip rate and oscillation; runs persist and export, and
the Saved runs view lists, reopens and deletes them."""
import streamlit as st

from sparsekit import recovery, viz
from sparsekit.recipes.recovery import recovery_recipe
from sparsekit.recovery import MODE_LABELS, MODES, default_recovery_config
from ui.heavy import heavy_job
from ui.notebook import upload_digest
from ui.recovery import saved_runs_view, show_records
from ui.state import require_model, sparsified
from ui.widgets import current_config

st.title("Recovery fine-tuning")
st.markdown(
    "Pruning costs quality; training the pruned model for a while wins part of it back. **Fixed mask** keeps the "
    "pruned positions at zero (the classic recipe). **STE** recomputes the N:M mask from dense shadow weights every "
    "step, so weights can come back; **SR-STE** also decays the pruned shadow weights (λ_w), which in the SR-STE "
    "paper keeps the mask from moving as much (lower SAD). The digits models train on their labels; MiniLM and "
    "other encoders learn the dense model's sentence embeddings, causal LMs its next-token distribution, on a text "
    "corpus shipped with sparsekit that shares no sentence with the evaluation set. **Gap recovered** = "
    "(after − before) / (dense − before) of the headline metric."
)

# Saved runs need neither a loaded model nor a pruned setting: runs of every model are listed.
view = st.radio("View", ["New recovery", "Saved runs"], horizontal=True, key="rc_view", label_visibility="collapsed")
if view == "Saved runs":
    saved_runs_view()
    st.stop()

loaded, key = require_model()
config = current_config()
if config.pattern == "dense":
    st.info("Prune the model on the Sparsify page first: recovery starts from that setting.")
    st.stop()
st.caption(f"Starting point: **{config.label()}** from the Sparsify page, on {loaded.name}.")
try:
    defaults = default_recovery_config(loaded.kind)
except ValueError as err:
    st.error(f"Cannot recover this model: {err}")
    st.stop()

c1, c2, c3, c4 = st.columns([2, 1, 1, 1])  # the modes' chips (fixed mask, STE, SR-STE) fit on one line
keep = dict(persist_state="page")  # a look at the saved runs keeps these settings (and the runs they show)
modes = c1.multiselect("Modes (same budget each)", list(MODES), default=list(MODES) if config.pattern == "nm"
                       else ["fixed"], format_func=MODE_LABELS.get, key="rc_modes",
                       help="STE and SR-STE need an N:M pattern (the mask is recomputed per group of M)", **keep)
steps = int(c2.number_input("Steps", 1, 20000, defaults.steps, key="rc_steps", **keep))
lr = float(c3.number_input("Learning rate", 1e-6, 1.0, float(defaults.lr), format="%g", key="rc_lr", **keep))
every = int(c4.number_input("Evaluate every (steps)", 1, 20000, min(defaults.eval_every, steps), key="rc_every",
                            **keep))
configs = []
for mode in modes:
    cfg = default_recovery_config(loaded.kind, mode=mode, steps=steps, lr=lr, eval_every=min(every, steps))
    try:
        cfg.validate()
    except ValueError as err:
        st.error(f"{MODE_LABELS[mode]}: {err}")
        st.stop()
    configs.append(cfg)
if not configs:
    st.info("Choose at least one mode.")
    st.stop()

runs = st.session_state.setdefault("rc_runs", {})
run_key = (key, config.to_json(), tuple(c.to_json() for c in configs))
records = runs.get(run_key)
if records is None:
    if not st.button(f"Recover ({len(configs)} run{'s' if len(configs) > 1 else ''} of {steps} steps)", type="primary",
                     key="rc_run"):
        st.stop()
    result = sparsified(key, loaded, config)
    records = []
    chart = st.empty()
    bar = st.progress(0.0, text="Recovering…")
    for i, cfg in enumerate(configs):
        def progress(p, i=i, cfg=cfg):
            frac = (i + p.step / max(p.total_steps, 1)) / len(configs)
            bar.progress(min(frac, 1.0), text=f"{MODE_LABELS[cfg.mode]}: step {p.step} of {p.total_steps}, "
                                              f"loss {p.loss:.4g}")
            if p.event in ("start", "eval"):
                chart.plotly_chart(viz.recovery_curves_figure([*records, p.record]), width="stretch",
                                   key=f"rc_live_{i}_{p.step}")
        try:
            with heavy_job("recovery", loaded):
                records.append(recovery.recover_and_save(result, loaded, cfg, progress=progress))
        except ValueError as err:
            st.error(f"{MODE_LABELS[cfg.mode]}: {err}")
            st.stop()
    bar.empty()
    chart.empty()
    runs[run_key] = records

show_records(records, notebook=lambda pick: recovery_recipe(loaded.spec, config, configs, layer_run=pick,
                                                             upload_sha256=upload_digest(loaded)))
