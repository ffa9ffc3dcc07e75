"""Streamlit pieces of the Study page: the grid forms, the backend choice, the run with progress and
Stop, and the results (figures, tables, downloads). The work is ``sparsekit.study``'s."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pandas as pd
import streamlit as st

from sparsekit import study, viz
from sparsekit.config import NM_PRESETS, nm_label
from sparsekit.methods import REGISTRY
from sparsekit.models import BUILTIN_SPECS, list_model_dirs
from sparsekit.models.digits import ARCH_LABELS
from sparsekit.recipes.study import COSTS, study_groups, study_headline
from sparsekit.study import CellRecord, StudySpec
from sparsekit.study.aggregate import metric_label
from sparsekit.training import default_train_config
from ui.format import table_view
from ui.heavy import heavy_job
from ui.long_jobs import duration_text

MODEL_LABELS = {"minilm": "MiniLM (bundled)", "digits:mlp": "Digits MLP", "digits:cnn": "Digits CNN",
                "digits:vit": "Digits ViT", "lm:small": "Small GPT-2 LM"}
TRAIN_PATTERNS = [nm_label(n, m) for n, m in NM_PRESETS[:4]]
PATTERNS = [*TRAIN_PATTERNS, "unstructured:0.3", "unstructured:0.5", "unstructured:0.7", "unstructured:0.9"]
MAX_UPLOAD_BYTES = 64 * 1024


def _pattern_label(p: str) -> str:
    if p.startswith("unstructured:"):
        return f"{float(p.split(':')[1]):.0%} unstructured"  # short: a longer chip was cut
    n, m = p.split(":")
    return f"{p} (keep {n} of {m})"


def model_choices() -> list[str]:
    """Specs a page user may put in a study: the built-in models and directories under the model roots."""
    return [*BUILTIN_SPECS, *(f"hf:{p}" for p in list_model_dirs())]


def oneshot_form() -> StudySpec | None:
    """Widgets for a one-shot grid (models × methods × patterns × seeds); None with a message when bad."""
    choices = model_choices()
    c1, c2 = st.columns(2)
    sidebar = st.session_state.get("_model_key", "").split("#", 1)[0]  # a study starts from the sidebar's model
    models = c1.multiselect("Models", choices, default=[sidebar if sidebar in choices else "minilm"], key="st_models",
                            wrap=True, format_func=lambda s: MODEL_LABELS.get(s, s.removeprefix("hf:")))
    methods = c2.multiselect("Methods", list(REGISTRY), default=["magnitude", "wanda"], key="st_methods", wrap=True,
                             format_func=lambda m: REGISTRY[m].label)
    c3, c4, c5 = st.columns([2, 1, 1])
    patterns = c3.multiselect("Patterns", PATTERNS, default=["unstructured:0.3", "unstructured:0.5",
                                                             "unstructured:0.7"], key="st_patterns", wrap=True,
                              format_func=_pattern_label)
    seeds = int(c4.number_input("Seeds", 1, 64, 4, key="st_seeds",
                                help="A seed draws the calibration subset (Wanda, SparseGPT, Taylor) or the random "
                                     "mask; magnitude does not depend on it (its interval has zero width)."))
    name = c5.text_input("Name", "one-shot study", max_chars=80, key="st_name")
    return _spec(name=name, kind="oneshot", models=tuple(models), methods=tuple(methods), patterns=tuple(patterns),
                 seeds=tuple(range(seeds)))


def training_form() -> StudySpec | None:
    """Widgets for a sparse-training grid (STE / SR-STE × N:M × λ_w × seeds on a digits model)."""
    c1, c2, c3 = st.columns(3)
    sidebar = st.session_state.get("_model_key", "").split("#", 1)[0].removeprefix("digits:")
    arch = c1.selectbox("Model", ["cnn", "mlp", "vit"], index=["cnn", "mlp", "vit"].index(sidebar)
                        if sidebar in ("cnn", "mlp", "vit") else 0, key="st_arch",
                        format_func=lambda a: f"Digits {ARCH_LABELS[a]}")
    methods = c2.multiselect("Methods", ["ste", "srste"], default=["ste", "srste"], key="st_tmethods", wrap=True,
                             format_func=lambda m: {"ste": "STE", "srste": "SR-STE"}[m])
    patterns = c3.multiselect("N:M (keep N of M)", TRAIN_PATTERNS, default=["2:4"], key="st_tpatterns", wrap=True)
    c4, c5, c6, c7 = st.columns(4)
    base = default_train_config(arch)
    epochs = int(c4.number_input("Epochs", 2, 200, max(2, base.epochs), key="st_epochs",
                                help="at least 2: late SAD and late flips are taken over the second half"))
    lam = c5.number_input("SR-STE λ_w", 0.0, 1.0, float(base.lambda_w), format="%g", key="st_lambda")
    seeds = int(c6.number_input("Seeds (paired)", 2, 64, 8, key="st_tseeds",
                                help="STE and SR-STE of one seed share initial weights and batch order."))
    name = c7.text_input("Name", "SR-STE vs STE", max_chars=80, key="st_tname")
    return _spec(name=name, kind="training", models=(), methods=tuple(methods), patterns=tuple(patterns),
                 seeds=tuple(range(seeds)), lambda_w=(float(lam),), train=replace(base, epochs=epochs))


def kv_form() -> StudySpec | None:
    """Widgets for a KV-cache grid (methods × K = V sparsities × held-out texts of a causal LM)."""
    from ui.kvcache import METHOD_TITLES, SWEEP_DEFAULT_METHODS, SWEEP_SPARSITIES  # the Attention page's names
    from sparsekit.study.kvcells import KV_METHODS, KVStudy

    c1, c2 = st.columns(2)
    sidebar = st.session_state.get("_model_key", "").split("#", 1)[0]
    causal = ["lm:small", *(s for s in model_choices() if s.startswith("hf:"))]
    model = c1.selectbox("Causal LM", causal, index=causal.index(sidebar) if sidebar in causal else 0, key="st_kv_model",
                         format_func=lambda s: MODEL_LABELS.get(s, s.removeprefix("hf:")),
                         help="the KV cache belongs to causal language models (an encoder keeps none)")
    methods = c2.multiselect("Methods", list(KV_METHODS), default=list(SWEEP_DEFAULT_METHODS), key="st_kv_methods",
                             wrap=True, format_func=METHOD_TITLES.get)
    c3, c4, c5, c6 = st.columns([2, 1, 1, 1])
    sparsities = c3.multiselect("K = V sparsity (%)", list(range(10, 100, 10)), default=list(SWEEP_SPARSITIES),
                                key="st_kv_sparsities", wrap=True,
                                help="N = kept: a vector of D entries keeps D − ⌊s·D⌋ (Mustafar); the eviction "
                                     "baselines keep as many entries as whole tokens")
    texts = int(c4.number_input("Held-out texts", 2, 64, 8, key="st_kv_texts",
                                help="each text is one seed of the study: intervals are over texts"))
    tokens = int(c5.number_input("Tokens per text", 16, 256, 128, key="st_kv_tokens"))
    window = int(c6.number_input("Dense window", 0, 64, 16, key="st_kv_window", help="Mustafar's residual_length"))
    try:
        settings = KVStudy(tokens=tokens, prompt=max(1, min(32, tokens // 4)), residual_length=window, new_tokens=0)
    except ValueError as err:
        st.error(f"Cannot build this study: {err}")
        return None
    return _spec(name=f"KV cache {model}", kind="kv", models=(model,), methods=tuple(methods),
                 patterns=tuple(f"kv:{p / 100:g}" for p in sparsities), seeds=tuple(range(texts)), kv=settings)


def uploaded_spec() -> StudySpec | None:
    """A spec file (the JSON the page's download and the CLI use)."""
    up = st.file_uploader("Study spec (.json)", type=["json"], key="st_upload",
                          help="Written by this page's 'Spec (.json)' download or by hand; the same file runs with "
                               "python -m sparsekit.study run SPEC.json")
    if up is None:
        return None
    if up.size > MAX_UPLOAD_BYTES:
        st.error(f"The spec file is {up.size:,} bytes; a spec is a few hundred (at most {MAX_UPLOAD_BYTES:,}).")
        return None
    try:
        spec = StudySpec.from_json(up.getvalue().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, TypeError, KeyError) as err:
        st.error(f"Cannot read this spec: {err}")
        return None
    allowed = set(model_choices())
    outside = [m for m in spec.models if m not in allowed]
    if outside:
        st.error(f"The spec names models this server does not offer: {', '.join(outside)}. Choose among: "
                 f"{', '.join(sorted(allowed))}.")
        return None
    return _checked(spec)


def _spec(**fields) -> StudySpec | None:
    try:
        return _checked(StudySpec(**fields))
    except (ValueError, TypeError) as err:
        st.error(f"Cannot build this study: {err}")
        return None


def _checked(spec: StudySpec) -> StudySpec | None:
    try:
        spec.validate()
    except ValueError as err:
        st.error(f"Cannot run this study: {err}")
        return None
    return spec


def backend_choice() -> tuple[str, str | None]:
    """Local by default; Ray when the server's ``SPARSEKIT_RAY_ADDRESS`` names a cluster (a browser user
    never types an address: the server connects only where its operator pointed it)."""
    address = os.environ.get("SPARSEKIT_RAY_ADDRESS", "").strip()
    if not address:
        st.caption("Runs on this server (backend `local`). To run on a Ray cluster, start the app with "
                   "`SPARSEKIT_RAY_ADDRESS=<head>:6379` (README, 'Studies').")
        return "local", None
    backend = st.radio("Run on", ["local", "ray"], index=1, horizontal=True, key="st_backend",
                       format_func=lambda b: "this server" if b == "local" else f"Ray cluster at {address}")
    if backend == "ray":
        try:
            res = study.cluster_resources(address)
        except (ConnectionError, ValueError, RuntimeError) as err:
            st.error(f"The Ray cluster at {address} cannot be reached: {err}")
            return "local", None
        st.caption(f"Cluster: {res.get('nodes', '?')} node(s), {res.get('cpus', 0):g} CPUs, "
                   f"{res.get('memory_bytes', 0) / 2**30:.1f} GiB memory for tasks" +
                   (f", {res['gpus']:g} GPUs" if res.get("gpus") else "") + ".")
    return backend, address if backend == "ray" else None


def status_text(status) -> str:
    eta = f", {duration_text(status.eta_s)} left" if status.eta_s else ""
    retries = f", {status.retries} retried" if status.retries else ""
    return (f"{status.done} of {status.total} cells done, {status.running} running, {status.failed} failed"
            f"{retries}{eta}")


def study_buttons(job: dict, where) -> object:
    """The study's one button, with a press applied: Run study when nothing is on disk, Resume study when
    some cells are (key ``st_run``), Stop while it runs (key ``st_stop``: the press reruns the page, which
    ends the run; the finished cells stay on disk).

    Returns:
        The placeholder holding the button, to clear once the run has ended in this script run.
    """
    slot = where.empty()
    stop_drawn = job["status"] == "running"
    if stop_drawn and slot.button("Stop", key="st_stop", help="keep the finished cells and show them"):
        job["status"] = "stopped"
    if job["status"] in ("idle", "stopped") and slot.button(
            "Run study" if job["status"] == "idle" else "Resume study", type="primary", key="st_run",
            help=None if job["status"] == "idle" else "compute only the cells not on disk"):
        job["status"] = "running"
    if job["status"] == "running" and not stop_drawn:
        slot.button("Stop", key="st_stop", help="keep the finished cells and show them")
    return slot


def run_study(spec: StudySpec, backend: str, address: str | None):
    """Run with a progress bar; a Stop press (a rerun) ends it, finished cells stay in the cache."""
    bar = st.progress(0.0, text=f"{spec.name}: starting…")

    def progress(status) -> None:
        bar.progress(min(status.done / max(status.total, 1), 1.0), text=f"{spec.name}: {status_text(status)}")

    try:
        with heavy_job("study", label=spec.name):
            return study.run_study(spec, backend, ray_address=address, progress=progress)
    finally:
        bar.empty()


def study_table(rows: list[dict], metrics: list[str], column_config: dict | None = None) -> dict:
    """``st.dataframe`` arguments of a study table (``table_view``): each metric's column headed by its
    label with its unit (``metric_label``), an interval of no finished value (NaN) shown as missing."""
    frame = pd.DataFrame(rows)
    for m in metrics:
        if m in frame.columns:
            frame[m] = [None if str(v).startswith("nan") else v for v in frame[m]]
    return table_view(frame, {**{m: metric_label(m) for m in metrics}, **(column_config or {})})


def results(spec: StudySpec, records: list[CellRecord]) -> tuple[str, str, str] | None:
    """Figures, tables and downloads of the finished cells; the (metric, model, Pareto cost) shown."""
    groups = study_groups(spec, records)
    failed = [r for r in records if not r.done]
    if failed:
        with st.expander(f"{len(failed)} failed cell(s)"):
            st.dataframe(**table_view(pd.DataFrame([{"model": r.model, "method": r.method, "pattern": r.pattern,
                                                     "seed": r.seed, "error": r.error} for r in failed])),
                         hide_index=True, width="stretch")
    if not groups:
        st.info("No finished cells yet.")
        return None
    metrics = list(groups[0].metrics)
    c1, c2 = st.columns(2)
    metric = c1.selectbox("Metric", metrics, key="st_metric", format_func=metric_label)
    models = list(dict.fromkeys(g.model for g in groups))
    model = c2.selectbox("Model", models, key="st_result_model") if len(models) > 1 else models[0]
    mine = [g for g in groups if g.model == model]
    cost = COSTS[0]
    if spec.kind == "oneshot":
        left, right = st.columns(2)
        left.plotly_chart(viz.study_quality_figure(mine, metric, metric_label=metric_label(metric)), width="stretch", key="st_fig_quality")
        cost = right.radio("Pareto cost", COSTS, horizontal=True, key="st_cost",
                           format_func=lambda c: "kept share" if c == "kept_fraction" else "weight memory")
        front = study.pareto_front(mine, metric, cost)
        right.plotly_chart(viz.study_pareto_figure(mine, front, metric, cost=cost,
                                                       metric_label=metric_label(metric)), width="stretch", key="st_fig_pareto")
    head = study_headline(spec, records, metric, model, cost)
    if spec.kind == "oneshot":
        st.subheader("Best method per pattern")
        st.dataframe(**study_table(head["best"], metrics, {"best": "best method"}), hide_index=True, width="stretch")
    else:
        st.plotly_chart(viz.study_interval_figure(mine, metric, metric_label=metric_label(metric)), width="stretch", key="st_fig_interval")
    if head["differences"]:
        st.subheader("Paired differences (same seeds)")
        for sentence in head["differences"]:
            st.caption(sentence)
    st.subheader("Every setting")
    st.dataframe(**study_table(head["settings"], metrics, {"kept share": st.column_config.NumberColumn(
        "kept share", format="percent", help="kept share of the prunable weights")}), hide_index=True, width="stretch")
    d1, d2, d3, d4 = st.columns(4)
    stem = spec.name.replace(" ", "_").replace("/", "_")
    d1.download_button("Records (.csv)", study.records_csv(records), f"{stem}-records.csv", mime="text/csv",
                       on_click="ignore", key="st_dl_records")
    d2.download_button("Summary (.csv)", study.summary_csv(groups), f"{stem}-summary.csv", mime="text/csv",
                       on_click="ignore", key="st_dl_summary")
    d3.download_button("Everything (.json)", lambda: study.export(spec, "json"), f"{stem}.json",
                       mime="application/json", on_click="ignore", key="st_dl_json")
    d4.download_button("Spec (.json)", json.dumps(json.loads(spec.to_json()), indent=1), f"{stem}-spec.json",
                       mime="application/json", on_click="ignore", key="st_dl_spec_results")
    return metric, model, cost
