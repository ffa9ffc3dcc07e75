"""Issue #24's latency work, checked by counting, never by the clock: what a cold start imports, which
figures a rerun rebuilds, and the background warm-up after a preloading server's first page."""
import json
import subprocess
import sys
import threading
import time

import pytest
import torch

import sparsekit
from devtools import ROOT
from devtools.apptest import figures, page_app
from sparsekit import viz
from sparsekit.sparsify import SparsifyConfig
from tests.conftest import shared_model

TIMEOUT = 180
NOT_ON_FIRST_PAGE = ["transformers", "captum", "ray", "nbformat", "sklearn", "matplotlib",
                     "sparsekit.attention", "sparsekit.attribution", "sparsekit.sensitivity", "sparsekit.recovery"]


def imported_after(code: str, names: list[str]) -> list[str]:
    """Which of ``names`` are in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{code}\nimport json\n" \
            f"print(json.dumps([m for m in {names!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_app_and_its_first_page_import_nothing_they_do_not_draw():
    # app.py's imports and the Model page's (views/model.py, read from the file so the list cannot drift)
    import ast

    tree = ast.parse((ROOT / "views" / "model.py").read_text())
    page = "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    assert "sparsekit" in page and "ui.state" in page
    found = imported_after("import streamlit\nfrom ui.state import sidebar_model\nfrom ui.widgets import "
                           f"note_unapplied_link_values\n{page}", NOT_ON_FIRST_PAGE + ["pandas"])
    assert found == ["pandas"]  # the probe itself works: pandas is one the page does import


def test_the_attention_page_still_gets_its_library():
    # The lazy imports moved into ui.cached's functions: the library is found when they run.
    found = imported_after("from ui import cached\nimport inspect\nsrc = inspect.getsource(cached.attention_capture)\n"
                           "assert 'from sparsekit.attention import capture_attention' in src\n"
                           "exec('from sparsekit.attention import capture_attention')", ["sparsekit.attention"])
    assert found == ["sparsekit.attention"]


@pytest.fixture
def counted(monkeypatch):
    """Count each sparsekit.viz figure builder's calls (ui.figures looks the builder up by name per call),
    with the shared figure cache emptied first."""
    from ui import figures as cached_figures

    cached_figures._built.clear()
    calls: dict[str, int] = {}
    for name in ("layer_kept_figure", "memory_figure", "params_by_type_figure", "mask_heatmap",
                 "magnitude_histogram", "density_profile", "mask_zoom_figure", "nm_group_figure",
                 "nm_pattern_figure", "mask_diff_figure"):
        real = getattr(viz, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(viz, name, wrapper)
    yield calls
    cached_figures._built.clear()


def test_a_sparsify_rerun_with_the_same_setting_builds_no_figure(counted):
    at = page_app("sparsify", "digits:mlp", TIMEOUT)
    at.run()
    assert not at.exception
    first = figures(at)
    assert counted == {"layer_kept_figure": 1, "memory_figure": 1}
    at.run()
    assert counted == {"layer_kept_figure": 1, "memory_figure": 1}
    assert figures(at) == first  # the same figures shown
    at.selectbox(key="sp_nm").set_value("1:4").run()
    assert counted == {"layer_kept_figure": 2, "memory_figure": 2}
    kept = next(f for f in figures(at) if f["data"] and "kept" in json.dumps(f["layout"].get("title", "")).lower())
    fresh = viz.layer_kept_figure(sparsekit.sparsify(shared_model("digits:mlp"), SparsifyConfig(n=1, m=4)).report)
    assert json.loads(fresh.to_json())["data"] == kept["data"]  # the cached figure is the one for 1:4


def test_a_masks_rerun_rebuilds_only_the_figure_whose_input_changed(counted):
    at = page_app("masks", "digits:mlp", TIMEOUT)
    at.run()
    assert not at.exception
    built = dict(counted)
    assert built == {name: 1 for name in ("mask_heatmap", "magnitude_histogram", "density_profile", "mask_zoom_figure",
                                          "nm_group_figure", "nm_pattern_figure", "mask_diff_figure")}
    at.run()
    assert counted == built
    def zoom():
        return next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("weights in rows"))

    before = zoom()
    at.number_input(key="zoom_col").set_value(2).run()
    assert counted == {**built, "mask_zoom_figure": 2}
    assert zoom() != before  # the new zoom's figure, not the cached first one
    at.number_input(key="zoom_col").set_value(0).run()
    assert counted == {**built, "mask_zoom_figure": 2} and zoom() == before  # the first zoom again, from the cache
    layer = at.selectbox(key="mask_layer")
    other = next(o for o in layer.options if o != layer.value)
    layer.set_value(other).run()
    assert all(counted[name] == built[name] + 1 for name in built if name != "mask_zoom_figure")


def test_the_figure_helper_names_a_missing_builder():
    from ui.figures import figure

    with pytest.raises(AttributeError, match="no figure builder named 'no_such_figure'"):
        figure("no_such_figure", "key")


# ---------------------------------------------------------------------------------------------
# The warm-up after a preloading server's first page (ui.preload, ui.state.warm_up)


@pytest.fixture
def preloading(monkeypatch):
    """This process as scripts/serve.py makes it (preload started, no warm-up yet), with empty stores."""
    from ui import preload, state

    monkeypatch.setitem(preload._state, "started", True)
    monkeypatch.setitem(preload._state, "warm", False)
    monkeypatch.setattr(preload, "WARM_DELAY_S", 0.0)
    for fn in (state._results, state._timings, state._prefetched):
        fn.clear()
    yield preload, state
    for fn in (state._results, state._timings, state._prefetched):
        fn.clear()


def wait_for_warm_up(timeout: float = 120) -> None:
    deadline = time.perf_counter() + timeout
    while any(t.name == "warm-up" for t in threading.enumerate()):
        assert time.perf_counter() < deadline, "the warm-up did not finish"
        time.sleep(0.05)


def test_no_warm_up_outside_the_server():
    from ui import preload, state

    preload.start("digits:mlp")  # a preload alone (as tests/test_app.py's) is not a server that warms up
    assert preload.take("digits:mlp") is not None
    assert not preload.started()  # only scripts/serve.py starts with warm_up=True
    assert state.warm_up(shared_model("digits:mlp"), "digits:mlp#") is False
    assert not preload.warm_scheduled()


def test_warm_up_computes_the_default_settings_once_and_the_page_reads_them(preloading, monkeypatch):
    preload, state = preloading
    loaded = shared_model("digits:mlp")
    calls = []
    real = sparsekit.sparsify
    monkeypatch.setattr(state.sparsekit, "sparsify", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(state, "model_quality", lambda *a, **k: pytest.fail("measured again"))
    assert state.warm_up(loaded, "digits:mlp#") is True
    assert state.warm_up(loaded, "digits:mlp#") is False  # once per process
    wait_for_warm_up()
    assert [c.method for c in calls] == ["magnitude", "random"]
    shown = SparsifyConfig()
    expected = loaded.quality(real(loaded, shown, progress=False).model)  # an independent pass
    assert state.sparse_quality("digits:mlp#", loaded, shown) == expected
    assert state.is_computed("digits:mlp#", shown) and state.is_computed("digits:mlp#", SparsifyConfig(method="random"))
    assert len(calls) == 2  # the page's sparsify and quality were served from the warm-up
    assert state.last_duration("digits:mlp#", "magnitude") is not None  # the estimates learn from it


def test_a_page_that_asks_first_takes_the_quality_over(preloading, monkeypatch):
    preload, state = preloading
    loaded = shared_model("digits:mlp")
    monkeypatch.setattr(preload, "WARM_DELAY_S", 2.0)  # the page asks while the warm-up still waits
    measured = []
    monkeypatch.setattr(state, "model_quality", lambda key, cfg, lo, result, m: measured.append(cfg) or lo.quality(result.model))
    assert state.warm_up(loaded, "digits:mlp#") is True
    quality = state.sparse_quality("digits:mlp#", loaded, SparsifyConfig())
    assert measured == [SparsifyConfig().to_json()]  # computed by the page, not waited for
    assert quality == loaded.quality(state.sparsified("digits:mlp#", loaded, SparsifyConfig()).model)
    assert not state._prefetched()  # the cancelled pass is forgotten
    wait_for_warm_up()


def test_page_libraries_are_the_views_imports_and_warm_imports_skips_names_that_are_no_module(tmp_path, monkeypatch):
    from ui import preload

    names = preload.page_libraries(ROOT)
    assert {"sparsekit.viz", "sparsekit.attention", "pandas"} <= set(names)
    assert not any(n.startswith(("streamlit", "ui.")) for n in names)
    first = preload.page_libraries(ROOT, ["model"])  # what the preload imports beside the dense pass
    assert {"sparsekit.viz", "pandas", "sparsekit.recipes.model"} <= set(first) < set(names)
    assert "sparsekit.recipes" in first  # through ui/notebook.py, a helper the Model page imports
    assert not any(n.startswith("sparsekit.attention") for n in first)
    assert preload.warm_imports(["sparsekit.viz.layer_kept_figure", "sparsekit.report"]) == []
    assert preload.warm_imports(["sparsekit.no_such_module_here"]) == []
    (tmp_path / "warm_up_broken_module.py").write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert preload.warm_imports(["warm_up_broken_module", "sparsekit.report"]) == ["warm_up_broken_module"]


# ---------------------------------------------------------------------------------------------
# sparsify's copy for layer-local methods (sparsekit.sparsify.masked_copy)


def bits(t):
    """A tensor's exact bit pattern (tells -0.0 from 0.0, unlike torch.equal)."""
    import torch

    return t.detach().contiguous().view(torch.int32 if t.element_size() == 4 else torch.int16)


