"""The Training page's stopped runs: the wait for an interrupted run to save itself, the runs a Train press
asked for, and for the form's settings each stopped run ("Stopped at step k of N"), its curves so far and the
Continue button (``training.run_and_save`` continues a stopped run from its last finished epoch)."""
from __future__ import annotations

import json
import time
from functools import lru_cache

import streamlit as st

from sparsekit import serial, training, viz
from sparsekit.models.digits import DigitsData, digits_split
from sparsekit.training import RunRecord, TrainConfig


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
            "with status 'stopped' (see Saved runs), and Continue below carries it on from its last finished epoch.")


@lru_cache(maxsize=1)
def _split() -> DigitsData:
    """The digits split every training run of the page uses (read only; 0.1 s a call otherwise)."""
    return digits_split()


def _config_id(cfg: TrainConfig) -> str:
    return json.dumps(serial.to_json(cfg), sort_keys=True)


def start_batch(configs: list[TrainConfig]) -> None:
    """Remember the runs a Train press asked for: those not finished are offered to Continue."""
    st.session_state["tr_pending"] = [_config_id(c) for c in configs]


def finished(cfg: TrainConfig) -> None:
    pending = st.session_state.get("tr_pending", [])
    st.session_state["tr_pending"] = [c for c in pending if c != _config_id(cfg)]


def stopped_runs(configs: list[TrainConfig]) -> tuple[list[RunRecord], list[TrainConfig]]:
    """The form's runs to continue: ``(stopped runs with a resume state, configs to train)``; the configs
    are those stopped runs' and the ones a Train press of this session asked for and did not finish."""
    data = _split()
    pending = set(st.session_state.get("tr_pending", []))
    stopped, todo = [], []
    for cfg in configs:
        record = training.resumable_run(cfg, data)
        if record is not None:
            stopped.append(record)
        if record is not None or _config_id(cfg) in pending:
            todo.append(cfg)
    return stopped, todo


def continue_panel(configs: list[TrainConfig]) -> list[TrainConfig]:
    """For the form's settings: each stopped run ("Stopped at step k of N", from which epoch Continue goes
    on), their curves so far, and the Continue button.

    Returns:
        The configs to train now (Continue pressed), else an empty list.
    """
    stopped, todo = stopped_runs(configs)
    if not todo:
        return []
    for rec in stopped:
        spe = max(rec.steps_per_epoch, 1)
        epoch = rec.steps_done // spe
        st.warning(f"{rec.label}: stopped at step {rec.steps_done:,} of {rec.total_steps:,}. Continue trains only "
                   f"the remaining epochs, from the end of epoch {epoch} (step {epoch * spe:,}); the finished run is "
                   "the same as one never stopped.", icon=":material/pause_circle:")
    fresh = [c.label() for c in todo if all(r.config != c for r in stopped)]
    if fresh:
        st.caption(f"Not trained yet: {', '.join(fresh)} (Continue trains {'them' if len(fresh) > 1 else 'it'} "
                   "from the start).")
    if stopped:
        st.plotly_chart(viz.training_curves_figure(stopped), key="tr_stopped_curves")
    if st.button("Continue", type="primary", key="tr_continue",
                 help="carry on the stopped runs from their last finished epoch, then train the rest"):
        return todo
    return []
