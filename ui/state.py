"""The sidebar model picker, the model every page shares, and the shared store of sparsified models
(with their quality and the timings behind the duration estimates)."""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import streamlit as st

import sparsekit
from sparsekit.cache import cache_problem
from sparsekit.models import BUILTIN_SPECS, list_model_dirs, model_roots
from sparsekit.methods.cost import estimate_seconds
from sparsekit.models.digits import digits_model_cached, trained_digits_model
from sparsekit.methods import get_method
from sparsekit.layers import prunable_layers
from sparsekit.sparsify import SparsifyConfig
from ui import preload
from ui.cached import loaded_model, model_quality
from ui.format import KIND_LABELS
from ui.heavy import heavy_job
from ui.long_jobs import EstimatingProgress
from ui.widgets import linked, start_link_notice

TIMING_LOG = logging.getLogger("sparsekit.timing")
"""Server-side seconds of each sparsify, quality pass and page run; printed to stderr when the server
runs with ``SPARSEKIT_LOG_TIMINGS=1`` (``benchmarks/bench_browser.py`` reads them from the log)."""

SOURCES = {
    "minilm": "MiniLM-L6-v2 (bundled)",  # short: the sidebar cut the longer label
    "digits:mlp": "Digits MLP (shipped, 8×8 digits)",
    "digits:cnn": "Digits CNN (shipped, 8×8 digits)",
    "digits:vit": "Digits ViT (shipped, 8×8 digits)",
    "lm:small": "Small GPT-2 LM (shipped)",
    "hf": "Hugging Face directory",
    "upload": "Upload weights (.safetensors)",
}
UPLOAD_ARCHS = [s for s in BUILTIN_SPECS]
MAX_UPLOAD_MB = 512


class _Results:
    """Sparsified models shared (read-only) by every session: an LRU of ``SparsifyResult``s.

    Kept outside ``st.cache_resource``'s own memoisation so that a slow method (SparseGPT, Wanda,
    Taylor) can draw per-layer progress while it runs; Streamlit cannot replay element calls made
    inside a cached function. A per-key lock makes concurrent sessions wait for one computation.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def key_lock(self, key) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                old, _ = self._items.popitem(last=False)
                self._key_locks.pop(old, None)


@st.cache_resource(show_spinner=False)
def _results() -> _Results:
    return _Results(size=8)


@st.cache_resource(show_spinner=False)
def _timings() -> dict[tuple[str, str], float]:
    """(model key, method) -> seconds the last sparsify of that model with that method took."""
    return {}


@st.cache_resource(show_spinner=False)
def _prefetched() -> dict[tuple[str, str], Future]:
    """(model key, config JSON) -> the quality of a setting the background warm-up computes (``warm_up``)."""
    return {}


def is_computed(model_key: str, config: SparsifyConfig) -> bool:
    """Whether this model's result for ``config`` is in the shared result store (showing it is free)."""
    return _results().get((model_key, config.to_json())) is not None


def estimated_duration(model_key: str, loaded, config: SparsifyConfig) -> float | None:
    """Seconds a first ``config`` on this model should take (sparsify, then a quality pass), from the
    speed of this model's last quality pass (``sparsekit.methods.cost``); None before any pass or for
    a model whose quality is not counted in tokens."""
    quality_seconds = _timings().get((model_key, "quality"))
    tokens = loaded.info.get("n_eval_tokens")
    if quality_seconds is None or not tokens:
        return None
    per_token = quality_seconds / tokens
    return estimate_seconds(loaded.module, config, loaded.calibration, per_token) + quality_seconds


def last_duration(model_key: str, method: str) -> float | None:
    """Seconds the last new setting of this model with this method took: its sparsify plus the
    model's last quality pass (None: not run yet)."""
    timings = _timings()
    if (model_key, method) not in timings:
        return None
    return timings[(model_key, method)] + timings.get((model_key, "quality"), 0.0)


ARCH_NAMES = {"mlp": "MLP", "cnn": "CNN", "vit": "ViT"}


