"""Benchmarks: does the sparsity actually run faster, at these shapes, on this hardware?"""
import json
from dataclasses import asdict, replace

import pandas as pd
import streamlit as st
import torch

from sparsekit import viz
from sparsekit.bench import (
    BenchConfig,
    BenchRun,
    delete_run,
    list_runs,
    load_run,
    results_csv,
    run_benchmarks,
    save_run,
    stored_run,
)
from sparsekit.bench.kv_suite import DEFAULT_SPARSITIES, DEFAULT_WINDOW, kv_summary, kv_verdicts
from sparsekit.bench.runner import CUDA_ONLY, SUITES
from sparsekit.bench.suites import semi_structured_available
from sparsekit.layers import prunable_layers
from sparsekit.recipes.benchmarks import FAILED_STATUSES, benchmarks_headline, benchmarks_recipe
from ui.format import table_view
from ui.heavy import heavy_job
from ui.long_jobs import ResumedProgress, job_buttons, job_state
from ui.notebook import notebook_button
from ui.state import get_model

st.title("Benchmarks")
st.markdown(
    "Fewer FLOPs is not the same as faster: a sparse kernel must also read indices or metadata, "
    "run at the tile sizes its hardware likes, and beat a dense kernel that is already near the "
    "machine's peak. 2:4 sparse tensor cores pay off on large enough matrices, CSR and BSR only at "
    "high sparsity, block-sparse attention when whole blocks are empty. Every case below is first "
    "checked against the dense result, then timed (median of repeats, inputs rotated)."
)

cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
why_not = semi_structured_available(device)
if not cuda:
    st.info("No CUDA device here: the CPU suites (CSR/BSR, FlexAttention) run on this machine; "
            + ", ".join(f"**{k}** ({v})" for k, v in CUDA_ONLY.items())
            + " need an NVIDIA GPU. On a GPU server, `bash scripts/gpu_bench.sh gpu.json` runs every suite "
              "(under 8 minutes) and writes a file to import below.")
elif why_not:
    st.warning(f"2:4 suites unavailable on this GPU: {why_not}")

DENSITIES, SEQ_LENS, BATCHES = [0.01, 0.05, 0.1, 0.3, 0.5], [512, 1024, 2048], [1, 16, 256, 2048]
SUITE_LABELS = {"linear": "Linear: dense vs 2:4", "formats": "CSR / BSR vs dense",
                "attention": "FlexAttention block-sparse vs SDPA", "model": "Whole MiniLM: dense vs 2:4",
                "kv": "KV-cache decode: CSR / masked vs SDPA"}
KV_LENS = [1024, 4096, 16384]
KV_SHAPES = {"12 heads × 64 (GPT-2 small, small LLaMA)": (12, 64), "4 heads × 32 (lm:small)": (4, 32)}
KV_EXPLAINED = (
    "One decode step: a single query token (batch 1) attends to a cache of L tokens. K and V are pruned per "
    "token by magnitude (`sparsekit.kvcache.token_mask`: each vector of D keeps D − ⌊s·D⌋ entries; the most "
    "recent *window* tokens stay dense). Timed against **dense SDPA on the full cache**: **masked dense** (the "
    "same SDPA on the zeroed cache: the same FLOPs and bytes, so zeros alone buy nothing) and **CSR** "
    "(K in CSR times q, softmax, then Vᵀ in CSR times the weights: two torch CSR × vector products, all heads "
    "in one block-diagonal matrix); on CUDA also `torch.bmm` with batched CSR. Each kernel is checked against "
    "a float64 recomputation first. Masked dense does the dense kernel's work, so its verdicts show how often "
    "this machine's noise alone reads as a difference. The memory of K + V is shown as dense, bitmap + values "
    "(Mustafar's layout) and CSR, at the timed dtype.")


def measured_on(run: BenchRun) -> None:
    env = run.env
    wall = f" · {env['wall_s']:g} s" if isinstance(env.get("wall_s"), (int, float)) else ""
    st.caption(f"Measured on **{env.get('device_name', env.get('device'))}** · torch {env.get('torch')} · "
               f"{'CUDA ' + str(env['cuda']) if env.get('cuda') else 'no CUDA'} · {env.get('threads')} CPU threads · "
               f"{env.get('measured_at', '')}{wall}")