def copied_then_multiplied(source, masks):
    """The reference: what sparsify did before, a deep copy and each weight multiplied in place."""
    import copy

    import torch

    pruned = copy.deepcopy(source).eval()
    modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight.mul_(mask.to(modules[name].weight.dtype))
    return pruned


def same_bits(a, b) -> bool:
    import torch

    return a.shape == b.shape and torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("spec", ["digits:mlp", "digits:cnn"])
@pytest.mark.parametrize("cfg", [SparsifyConfig(), SparsifyConfig(method="random", n=1, m=4),
                                 SparsifyConfig(pattern="unstructured", sparsity=0.6, scope="global")])
def test_sparsify_copy_is_bit_for_bit_the_copy_then_multiply(spec, cfg):
    loaded = shared_model(spec)
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    result = sparsekit.sparsify(loaded, cfg, progress=False)
    reference = copied_then_multiplied(loaded.module, result.masks)
    got, want = result.model.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert same_bits(got[k], want[k]) and got[k].stride() == want[k].stride(), k
    after = loaded.module.state_dict()
    assert list(after) == list(before) and all(same_bits(after[k], before[k]) for k in before)  # untouched
    src = {p.data_ptr() for p in loaded.module.parameters()}
    assert not src & {p.data_ptr() for p in result.model.parameters()}  # nothing shared with the model
    assert [p.requires_grad for p in result.model.parameters()] == [p.requires_grad for p in reference.parameters()]
    assert not result.model.training and any(m.sum() < m.numel() for m in result.masks.values())


