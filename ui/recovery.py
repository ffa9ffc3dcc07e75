"""Streamlit pieces of the Recovery page: the figures, summary, per-layer SAD and download of a set of
recovery runs (just made, or reopened from the run store), and the saved-runs view (``ui.saved_runs``):
the table of every saved run, reopening some, deleting one; and a stopped batch of New recovery ("Stopped at
step k of N", its curves so far)."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Callable, Sequence

import pandas as pd
import streamlit as st

from sparsekit import recovery, serial, viz
from sparsekit.recipes import Recipe
from sparsekit.recipes.recovery import recovery_rows, saved_recovery_recipe
from sparsekit.recovery import MODE_LABELS, RecoveryConfig, RecoveryRecord
from sparsekit.sparsify import SparsifyConfig
from sparsekit.store import process_token
from ui.format import shown_path, table_view
from ui.notebook import notebook_button
from ui.saved_runs import SavedRuns

MAX_DEFAULT_PICK = 3
"""The saved-runs view reopens the newest run and up to this many runs in all that share its model and
starting setting (one press of Recover saves one run per mode)."""
_MEMO = "rc_saved_records"
SAVED = SavedRuns("rc", recovery.delete_recovery, manage_key="rc_delete_run", manage_title="Delete a run",
                  chosen_key="rc_saved_pick", damaged_hint="The other runs are not affected; delete this one below.")


def mode_label(record: RecoveryRecord) -> str:
    return MODE_LABELS.get(record.config.mode, record.config.mode)


def download_stem(record: RecoveryRecord) -> str:
    """File name stem of a run's recovered weights: its own model name, starting setting and mode."""
    stem = f"{record.model_name}-{record.sparsify_config.label()}-{record.config.mode}"
    return stem.replace(" ", "_").replace(":", "-").replace("/", "_")


def show_records(records: Sequence[RecoveryRecord], *, key: str = "rc",
                 label_of: Callable[[RecoveryRecord], str] = mode_label, origin: bool = False,
                 notebook: Callable[[int], Recipe] | None = None) -> None:
    """The figures (quality and loss, gap recovered, SAD, flip rate), the summary table, one run's
    per-layer SAD and the download of its recovered weights.

    Args:
        records: the runs, at least one; only read.
        key: prefix of the widget and chart keys (``rc`` gives ``rc_curves``, ``rc_layer_run`` ...).
        label_of: how a run is named in the per-layer SAD picker.
        origin: also name each run's model and starting setting in the summary (reopened runs may
            come from different ones).
        notebook: the page's recipe for the index of the run whose per-layer SAD is shown ("Open as
            notebook" under the summary).
    """
    colors = viz.recovery_colors(records)
    left, right = st.columns(2)
    left.plotly_chart(viz.recovery_curves_figure(records, colors=colors), width="stretch", key=f"{key}_curves")
    right.plotly_chart(viz.recovery_gap_figure(records, colors=colors), width="stretch", key=f"{key}_gap")
    left.plotly_chart(viz.recovery_sad_figure(records), width="stretch", key=f"{key}_sad")
    right.plotly_chart(viz.flip_rate_figure(records), width="stretch", key=f"{key}_flips")
    st.subheader("Summary")
    rows = recovery_rows(records, origin=origin, model_text=model_text)
    st.dataframe(**table_view(pd.DataFrame(rows), {"gap recovered": st.column_config.NumberColumn(format="percent")}),
                 hide_index=True, width="stretch")
    notebook_slot = st.container()
    pick = st.selectbox("Per-layer SAD of", range(len(records)), format_func=lambda i: label_of(records[i]),
                        key=f"{key}_layer_run")
    if notebook is not None:
        with notebook_slot:
            notebook_button(notebook(pick), key=f"{key}_notebook")
    record = records[pick]
    st.plotly_chart(viz.recovery_sad_heatmap(record), width="stretch", key=f"{key}_heat")
    if not record.weights:
        # Weights are saved when a run ends; a run that is still going, or whose process died, has none.
        st.caption(f"{label_of(record)} has no recovered weights to download (status {record.status}).")
        return
    st.download_button("Recovered weights (.safetensors)", lambda: recovery.recovered_safetensors(record),
                       f"{download_stem(record)}-recovered.safetensors", mime="application/octet-stream",
                       on_click="ignore", key=f"{key}_download")