def show_cases(run: BenchRun, head: dict, key: str, where: str) -> None:
    """The figures, the 2:4 verdicts and the table of every case (a stopped run's: the finished cases)."""
    failed = [r for r in run.results if r.status in FAILED_STATUSES]
    if failed:
        st.error(f"{len(failed)} case(s) did not produce a valid timing: "
                 + "; ".join(f"{r.case} {r.backend}: {r.message}" for r in failed[:5]))
    late = [r for r in run.results if r.status == "skipped" and "time budget" in r.message]
    if late:
        st.warning(f"{len(late)} case(s) were not run: the run's time budget "
                   f"({run.env.get('time_budget_s', '?')} s) was spent. They are listed as skipped below.")
    figures = viz.bench_figures(run.results)
    for suite, fig in figures.items():
        st.plotly_chart(fig, width="stretch", key=f"fig_{suite}_{where}_{key}")
    kv = kv_verdicts(run.results)
    if kv:
        st.subheader("KV-cache decode: verdict per case")
        st.markdown("\n".join(f"- {line}" for line in kv_summary(run.results)))
        st.caption("speedup = dense SDPA time / kernel time; range = dense q1 / kernel q3 to dense q3 / kernel q1 "
                   "(the interquartile ranges); *faster* or *slower* only when the whole range is on one side of 1. "
                   "Memory: K and V together.")
        st.dataframe(pd.DataFrame(kv), hide_index=True, key=f"kv_verdicts_{where}_{key}")
    if "linear" in figures and head["verdicts"]:
        st.subheader("2:4 verdict per Linear shape")
        st.dataframe(pd.DataFrame(head["verdicts"]), hide_index=True, key=f"verdicts_{where}_{key}")
    st.subheader("All cases")
    frame = pd.DataFrame([r.as_row() for r in run.results])
    show = [c for c in ["suite", "case", "backend", "status", "median_ms", "iqr_ms", "speedup", "baseline_ms",
                        "rel_error", "achieved_tflops", "achieved_gbps", "message"] if c in frame.columns]
    params = [c for c in frame.columns if c.startswith("p_")]
    st.dataframe(**table_view(frame[show + params]), hide_index=True, height=320, key=f"cases_{where}_{key}")


def show_run(run: BenchRun, key: str, where: str, config: BenchConfig | None = None, spec: str = "") -> None:
    head = benchmarks_headline(run)
    if not run.complete:  # a file a stopped CLI run wrote
        st.warning(f"This run was stopped after {run.cases_done} of {run.cases_total} cases: it holds the finished "
                   "ones. The same `python -m sparsekit.bench` command, run again, measures only the rest.")
    measured_on(run)
    c = run.ceilings
    if head["ceilings"]:
        a, b = st.columns(2)
        a.metric("Dense matmul ceiling (measured now)", head["ceilings"]["matmul"],
                 help=f"{c.get('matmul_dtype')} {c.get('matmul_n')}³ matmul")
        b.metric("Copy bandwidth (measured now)", head["ceilings"]["copy"])
    notebook_button(benchmarks_recipe(run, key, config, spec=spec), key=f"nb_{where}_{key}")
    show_cases(run, head, key, where)
    d1, d2, d3 = st.columns(3)
    d1.download_button("Results (.json)", run.to_json(), "sparsekit-bench.json", mime="application/json",
                       key=f"dl_json_{where}_{key}")
    d2.download_button("Results (.csv)", results_csv(run), "sparsekit-bench.csv", mime="text/csv", key=f"dl_csv_{where}_{key}")
    if d3.button("Delete from history", key=f"del_{where}_{key}"):
        delete_run(key)
        st.session_state.pop("bench_last", None)
        st.rerun()


