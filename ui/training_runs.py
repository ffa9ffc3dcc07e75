"""Streamlit pieces of the Training page: the live-progress run loop and the saved-runs table."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from sparsekit import training, viz
from sparsekit.training import METHOD_LABELS, TrainConfig


def _flash(message: str, kind: str = "success") -> None:
    st.session_state["tr_flash"] = (kind, message)


def _do_rename() -> None:
    try:
        training.rename_run(st.session_state["tr_manage"], st.session_state.get("tr_newname", ""))
        _flash("Renamed.")
    except (KeyError, ValueError) as err:
        _flash(f"Could not rename: {err}", "error")


def _do_delete() -> None:
    run_id = st.session_state["tr_manage"]
    try:
        training.delete_run(run_id)
        _flash("Deleted.")
    except KeyError as err:
        _flash(f"Could not delete: {err}", "error")
    st.session_state["tr_selected"] = [r for r in st.session_state.get("tr_selected", []) if r != run_id]
    st.session_state["tr_confirm"] = False


@st.cache_resource(show_spinner=False, max_entries=32)
def _cached_run(run_id: str, stamp: str):
    # The stamp (status, time, name, epochs) changes whenever the entry is rewritten, so a stale copy
    # is never served. Shared read-only between sessions, with its SAD report computed once.
    rec = training.load_run(run_id)
    return rec, rec.sad()


def wait_for_interrupted(starting: bool) -> None:
    """After an interrupted training run (unless new runs are starting): wait for it to save itself,
    then say so."""
    interrupted = st.session_state.pop("tr_training", None)
    if not interrupted or starting:
        return
    # With fast reruns Streamlit starts this run while the interrupted one is still saving itself
    # in its own thread: wait for that save so the table below shows the final status.
    with st.spinner("Saving the interrupted run…"):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            entry = next((r for r in training.list_runs() if r["run_id"] == interrupted), None)
            if entry is None or entry["status"] != "running":
                break
            time.sleep(0.1)
    st.info("Training was interrupted (the Stop button, or a change on the page); the partial run is saved "
            "with status 'stopped' (see Saved runs).")


def _progress_callback(i: int, box):
    bar = box.progress(0.0, text="starting…")
    left, right = box.columns(2)
    curves, sads = left.empty(), right.empty()
    last = {"t": 0.0}

    def on_progress(p) -> None:
        if p.event == "start":
            st.session_state["tr_training"] = p.record.run_id  # saved already: the first checkpoint
        now = time.perf_counter()
        if p.event == "step" and now - last["t"] < 0.25:
            return
        last["t"] = now
        bar.progress(min(p.step / p.total_steps, 1.0),
                     text=f"step {p.step:,}/{p.total_steps:,} · epoch {p.epoch:.2f} · loss {p.loss:.4f}")
        if p.event == "epoch":
            rec = p.record
            curves.plotly_chart(viz.training_curves_figure([rec]), key=f"tr_live_c{i}_{p.step}")
            if rec.history.layers and len(rec.history) > 1:
                sads.plotly_chart(viz.sad_series_figure([rec], fraction=True), key=f"tr_live_s{i}_{p.step}")

    return on_progress


def train_with_progress(configs: list[TrainConfig], prefix: str) -> list[str]:
    """Train and save each config in turn, with a live status box per run; returns the new run ids."""
    new_ids = []
    for i, cfg in enumerate(configs):
        name = f"{prefix.strip()} {cfg.label()}" if prefix.strip() else ""
        # Not used as a context manager: leaving the `with` block would mark the run complete.
        box = st.status(f"Run {i + 1} of {len(configs)}: {cfg.label()}", expanded=True)
        on_progress = _progress_callback(i, box)
        try:
            rec = training.run_and_save(cfg, name=name, callback=on_progress)
        except Exception as err:  # the run saved itself as 'failed'; the page carries on
            st.session_state.pop("tr_training", None)
            box.update(label=f"Run {i + 1}: {cfg.label()} failed", state="error")
            st.error(f"{cfg.label()} failed ({type(err).__name__}): {err}")
            continue
        st.session_state.pop("tr_training", None)
        new_ids.append(rec.run_id)
        acc = f"{rec.final_accuracy:.2f}%" if rec.final_accuracy is not None else "n/a"
        if rec.status == "complete":
            box.update(label=f"Run {i + 1}: {rec.label} — {acc} held-out accuracy in {rec.seconds:.1f} s",
                       state="complete", expanded=False)
        else:
            box.update(label=f"Run {i + 1}: {rec.label} — {rec.status}", state="error")
            st.warning(f"{rec.label}: {rec.message}")
    return new_ids


def saved_runs() -> tuple[dict[str, dict], dict[str, str]]:
    """The saved-runs table with its rename/delete controls; returns (run id -> index entry, labels).

    Stops the page when there is no saved run."""
    if "tr_flash" in st.session_state:
        kind, message = st.session_state.pop("tr_flash")
        (st.error if kind == "error" else st.success)(message)
    runs = training.list_runs()
    if not runs:
        st.info("No saved runs yet: set up runs above and press Train. Runs are kept on disk across restarts.")
        st.stop()
    by_id = {r["run_id"]: r for r in runs}
    labels = {rid: f"{r['name'] or r['label']} · {r['status']} · {rid[:6]}" for rid, r in by_id.items()}
    table = pd.DataFrame([{
        "name": r["name"] or r["label"], "status": r["status"], "method": METHOD_LABELS[r["config"]["method"]],
        "N:M": f"{r['config']['n']}:{r['config']['m']}" if r["config"]["method"] != "gradual"
        else f"{r['config']['target_sparsity']:.0%} unstructured",
        "model": r["config"]["arch"], "epochs": r["epochs_done"], "accuracy (%)": r["final_accuracy"],
        "seconds": r["seconds"], "started": pd.Timestamp(r["created"], unit="s").strftime("%Y-%m-%d %H:%M"),
        "id": rid,
    } for rid, r in by_id.items()])
    st.dataframe(table, hide_index=True)

    with st.expander("Rename or delete a run"):
        st.selectbox("Run", list(by_id), format_func=labels.get, key="tr_manage")
        r1, r2 = st.columns(2)
        r1.text_input("New name (empty: the settings' label)", max_chars=80, key="tr_newname")
        r1.button("Rename", on_click=_do_rename, key="tr_rename")
        confirm = r2.checkbox("Yes, delete this run", key="tr_confirm")
        r2.button("Delete", on_click=_do_delete, disabled=not confirm, key="tr_delete")
    return by_id, labels


def load_selected(selected: list[str], by_id: dict[str, dict], labels: dict[str, str]):
    """The chosen runs and their SAD reports (run id -> report), skipping any that cannot be read."""
    records, reports = [], {}
    for rid in selected:
        r = by_id[rid]
        try:
            rec, report = _cached_run(rid, f"{r['status']}|{r['seconds']}|{r['name']}|{r['epochs_done']}")
        except (KeyError, ValueError) as err:
            st.error(f"Run {labels[rid]} cannot be read: {err}")
            continue
        records.append(rec)
        reports[rid] = report
    return records, reports
