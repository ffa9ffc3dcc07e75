"""Recovery: fine-tune the pruned model to win back quality (fixed mask, STE, SR-STE on one budget), with
live curves, SAD per interval and per layer, flip rate and oscillation; runs persist and export, and
the Saved runs view lists, reopens and deletes them; the Model soup view averages k fixed-mask recoveries
(``ui.recovery_soup``). Stop keeps a run where it got to (shown as "Stopped at step
k of N" with its curves); Continue trains only the steps left."""
import streamlit as st

from sparsekit import recovery, viz
from sparsekit.recipes.recovery import recovery_recipe
from sparsekit.recovery import MODE_LABELS, MODES, default_recovery_config
from ui.heavy import heavy_job
from ui.long_jobs import job_buttons, job_state
from ui.notebook import upload_digest
from ui.recovery import batch_runs, saved_runs_view, show_records, show_stopped
from ui.recovery_soup import soup_view
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
view = st.radio("View", ["New recovery", "Model soup", "Saved runs"], horizontal=True, key="rc_view",
                label_visibility="collapsed")
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
if view == "Model soup":
    soup_view(loaded, config)  # ui.recovery_soup: k fixed-mask recoveries averaged, as a study of ingredients
    st.stop()

c1, c2, c3, c4 = st.columns([2, 1, 1, 1])  # the modes' chips (fixed mask, STE, SR-STE) fit on one line
keep = dict(persist_state="page")  # a look at the saved runs keeps these settings (and the runs they show)
modes = c1.multiselect("Modes (same budget each)", list(MODES), default=list(MODES) if config.pattern == "nm"
                       else ["fixed"], format_func=MODE_LABELS.get, key="rc_modes", wrap=True,
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
# Recover / Stop / Continue (ui.long_jobs): every run is saved as it goes, with a resume state at each
# evaluation; a Stop press (or a reload) finds the stopped run, and Continue trains only the steps left.
job = job_state("rc_jobs", repr(run_key))
if records is not None:
    job["status"] = "done"
elif job["status"] != "running":
    found = batch_runs(loaded.spec, config, configs)
    stopped = any(e is not None and e["status"] == "stopped" for e in found)
    job["status"] = "stopped" if stopped else "idle"
    job["parts"] = [e["run_id"] for e in found if stopped and e is not None and e["status"] == "complete"]
slot = job_buttons(job, st, "rc", f"Recover ({len(configs)} run{'s' if len(configs) > 1 else ''} of {steps} steps)",
                   "runs and evaluations")
if job["status"] == "idle":
    st.stop()
if job["status"] == "stopped":
    show_stopped(loaded.spec, config, configs)
    st.stop()
if records is None:
    result = sparsified(key, loaded, config)
    found = batch_runs(loaded.spec, config, configs)
    records = []
    chart = st.empty()
    bar = st.progress(0.0, text="Recovering…")
    for i, cfg in enumerate(configs):
        entry = found[i]
        if entry is not None and entry["status"] == "complete" and entry["run_id"] in job["parts"]:
            records.append(recovery.load_recovery(entry["run_id"]))  # finished before the stop: not run again
            continue

        def progress(p, i=i, cfg=cfg):
            frac = (i + p.step / max(p.total_steps, 1)) / len(configs)
            bar.progress(min(frac, 1.0), text=f"{MODE_LABELS[cfg.mode]}: step {p.step} of {p.total_steps}, "
                                              f"loss {p.loss:.4g}")
            if p.event in ("start", "eval"):
                chart.plotly_chart(viz.recovery_curves_figure([*records, p.record]), width="stretch",
                                   key=f"rc_live_{i}_{p.step}")
        try:
            with heavy_job("recovery", loaded):
                # A stopped run of these settings is continued from its last evaluation (resume=True).
                rec = recovery.recover_and_save(result, loaded, cfg, progress=progress)
        except ValueError as err:
            job["status"] = "idle"
            st.error(f"{MODE_LABELS[cfg.mode]}: {err}")
            st.stop()
        records.append(rec)
        if rec.status != "complete":
            break
        job["parts"].append(rec.run_id)
    bar.empty()
    chart.empty()
    slot.empty()
    if len(records) < len(configs) or any(r.status != "complete" for r in records):
        job["status"] = "stopped"  # the library's stop ended a run: the next press carries on
        slot.button("Continue", key="rc_continue", help="carry on from the last evaluation of the stopped run")
        show_stopped(loaded.spec, config, configs)
        st.stop()
    job["status"] = "done"
    runs[run_key] = records

show_records(records, notebook=lambda pick: recovery_recipe(loaded.spec, config, configs, layer_run=pick,
                                                             upload_sha256=upload_digest(loaded)))