def run_here(config: BenchConfig, model, spec: str) -> bool:
    """The run of these settings: its button (Run, Stop while it runs, Continue once stopped), the run itself,
    and a stopped run's finished cases. Returns whether a stopped run is shown."""
    job = job_state("bench_jobs", f"{spec}|{json.dumps(asdict(replace(config, time_budget_s=None)))}")
    partial = None
    try:
        if job["status"] == "idle":
            # Cases a stopped run (this session's, another's, or one before a reload) kept on disk show at once.
            partial = stored_run(config, loaded=model)
            if partial is not None:
                job["status"] = "stopped"
    except ValueError as err:
        st.error(f"Cannot run these settings: {err}")
        return False
    slot = job_buttons(job, st, "bench", "Run benchmarks", "cases")
    if job["status"] == "running":
        bar = ResumedProgress("Measuring", counts=lambda message: "ceilings" not in message)
        try:
            # Each case is stored as it finishes: a Stop press (a rerun), a closed tab or an error keeps them.
            with heavy_job("benchmark"):
                run = run_benchmarks(config, loaded=model, progress=bar)
        except (ValueError, torch.OutOfMemoryError) as err:
            job["status"] = "idle"
            bar.empty()
            st.error(f"{'Out of memory' if isinstance(err, torch.OutOfMemoryError) else 'Cannot run these settings'}: "
                     f"{err}")
            return False
        bar.empty()
        slot.empty()
        if run.complete:
            job["status"] = "idle"
            st.session_state["bench_last"] = saved = save_run(run)
            st.session_state.setdefault("bench_configs", {})[saved] = (config, spec)
            st.rerun()  # drawn again idle: the Run button (for a fresh run) above the finished run
        job["status"], partial = "stopped", run
        slot.button("Continue", key="bench_continue", help="carry on from the cases already measured")
    if job["status"] != "stopped":
        return False
    if partial is None:
        partial = stored_run(config, loaded=model)
    if partial is None or not partial.results:
        st.info("The run was stopped before its first case finished; Continue starts it.")
        return True
    st.warning(f"Stopped after {partial.cases_done} of {partial.cases_total} cases. The figures and the table show "
               "the finished cases; Continue measures only the rest (each finished case is kept on disk).")
    measured_on(partial)
    show_cases(partial, benchmarks_headline(partial), "partial", "stopped")
    return True


run_tab, history_tab, import_tab = st.tabs(["Run here", "History", "Import results"])