# ---------------------------------------------------------------------------------------------
# Saved runs


def model_text(spec: str) -> str:
    """A run's model as a browser user may see it (no server path beyond the model roots)."""
    return f"hf:{shown_path(spec[3:])}" if spec.startswith("hf:") else spec


def _setting_text(data) -> str:
    try:
        return SparsifyConfig.from_json(json.dumps(data)).label()
    except (TypeError, ValueError):  # a config this version cannot read: show it raw
        return json.dumps(data, sort_keys=True)


def _created_text(created) -> str:
    if not created:
        return "–"
    return datetime.fromtimestamp(float(created), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stamp(entry: dict) -> tuple:
    # A checkpoint or the final save changes the status or the steps done; nothing else rewrites a run.
    return entry["run_id"], entry.get("status"), entry.get("steps_done")


def default_pick(entries: Sequence[dict]) -> list[str]:
    """The newest run and the newest runs that share its model and starting setting, at most
    ``MAX_DEFAULT_PICK``; ``entries`` newest first."""
    if not entries:
        return []
    first = entries[0]
    same = [e["run_id"] for e in entries if e.get("model_spec") == first.get("model_spec")
            and e.get("sparsify_config") == first.get("sparsify_config")]
    return same[:MAX_DEFAULT_PICK]


def newest_first(entries: Sequence[dict]) -> list[dict]:
    """Saved-run summaries newest first (the index lists them oldest first, which breaks ties)."""
    return sorted(reversed(list(entries)), key=lambda e: -float(e.get("created") or 0.0))


def _table(entries: Sequence[dict]) -> list[dict]:
    rows = []
    for e in entries:
        cfg = e.get("config") or {}
        mode = cfg.get("mode", "")
        rows.append({
            "created": _created_text(e.get("created")), "model": model_text(str(e.get("model_spec", ""))),
            "starting setting": _setting_text(e.get("sparsify_config")), "mode": MODE_LABELS.get(mode, mode),
            "steps": f"{int(e.get('steps_done') or 0):,} / {int(cfg.get('steps') or 0):,}",
            "metric": e.get("metric", ""), "before": e.get("before"), "after": e.get("after"),
            "dense": e.get("dense"), "gap recovered": e.get("gap_recovered"), "seconds": e.get("seconds"),
            "status": e.get("status", ""), "message": e.get("message", ""), "id": e["run_id"],
        })
    return rows


def load_saved(entries: Sequence[dict], labels: dict[str, str]) -> list[RecoveryRecord]:
    """The chosen runs, decoded once per (run id, status, steps done) in this session; a run that
    cannot be read gets an error naming it and is left out."""
    memo = st.session_state.setdefault(_MEMO, {})
    keep = {}

    def read(e: dict) -> RecoveryRecord:
        stamp = _stamp(e)
        record = memo.get(stamp)
        if record is None:
            record = recovery.load_recovery(e["run_id"])
        keep[stamp] = record
        return record

    records = SAVED.read(entries, read, labels)
    # Only the runs on show stay decoded: a record holds the model's weights.
    st.session_state[_MEMO] = keep
    return records


def saved_runs_view() -> None:
    """Every saved recovery run (whatever model is loaded and whatever the Sparsify page's setting):
    a table, the chosen runs reopened with ``show_records``, and a delete with confirmation."""
    SAVED.flash()
    entries = newest_first(recovery.list_recoveries())
    if not entries:
        st.session_state.pop(_MEMO, None)
        st.info("No saved recovery runs yet: switch to New recovery, prune the model on the Sparsify page, "
                "choose the modes and press Recover. Every run is saved on disk as it goes.")
        return
    by_id = {e["run_id"]: e for e in entries}
    rows = _table(entries)
    labels = {r["id"]: f"{r['mode']} · {r['model']} · {r['starting setting']} · {r['created']} · {r['id'][:6]}"
              for r in rows}
    SAVED.table(rows, {
        "before": st.column_config.NumberColumn(format="%.4g"), "after": st.column_config.NumberColumn(format="%.4g"),
        "dense": st.column_config.NumberColumn(format="%.4g"),
        "gap recovered": st.column_config.NumberColumn(format="percent"),
        "seconds": st.column_config.NumberColumn(format="%.1f")})

    shown = st.session_state.get("rc_saved_pick")
    if shown and any(r not in by_id for r in shown):  # runs another session deleted meanwhile drop out
        st.session_state["rc_saved_pick"] = [r for r in shown if r in by_id]
    picked = st.multiselect("Reopen", list(by_id), default=default_pick(entries), format_func=labels.get,
                            key="rc_saved_pick", wrap=True, help="the same figures, summary and download as a fresh run")
    SAVED.manage(list(by_id), labels)
    if not picked:
        st.info("Choose runs to reopen.")
        return
    records = load_saved([by_id[r] for r in picked], labels)
    if records:
        show_records(records, key="rc_saved", label_of=lambda r: labels.get(r.run_id, r.label), origin=True,
                     notebook=lambda pick: saved_recovery_recipe([r.run_id for r in records], layer_run=pick))


# ---------------------------------------------------------------------------------------------
# Stopped runs of the New recovery view


def batch_runs(spec: str, sparsify_config: SparsifyConfig, configs: Sequence[RecoveryConfig]) -> list[dict | None]:
    """For each config, the index summary of the newest saved run of this model, starting setting and
    recovery config, or None."""
    want = json.loads(sparsify_config.to_json())
    entries = newest_first(recovery.list_recoveries())
    out: list[dict | None] = []
    for cfg in configs:
        cj = json.loads(json.dumps(serial.to_json(cfg)))
        out.append(next((e for e in entries if e.get("model_spec") == spec and e.get("sparsify_config") == want
                         and e.get("config") == cj), None))
    return out


def _settled(spec: str, sparsify_config: SparsifyConfig, configs: Sequence[RecoveryConfig]) -> list[dict | None]:
    # A Stop press interrupts the run, which then saves itself as stopped; a fast rerun can start
    # before that save: wait for this process's running runs to settle (at most 10 s).
    me = process_token()
    deadline = time.monotonic() + 10
    while True:
        found = batch_runs(spec, sparsify_config, configs)
        if time.monotonic() > deadline or not any(e is not None and e["status"] == "running" and e.get("owner") == me
                                                   for e in found):
            return found
        time.sleep(0.1)


def resume_step(record: RecoveryRecord) -> int:
    """The step a stopped run continues from: its last evaluation on the ``eval_every`` grid (where its
    resume state was kept)."""
    every = max(record.config.eval_every, 1)
    return max([iv.step for iv in record.intervals if iv.step % every == 0 and iv.step <= record.steps_done],
               default=0)


def show_stopped(spec: str, sparsify_config: SparsifyConfig, configs: Sequence[RecoveryConfig]) -> None:
    """The runs of a stopped batch: "Stopped at step k of N" for the stopped one, what Continue will do,
    and the curves so far of every run of the batch that has started."""
    found = _settled(spec, sparsify_config, configs)
    records = []
    for cfg, entry in zip(configs, found):
        if entry is None or entry["status"] not in ("stopped", "complete", "running"):
            continue
        try:
            record = recovery.load_recovery(entry["run_id"])
        except (KeyError, ValueError):
            continue
        records.append(record)
        if record.status == "stopped":
            st.warning(f"{mode_label(record)}: stopped at step {record.steps_done:,} of {cfg.steps:,}. Continue trains "
                       f"only the steps left, from its last evaluation (step {resume_step(record):,}); the finished "
                       "run is the same as one never stopped.")
    left = [MODE_LABELS[c.mode] for c, e in zip(configs, found) if e is None or e["status"] not in
            ("stopped", "complete", "running")]
    if left:
        st.caption(f"Not started yet: {', '.join(left)} (Continue runs them after the stopped one).")
    if records:
        st.plotly_chart(viz.recovery_curves_figure(records), width="stretch", key="rc_partial")