def _train_with_progress(arch: str) -> None:
    # Training runs outside the cached loader so its progress can be drawn (in the main area, where
    # the user looks); the loader then finds the weights in the disk cache.
    name = f"digits {ARCH_NAMES.get(arch, arch)}"
    bar = st.progress(0.0, text=f"Training the {name} (only when its shipped weights are missing)…")
    start = time.perf_counter()

    def progress(fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        elapsed = time.perf_counter() - start
        left = f" · about {elapsed / fraction - elapsed:,.0f} s left" if 0.05 <= fraction < 1 else ""
        bar.progress(fraction, text=f"Training the {name}: {message}{left}")

    with heavy_job("training", label=name):
        trained_digits_model(arch, progress=progress)
    bar.empty()


def _pick_source() -> tuple[str | None, bytes | None]:
    """The sidebar widgets: (model spec, uploaded weights), or (None, None) with a hint drawn."""
    st.header("Model for all pages", help="Every page works on the model picked here.")
    source = linked("model_source", True, "not a model source (a link names one by its label: "
                    + "; ".join(SOURCES.values()) + ")",
                    lambda: st.selectbox("Source", list(SOURCES), format_func=SOURCES.get, key="model_source",
                                         bind="query-params"), SOURCES.get)
    if source == "hf":
        dirs = [str(p) for p in list_model_dirs()]
        roots = [str(r) for r in model_roots()]
        if not roots:
            st.info("No model roots are configured. Set SPARSEKIT_MODEL_ROOTS to folders of "
                    "Hugging Face models to load them here.")
            return None, None
        choice = st.selectbox("Model directory", dirs, index=None, placeholder="pick a folder under the roots",
                              key="hf_choice")
        typed = st.text_input("…or a path under the roots", key="hf_path", max_chars=400,
                              help="Allowed roots: " + ", ".join(roots))
        path = typed.strip() or choice
        if not path:
            st.caption("Allowed roots: " + ", ".join(roots))
            return None, None
        return f"hf:{path}", None
    if source == "upload":
        arch = st.selectbox("Architecture of the weights", UPLOAD_ARCHS, key="upload_arch")
        up = st.file_uploader("Weights (.safetensors)", type=["safetensors"], key="upload_file",
                              help=f"Only safetensors (no pickles); at most {MAX_UPLOAD_MB} MB.")
        if up is None:
            st.caption("Upload a .safetensors state dict for the chosen architecture.")
            return None, None
        if up.size > MAX_UPLOAD_MB * 2**20:
            st.session_state["_model_error"] = (f"The file is {up.size / 2**20:,.0f} MB, over the "
                                                f"{MAX_UPLOAD_MB} MB upload limit.")
            return None, None
        return arch, up.getvalue()
    return source, None


def sidebar_model():
    """Draw the model picker in the sidebar; returns (LoadedModel or None, model key).

    A load that fails leaves its message in ``st.session_state["_model_error"]``: the page shows it
    in the main area (``require_model``), the narrow sidebar only a short line.
    """
    st.session_state.pop("_model_error", None)
    start_link_notice()  # the top of the main area: the warning naming the link's ignored values
    with st.sidebar:
        spec, weights = _pick_source()
        status = st.empty()
        problem = cache_problem()
        if problem:  # the library warned once in the server's log; the page says it here, on every run
            st.info(f"Running without the disk cache ({problem}). Everything works, but results are kept in "
                    "this server's memory only and computed again after a restart.", icon=":material/storage:")
    if spec is None:
        if "_model_error" in st.session_state:
            status.error("Could not load the model: see the message on the page.")
        return None, ""
    digest = hashlib.sha256(weights).hexdigest() if weights is not None else ""
    if spec.startswith("digits:") and not digits_model_cached(spec.split(":", 1)[1]):
        _train_with_progress(spec.split(":", 1)[1])
    try:
        with st.spinner(f"Loading {SOURCES.get(spec, spec)}…"):
            loaded = loaded_model(spec, digest, weights)
    except Exception as err:  # a bad file or folder must not take the app down
        what = "" if isinstance(err, (ValueError, OSError)) else f" ({type(err).__name__})"
        st.session_state["_model_error"] = f"Could not load the model{what}: {err}"
        status.error("Could not load the model: see the message on the page.")
        return None, ""
    status.caption(f"**{loaded.name}** · {KIND_LABELS.get(loaded.kind, loaded.kind)} · "
                   f"{loaded.n_params / 1e6:,.2f} M parameters")
    return loaded, f"{spec}#{digest}"


def get_model():
    """The model chosen in the sidebar (drawn once per run by app.py)."""
    return st.session_state.get("_loaded"), st.session_state.get("_model_key", "")


def require_model():
    """Like ``get_model``, but stops the page with a hint when no model is loaded."""
    loaded, key = get_model()
    if loaded is None:
        error = st.session_state.get("_model_error")
        if error:
            st.error(error)
        else:
            st.info("Choose a model in the sidebar.")
        st.stop()
    return loaded, key


def sparsified(model_key: str, loaded, config: SparsifyConfig):
    """Cached SparsifyResult for this model and config; shared read-only between sessions.

    The calibrated methods draw a progress bar (per layer) while they run; an interrupted run
    (the user changed a setting) stores nothing.
    """
    store = _results()
    key = (model_key, config.to_json())
    hit = store.get(key)
    if hit is not None:
        return hit
    with store.key_lock(key):
        hit = store.get(key)  # another session may have finished it while this one waited
        if hit is not None:
            return hit
        bar = None
        if get_method(config.method).needs_calibration and config.pattern != "dense":
            bar = EstimatingProgress(f"Pruning a copy of {loaded.name} ({config.label()})")

        def progress(fraction: float, message: str) -> None:
            if bar is not None:
                bar(fraction, message)

        start = time.perf_counter()
        try:
            with heavy_job("sparsify", loaded, method=config.method, label=config.label()):
                result = sparsekit.sparsify(loaded, config, progress=progress)
        finally:
            if bar is not None:
                bar.empty()
        seconds = time.perf_counter() - start
        TIMING_LOG.info("sparsify %s %.3f s", config.label(), seconds)
        if config.pattern != "dense":
            _timings()[(model_key, config.method)] = seconds
        store.put(key, result)
        return result


def sparse_quality(model_key: str, loaded, config: SparsifyConfig) -> dict[str, float]:
    """Cached quality of the sparsified model (a small dict, kept for many configs)."""

    def measured(seconds: float) -> None:  # only when the pass ran, not on a cache hit
        TIMING_LOG.info("quality %s %.3f s", config.label(), seconds)
        _timings()[(model_key, "quality")] = seconds

    pending = _prefetched().get((model_key, config.to_json()))
    if pending is not None:
        if pending.cancel():  # the warm-up has not begun it: this page computes it now
            _prefetched().pop((model_key, config.to_json()), None)
        else:  # begun or done: wait for that pass instead of running a second one
            try:
                return dict(pending.result())
            except Exception:  # noqa: BLE001 (measured below, where an error is shown)
                pass
    return model_quality(model_key, config.to_json(), loaded, sparsified(model_key, loaded, config), measured)


WARM_MAX_WEIGHTS = 50_000_000
"""The warm-up computes the Sparsify page's default setting only for models the page updates live."""


def warm_up(loaded, model_key: str) -> bool:
    """After the first page of a preloading server (``ui.preload``) was drawn, in the background: compute
    the Sparsify page's default setting (2:4 magnitude) with its quality and the Masks page's default
    comparison (2:4 random) for this model, into the shared stores the pages read, then import the
    libraries of the other pages. A page that asks for the quality meanwhile waits for the pass begun
    instead of running a second one, or takes it over if it has not begun. Returns whether it was
    scheduled (once per process; never in a process that does not preload, such as AppTest runs)."""
    if loaded is None or not preload.started() or preload.warm_scheduled():
        return False
    shown = SparsifyConfig()
    configs = [c for c in (shown, replace(shown, method="random")) if _results().get((model_key, c.to_json())) is None]
    small = sum(int(m.weight.numel()) for _, m in prunable_layers(loaded.module)) <= WARM_MAX_WEIGHTS
    key = (model_key, shown.to_json())
    store, timings, pending = _results(), _timings(), _prefetched()
    measure = small and shown in configs and key not in pending
    future: Future = Future()

    def task() -> None:
        if small and configs:
            prefetch(measure and future.set_running_or_notify_cancel())  # False: a page took it over
        preload.warm_imports(preload.page_libraries(Path(__file__).resolve().parents[1]))

    def prefetch(with_quality: bool) -> None:
        try:
            for config in configs:
                with store.key_lock((model_key, config.to_json())):
                    if store.get((model_key, config.to_json())) is None:
                        start = time.perf_counter()
                        result = sparsekit.sparsify(loaded, config, progress=False)
                        timings[(model_key, config.method)] = time.perf_counter() - start
                        store.put((model_key, config.to_json()), result)
                if config is shown and with_quality:
                    start = time.perf_counter()
                    quality = loaded.quality(store.get(key).model)
                    timings[(model_key, "quality")] = time.perf_counter() - start
                    TIMING_LOG.info("warm-up quality %s %.3f s", config.label(), timings[(model_key, "quality")])
                    future.set_result(quality)
        except BaseException as err:  # the pages compute it themselves and show the error
            if with_quality and not future.done():
                future.set_exception(err)

    if measure:
        pending[key] = future
    scheduled = preload.after_first_page(task)
    if not scheduled and measure:
        pending.pop(key, None)
    return scheduled
