"""The sidebar model picker and the cached objects every page shares."""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

import streamlit as st

import sparsekit
from sparsekit.models import BUILTIN_SPECS, list_model_dirs, model_roots
from sparsekit.models.digits import digits_model_cached, trained_digits_model
from sparsekit.sparsify import CALIBRATED_METHODS, SparsifyConfig

SOURCES = {
    "minilm": "MiniLM (all-MiniLM-L6-v2, bundled)",
    "digits:mlp": "Digits MLP (shipped, 8×8 digits)",
    "digits:cnn": "Digits CNN (shipped, 8×8 digits)",
    "digits:vit": "Digits ViT (shipped, 8×8 digits)",
    "hf": "Hugging Face directory",
    "upload": "Upload weights (.safetensors)",
}
UPLOAD_ARCHS = [s for s in BUILTIN_SPECS]
MAX_UPLOAD_MB = 512


@st.cache_resource(show_spinner=False, max_entries=6)
def _load(spec: str, weights_digest: str = "", _weights: bytes | None = None):
    # The digest is the cache key for uploads; the bytes themselves are not hashed by Streamlit.
    # Browser users may reach the hub only when the server allows it explicitly.
    # (No progress callback: Streamlit cannot replay element calls made inside a cached function.)
    return sparsekit.load_model(spec, weights=_weights, allow_hub=os.environ.get("SPARSEKIT_ALLOW_HUB") == "1")


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


@st.cache_data(show_spinner=False, max_entries=256)
def _quality(model_key: str, config_json: str, _loaded, _result) -> dict[str, float]:
    return _loaded.quality(_result.model)


def _train_with_progress(arch: str) -> None:
    # Training runs outside the cached loader so its progress can be drawn; the loader then
    # finds the weights in the disk cache.
    bar = st.progress(0.0, text=f"Training the digits {arch.upper()} (first use only)…")
    trained_digits_model(arch, progress=lambda f, msg: bar.progress(min(max(float(f), 0.0), 1.0), text=msg))
    bar.empty()


def sidebar_model():
    """Draw the model picker in the sidebar; returns (LoadedModel or None, model key)."""
    with st.sidebar:
        st.header("Model")
        source = st.selectbox("Source", list(SOURCES), format_func=SOURCES.get, key="model_source")
        weights = None
        spec = source
        if source == "hf":
            dirs = [str(p) for p in list_model_dirs()]
            roots = [str(r) for r in model_roots()]
            if not roots:
                st.info("No model roots are configured. Set SPARSEKIT_MODEL_ROOTS to folders of "
                        "Hugging Face models to load them here.")
                return None, ""
            choice = st.selectbox("Model directory", dirs, index=None, placeholder="pick a folder under the roots",
                                  key="hf_choice")
            typed = st.text_input("…or a path under the roots", key="hf_path", max_chars=400,
                                  help="Allowed roots: " + ", ".join(roots))
            path = typed.strip() or choice
            if not path:
                st.caption("Allowed roots: " + ", ".join(roots))
                return None, ""
            spec = f"hf:{path}"
        elif source == "upload":
            arch = st.selectbox("Architecture of the weights", UPLOAD_ARCHS, key="upload_arch")
            up = st.file_uploader("Weights (.safetensors)", type=["safetensors"], key="upload_file",
                                  help=f"Only safetensors (no pickles); at most {MAX_UPLOAD_MB} MB.")
            if up is None:
                st.caption("Upload a .safetensors state dict for the chosen architecture.")
                return None, ""
            if up.size > MAX_UPLOAD_MB * 2**20:
                st.error(f"The file is {up.size / 2**20:,.0f} MB, over the {MAX_UPLOAD_MB} MB upload limit.")
                return None, ""
            weights = up.getvalue()
            spec = arch
        digest = hashlib.sha256(weights).hexdigest() if weights is not None else ""
        if spec.startswith("digits:") and not digits_model_cached(spec.split(":", 1)[1]):
            _train_with_progress(spec.split(":", 1)[1])
        try:
            with st.spinner(f"Loading {spec}…"):
                loaded = _load(spec, digest, weights)
        except (ValueError, OSError) as err:
            st.error(f"Could not load the model: {err}")
            return None, ""
        except Exception as err:  # an unexpected failure must not take the app down
            st.error(f"Could not load the model ({type(err).__name__}): {err}")
            return None, ""
        st.caption(f"**{loaded.name}** · {loaded.kind} · {loaded.n_params / 1e6:,.2f} M parameters")
        return loaded, f"{spec}#{digest}"


def get_model():
    """The model chosen in the sidebar (drawn once per run by app.py)."""
    return st.session_state.get("_loaded"), st.session_state.get("_model_key", "")


def require_model():
    """Like ``get_model``, but stops the page with a hint when no model is loaded."""
    loaded, key = get_model()
    if loaded is None:
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
        if config.method in CALIBRATED_METHODS and config.pattern != "dense":
            bar = st.progress(0.0, text=f"Pruning a copy of {loaded.name} ({config.label()}): calibrating…")

        def progress(fraction: float, message: str) -> None:
            if bar is not None:
                bar.progress(min(max(float(fraction), 0.0), 1.0), text=f"Pruning a copy of {loaded.name}: {message}")

        try:
            result = sparsekit.sparsify(loaded, config, progress=progress)
        finally:
            if bar is not None:
                bar.empty()
        store.put(key, result)
        return result


def sparse_quality(model_key: str, loaded, config: SparsifyConfig) -> dict[str, float]:
    """Cached quality of the sparsified model (a small dict, kept for many configs)."""
    return _quality(model_key, config.to_json(), loaded, sparsified(model_key, loaded, config))