def test_masked_copy_keeps_shared_weights_shared_and_the_source_in_its_mode():
    import torch
    from torch import nn

    from sparsekit.sparsify import masked_copy

    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    source[2].weight = source[0].weight  # one parameter in two layers
    source.train()
    mask = torch.rand(8, 8) > 0.5
    copied = masked_copy(source, {"0": mask})
    assert copied[2].weight is copied[0].weight  # shared in the copy too, as deepcopy keeps it
    assert same_bits(copied[0].weight, copied_then_multiplied(source, {"0": mask})[0].weight)
    assert source.training and not copied.training  # the copy is in eval mode, the source unchanged
    assert torch.equal(source[0].weight * mask, copied[0].weight) and (source[0].weight != copied[0].weight).any()


# Every name sparsekit.viz exported before it imported its modules on first use (issue #24): all must still resolve.
OLD_VIZ_NAMES = {
    "study_interval_figure", "study_pareto_figure", "study_quality_figure", "ATTENTION_FAMILY_COLORS",
    "allocation_figure", "capture_figure", "head_metrics_figure", "study_figure", "run_figure", "recovery_figure",
    "bench_run_figure", "MODE_COLORS", "method_color", "method_colors", "variant_colors",
    "SHADE_LEVELS", "shade", "shade_level",
    "DEFAULT_MAX_CELLS", "LABEL_ALL_TOKENS", "DIFF_COLORS", "FLIP_COLORSCALE", "KEPT_COLOR", "METHOD_COLORS",
    "PRUNED_COLOR", "RUN_COLORS", "SKIPPED_COLOR", "STUDY_COLORS", "TEXT_CELLS_MAX", "agreement_figure",
    "attention_heatmap", "attention_speedup_figure", "attribution_maps_figure", "bench_figures", "color_map",
    "compare_figure", "density_profile", "flip_count_figure", "flip_maps_figure", "flip_rate_figure",
    "head_grid_figure", "head_picker_figure", "lambda_sweep_figure", "layer_kept_figure", "log_ticks",
    "magnitude_histogram", "mask_diff_figure", "mask_heatmap", "mask_zoom_figure", "memory_figure", "nm_group_figure",
    "nm_pattern_figure", "paired_difference_figure", "params_by_type_figure", "plan_grid_figure", "quality_figure",
    "recovery_colors", "recovery_curves_figure", "recovery_gap_figure", "recovery_sad_figure", "recovery_sad_heatmap",
    "run_colors", "run_key", "sad_heatmap_figure", "sad_series_figure", "search_tradeoff_figure", "sensitivity_heatmap",
    "sensitivity_proxy_figure", "seed_study_figure", "speedup_batch_figure", "speedup_density_figure",
    "token_attribution_figure", "training_curves_figure", "KV_METHOD_STYLES", "kv_quality_bytes_figure",
    "FAMILY_COLORS", "family_cost_figure", "soup_figure", "soup_level_colors",
}
FIGURE_LIBRARIES = ["sparsekit.study", "sparsekit.training", "sparsekit.viz.study", "sparsekit.viz.training",
                    "sparsekit.viz.attention", "sparsekit.viz.recovery"]