with run_tab:
    available = list(SUITES) if (cuda and not why_not) else [s for s in SUITES if s not in CUDA_ONLY]
    suites = st.multiselect("Suites", available, default=[s for s in ("formats", "attention") if s in available],
                            format_func=SUITE_LABELS.get, key="bench_suites", bind="query-params", wrap=True)
    # Each suite's settings only while it is chosen; "page" keeps a hidden setting for when it returns.
    keep = dict(persist_state="page")
    size, densities, seq_lens, window, batches, use_model = 2048, DENSITIES, SEQ_LENS, 64, BATCHES, True
    gpu = [s for s in suites if s in CUDA_ONLY]
    kv_lens, kv_sparsities, kv_shapes, kv_window = KV_LENS, list(DEFAULT_SPARSITIES), list(KV_SHAPES), DEFAULT_WINDOW
    shown = [g for g in ("formats", "attention", "kv") if g in suites] + (["gpu"] if gpu else [])
    col = dict(zip([*shown, "all"], st.columns(len(shown) + 1)))
    if "formats" in col:
        col["formats"].markdown("**CSR / BSR**")
        size = col["formats"].select_slider("Matrix size (n×n)", [512, 1024, 2048, 4096, 8192], 2048,
                                            key="bench_size", **keep)
        densities = col["formats"].multiselect("Densities (kept fraction)", [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5,
                                                                             0.7, 1.0],
                                               default=DENSITIES, key="bench_densities", wrap=True, **keep)
    if "attention" in col:
        col["attention"].markdown("**Attention**")
        seq_lens = col["attention"].multiselect("Lengths (tokens)", [256, 512, 1024, 2048, 4096, 8192],
                                                default=SEQ_LENS, key="bench_seq", wrap=True, **keep)
        window = int(col["attention"].number_input("Sliding window (tokens)", 1, 8192, 64, key="bench_window", **keep))
    if "kv" in col:
        col["kv"].markdown("**KV cache (decode)**")
        kv_lens = col["kv"].multiselect("Cached tokens L", [64, 256, 1024, 2048, 4096, 8192, 16384, 32768],
                                        default=KV_LENS, key="bench_kv_lens", wrap=True, **keep)
        kv_sparsities = col["kv"].multiselect("K/V sparsity", [0.3, 0.5, 0.6, 0.7, 0.8, 0.9],
                                              default=list(DEFAULT_SPARSITIES), key="bench_kv_sparsities", wrap=True,
                                              **keep)
        kv_shapes = col["kv"].multiselect("Heads × head dim", list(KV_SHAPES), default=list(KV_SHAPES),
                                          key="bench_kv_shapes", wrap=True, **keep)
        kv_window = int(col["kv"].number_input("Dense window (recent tokens)", 0, 4096, DEFAULT_WINDOW,
                                               key="bench_kv_window", **keep))
    if "gpu" in col:
        col["gpu"].markdown("**2:4 on the GPU**")
        batches = col["gpu"].multiselect("Batch sizes (linear/model)", [1, 8, 16, 64, 256, 512, 2048, 8192],
                                         default=BATCHES, key="bench_batches", wrap=True, **keep)
        use_model = col["gpu"].checkbox("Add the loaded model's Linear shapes", value=True, key="bench_model_shapes",
                                        **keep)
    with col["all"]:
        st.markdown("**Every suite**")
        repeats = int(st.number_input("Timed repeats", 3, 200, 10, key="bench_repeats"))
        budget = float(st.number_input("Time budget (s)", 1, 3600, 300, key="bench_budget",
                                       help="cases that would start after this many seconds are listed as "
                                            "skipped instead of run"))
    if not cuda:
        st.caption("Batch sizes and the loaded model's Linear shapes belong to the 2:4 suites, which need an NVIDIA "
                   "GPU; they appear here on a machine with one.")
    loaded, _ = get_model()
    layer_shapes = ()
    if use_model and loaded is not None:
        layer_shapes = tuple(sorted({(int(m.weight.shape[0]), int(m.weight.shape[1]))
                                     for _, m in prunable_layers(loaded.module)
                                     if m.weight.dim() == 2 and m.weight.shape[1] % 4 == 0}))[:8]
    model = loaded if loaded is not None and loaded.kind == "encoder" else None
    problem = ("Pick at least one suite." if not suites else
               "Pick at least one density for CSR/BSR." if "formats" in suites and not densities else
               "Pick at least one attention length." if "attention" in suites and not seq_lens else
               "Pick at least one batch size." if any(s in suites for s in CUDA_ONLY) and not batches else "")
    problem = problem or ("" if "kv" not in suites else
                          "Pick at least one cache length for the KV suite." if not kv_lens else
                          "Pick at least one K/V sparsity." if not kv_sparsities else
                          "Pick at least one heads × head dim shape." if not kv_shapes else "")
    if "kv" in suites:
        st.caption(KV_EXPLAINED)
    stopped_shown = False
    if problem:
        if st.button("Run benchmarks", key="bench_run"):
            st.error(problem)
    else:
        config = BenchConfig(suites=tuple(suites), device=device, formats_shape=(size, size),
                             densities=tuple(sorted(densities)), seq_lens=tuple(sorted(seq_lens)), window=window,
                             batches=tuple(sorted(batches)), repeats=repeats, layer_shapes=layer_shapes,
                             kv_lens=tuple(sorted(kv_lens)), kv_sparsities=tuple(sorted(kv_sparsities)),
                             kv_shapes=tuple(KV_SHAPES[s] for s in kv_shapes), kv_window=kv_window,
                             time_budget_s=budget)
        spec = model.spec if model is not None and "model" in suites else ""
        stopped_shown = run_here(config, model if "model" in suites else None, spec)
    last = st.session_state.get("bench_last")
    if not stopped_shown and last and (run := load_run(last)) is not None:
        show_run(run, last, "run", *st.session_state.get("bench_configs", {}).get(last, (None, "")))

with history_tab:
    runs = list_runs()
    if not runs:
        st.caption("No stored runs yet. Runs made here and imported files are kept in the disk cache.")
    else:
        titles = dict(runs)
        pick = st.selectbox("Stored run", list(titles), format_func=titles.get, key="bench_history")
        run = load_run(pick)
        if run is not None:
            show_run(run, pick, "history", *st.session_state.get("bench_configs", {}).get(pick, (None, "")))

with import_tab:
    st.caption("JSON written by `python -m sparsekit.bench --out FILE` (e.g. on a GPU server).")
    up = st.file_uploader("Benchmark results (.json)", type=["json"], key="bench_import")
    if up is not None:
        try:
            imported = BenchRun.from_json(up.getvalue())
        except ValueError as err:
            st.error(f"Cannot import {up.name}: {err}")
        else:
            key = save_run(imported)
            st.success(f"Imported {len(imported.results)} results from {up.name} into the history.")
            show_run(imported, key, "import")
