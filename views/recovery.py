"""Recovery: fine-tune the pruned model to win back quality (fixed mask, STE, SR-STE on one budget), with
live curves, SAD per interval and per layer, flip rate and oscillation; runs persist and export."""
import streamlit as st

from sparsekit import recovery, viz
from sparsekit.recovery import MODE_LABELS, MODES, default_recovery_config
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

c1, c2, c3, c4 = st.columns(4)
modes = c1.multiselect("Modes (same budget each)", list(MODES), default=list(MODES) if config.pattern == "nm"
                       else ["fixed"], format_func=MODE_LABELS.get, key="rc_modes",
                       help="STE and SR-STE need an N:M pattern (the mask is recomputed per group of M)")
steps = int(c2.number_input("Steps", 1, 20000, defaults.steps, key="rc_steps"))
lr = float(c3.number_input("Learning rate", 1e-6, 1.0, float(defaults.lr), format="%g", key="rc_lr"))
every = int(c4.number_input("Evaluate every (steps)", 1, 20000, min(defaults.eval_every, steps), key="rc_every"))
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
            records.append(recovery.recover_and_save(result, loaded, cfg, progress=progress))
        except ValueError as err:
            st.error(f"{MODE_LABELS[cfg.mode]}: {err}")
            st.stop()
    bar.empty()
    chart.empty()
    runs[run_key] = records

colors = viz.recovery_colors(records)
left, right = st.columns(2)
left.plotly_chart(viz.recovery_curves_figure(records, colors=colors), width="stretch", key="rc_curves")
right.plotly_chart(viz.recovery_gap_figure(records, colors=colors), width="stretch", key="rc_gap")
left.plotly_chart(viz.recovery_sad_figure(records), width="stretch", key="rc_sad")
right.plotly_chart(viz.flip_rate_figure(records), width="stretch", key="rc_flips")
st.subheader("Summary")
st.dataframe([{"mode": MODE_LABELS[r.config.mode], f"{r.metric} before": r.before, "after": r.after,
               "dense": r.dense, "gap recovered": r.gap_recovered, "seconds": r.seconds, "status": r.status}
              for r in records], hide_index=True, width="stretch",
             column_config={"gap recovered": st.column_config.NumberColumn(format="percent")})
pick = st.selectbox("Per-layer SAD of", range(len(records)), format_func=lambda i: MODE_LABELS[records[i].config.mode],
                    key="rc_layer_run")
st.plotly_chart(viz.recovery_sad_heatmap(records[pick]), width="stretch", key="rc_heat")
stem = f"{loaded.name}-{config.label()}-{records[pick].config.mode}".replace(" ", "_").replace(":", "-").replace("/", "_")
st.download_button("Recovered weights (.safetensors)", lambda: recovery.recovered_safetensors(records[pick]),
                   f"{stem}-recovered.safetensors", mime="application/octet-stream", on_click="ignore",
                   key="rc_download")