def test_viz_imports_only_the_figure_modules_a_page_draws():
    # The Model page's figure, and a result's .figure(), in a fresh interpreter that imported sparsekit.viz.
    code = ("import sparsekit, torch\nfrom sparsekit import viz\nfrom sparsekit.viz import params_by_type_figure\n"
            "assert len(params_by_type_figure({'Linear': 10, 'Embedding': 4}).data) == 1\n"
            "torch.manual_seed(0)\n"
            "r = sparsekit.sparsify(torch.nn.Sequential(torch.nn.Linear(8, 4)), sparsekit.SparsifyConfig())\n"
            "assert r.figure().data\nassert 'run_figure' in dir(viz)")
    assert imported_after(code, FIGURE_LIBRARIES + ["sparsekit.viz.reports"]) == ["sparsekit.viz.reports"]
    # Asking for a training figure imports its module (and only then).
    assert set(imported_after("from sparsekit.viz import run_figure", FIGURE_LIBRARIES)) >= {
        "sparsekit.training", "sparsekit.viz.training"}


def test_every_old_viz_name_resolves_to_its_modules_object():
    import importlib
    import pkgutil

    assert set(viz.__all__) == OLD_VIZ_NAMES
    # Independent of viz's own table: the module of sparsekit.viz (or maskstats) that defines each name.
    modules = [importlib.import_module(f"sparsekit.viz.{m.name}") for m in pkgutil.iter_modules(viz.__path__)]
    modules.append(importlib.import_module("sparsekit.maskstats"))
    for name in OLD_VIZ_NAMES:
        owners = [m for m in modules if name in vars(m) and (getattr(vars(m)[name], "__module__", m.__name__)
                                                              == m.__name__ or not callable(vars(m)[name]))]
        assert owners, name
        assert getattr(viz, name) is getattr(owners[0], name), name
    namespace: dict = {}
    exec("from sparsekit.viz import *", namespace)  # noqa: S102  (the star import walks __all__)
    assert OLD_VIZ_NAMES <= set(namespace)
    assert viz.masks is importlib.import_module("sparsekit.viz.masks")  # submodules as attributes
    with pytest.raises(AttributeError, match="no attribute 'no_such_figure'"):
        viz.no_such_figure  # noqa: B018


