"""Studies: a grid of experiments (models × methods × patterns × seeds, or STE / SR-STE training runs)
with intervals over seeds, run on this server or on a Ray cluster, resumable from the disk cache."""
import json

import streamlit as st

from sparsekit import study
from sparsekit.recipes.study import study_recipe
from ui.notebook import notebook_button
from ui.long_jobs import job_state
from ui.study import (backend_choice, kv_form, oneshot_form, results, run_study, status_text, study_buttons,
                      training_form, uploaded_spec)

st.title("Studies")
st.markdown(
    "One setting on one seed says little: float sums differ between machines and calibration draws differ "
    "between runs. A **study** runs a whole grid, every cell with several seeds, and shows each setting's mean "
    "with a 95 % interval. Every finished cell is kept on disk, so a stopped study resumes where it was and a "
    "cell that another study already ran is not run again. The same grid runs from the command line: download "
    "its spec and `python -m sparsekit.study run SPEC.json` (add `--backend ray --ray ADDRESS` for a cluster)."
)

kind = st.radio("Study", ["oneshot", "training", "kv", "upload"], horizontal=True, key="st_kind",
                format_func={"oneshot": "One-shot pruning", "training": "Sparse training (SR-STE vs STE)",
                             "kv": "KV-cache pruning", "upload": "From a spec file"}.get)
spec = {"oneshot": oneshot_form, "training": training_form, "kv": kv_form, "upload": uploaded_spec}[kind]()
if spec is None:
    st.stop()

cells = spec.cell_count()
status = study.study_status(spec)
backend, address = backend_choice()
try:
    memory = study.cell_memory_mb(spec)
except ValueError as err:
    st.error(f"Cannot size this study: {err}")
    st.stop()
need = max((mb for mb in memory.values() if mb), default=0.0)
st.caption(f"**{cells} cells** ({status_text(status)}); the largest cell needs about {need:,.1f} MB of memory.")

c1, c2 = st.columns([1, 3])
job = job_state("st_jobs", spec.study_id)
if job["status"] != "running":  # what the disk holds decides: also after a reload or another session's run
    job["status"] = "done" if status.done == status.total else "stopped" if status.done else "idle"
stop_slot = study_buttons(job, c1)
if job["status"] == "done":
    c1.caption("Every cell is on disk.")
c2.download_button("Spec (.json)", json.dumps(json.loads(spec.to_json()), indent=1),
                   f"{spec.name.replace(' ', '_')}-spec.json", mime="application/json", on_click="ignore",
                   key="st_dl_spec")
start = job["status"] == "running"
if start:
    st.caption("Stop keeps the finished cells on disk and shows them; Resume study computes only the rest.")
    try:
        outcome = run_study(spec, backend, address)
    except (ValueError, ConnectionError) as err:
        job["status"] = "idle"
        st.error(f"The study could not run: {err}")
        st.stop()
    status = outcome.status
    job["status"] = "done" if status.done + status.failed >= status.total else "stopped"
    stop_slot.empty()
    if job["status"] == "done":
        st.success(f"Finished: {status_text(status)}.")
    else:  # ended early (a stop): draw the page again in its stopped state, with Resume study
        st.rerun()
if job["status"] == "stopped":
    status = study.study_status(spec)
    if status.done + status.failed < status.total:
        st.warning(f"Stopped after {status.done} of {status.total} cells"
                   + (f" ({status.failed} failed)" if status.failed else "")
                   + ". The figures below show the finished cells; Resume study computes only the rest.")
    else:
        st.warning(f"{status.failed} of {status.total} cells failed (see below); Resume study runs them again.")

records = study.study_records(spec)
shown = results(spec, records) if records else None
if shown is not None:
    notebook_button(study_recipe(spec, *shown), key="st_notebook")
if not records and not start:
    st.info("Nothing of this study is on disk yet: press Run study.")