@pytest.fixture
def counted_embeds(monkeypatch):
    """Count the dense forwards of every encoder fidelity (``EmbeddingFidelity.embed`` on its dense module)."""
    from sparsekit.models import text_metrics

    calls = []
    real = text_metrics.EmbeddingFidelity.embed

    def embed(self, module):
        calls.append(module is self.dense)
        return real(self, module)

    monkeypatch.setattr(text_metrics.EmbeddingFidelity, "embed", embed)
    return calls


def test_a_second_load_reads_the_dense_reference_from_disk(tmp_cache, counted_embeds):
    from safetensors.torch import load

    from sparsekit.cache import get_cache
    from sparsekit.models.text_metrics import top_k_neighbours

    first = sparsekit.load_model("minilm")
    dense = first.quality()
    assert counted_embeds == [True]  # computed once, stored
    second = sparsekit.load_model("minilm")
    assert second.module is not first.module
    assert second.quality() == dense  # the same numbers, from the stored reference
    assert counted_embeds == [True]  # no second dense forward
    stored = second.quality_fn.reference
    fresh = first.quality_fn.embed(first.module)  # an independent pass
    assert stored.dtype == fresh.dtype and torch.equal(stored, fresh)  # bit for bit
    assert torch.equal(second.quality_fn.reference_neighbours, top_k_neighbours(fresh, second.quality_fn.k))

    # A damaged entry (bytes flipped in the tensor data, or not safetensors at all) is computed again.
    key = second.quality_fn.reference_key()
    raw = get_cache().get(key)
    for bad in (raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:]), b"not a safetensors file", raw[: len(raw) // 2]):
        get_cache().set(key, bad)
        counted_embeds.clear()
        third = sparsekit.load_model("minilm")
        assert third.quality() == dense and counted_embeds == [True]
        assert torch.equal(load(get_cache().get(key))["reference"], fresh)  # stored again, whole
    # Another evaluation set is another entry.
    third.quality_fn.set_eval_ids([[101, 7592, 102], [101, 2088, 102], [101, 102]])
    assert third.quality_fn.reference_key() != key


def test_other_weights_are_another_key_and_a_module_changed_in_place_is_recomputed(tmp_cache, counted_embeds):
    from sparsekit.cache import get_cache

    first = sparsekit.load_model("minilm")
    key = first.quality_fn.reference_key()
    first.quality()
    other = sparsekit.load_model("minilm")
    with torch.no_grad():
        other.module.embeddings.word_embeddings.weight[0, 0] += 1.0  # another weights file, as far as the key knows
    changed = type(other.quality_fn)(other.module, [[101, 7592, 102], [101, 2088, 102]], other.quality_fn.pad_id)
    fresh = sparsekit.load_model("minilm")
    twin = type(fresh.quality_fn)(fresh.module, [[101, 7592, 102], [101, 2088, 102]], fresh.quality_fn.pad_id)
    assert changed.reference_key() != twin.reference_key()
    assert twin.reference_key() != key  # the evaluation ids are part of the key too
    # The first model changed in place after its reference was stored: computed, never read from the old entry.
    counted_embeds.clear()
    with torch.no_grad():
        first.module.embeddings.word_embeddings.weight[0, 0] += 1.0
    again = first.quality_fn.reference
    assert counted_embeds == [True]
    assert torch.equal(again, first.quality_fn.embed(first.module))
    assert get_cache().get(key) is not None  # the loaded weights' entry stays as it was
