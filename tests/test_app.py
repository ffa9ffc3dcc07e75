"""App pages driven through Streamlit's AppTest; assertions on the data in tables and figures."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import sparsekit
from sparsekit.cache import tensor_digest
from sparsekit.sparsify import SparsifyConfig, layer_table
from devtools import ROOT
from devtools.apptest import decode, figures, page_app
from ui.widgets import OTHER_NM

TIMEOUT = 120


def app(source="digits:mlp", page="model") -> AppTest:
    at = page_app(page, source, TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def pruned_rows(report):
    """Rows of the per-layer report table of layers that were pruned (the table leaves the "left dense
    because" column out when no layer was left dense)."""
    if "skipped_reason" not in report.columns:
        return report
    return report[report["skipped_reason"].fillna("") == ""]


def goto(at, page):
    """A fresh session on another page, with the same model picked."""
    return app(at.session_state["model_source"], page)


def test_entry_script_renders_model_page():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["model_source"] = "digits:mlp"
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Model"
    assert at.sidebar.selectbox(key="model_source").value == "digits:mlp"


@pytest.fixture(scope="module")
def mlp():
    return sparsekit.load_model("digits:mlp")


def test_model_page_digits(mlp):
    at = app()
    assert at.title[0].value == "Model"
    table = at.dataframe[1].value
    assert list(table["name"]) == [r["name"] for r in layer_table(mlp)]
    dense = at.dataframe[0].value
    # The accuracy shown equals an independent count over the held-out split.
    assert dense["value"].iloc[0] == pytest.approx(mlp.quality()["accuracy"])
    assert dense["value"].iloc[0] >= 95.0
    fig = figures(at)[0]
    assert sum(fig["data"][0]["y"] if fig["data"][0].get("orientation") != "h" else fig["data"][0]["x"]) == mlp.n_params


def test_sparsify_page_2_4_then_1_4(mlp):
    at = goto(app(), "sparsify")
    assert at.selectbox(key="sp_nm").value == "2:4"
    report = at.dataframe[1].value
    pruned = pruned_rows(report)
    assert len(pruned) > 0 and (pruned["kept_fraction"] == 0.5).all()
    # Quality shown equals the quality of an independently pruned copy.
    res = sparsekit.sparsify(mlp, SparsifyConfig(pattern="nm", n=2, m=4))
    quality = at.dataframe[0].value
    assert quality["sparse"].iloc[0] == pytest.approx(mlp.quality(res.model)["accuracy"])
    at.selectbox(key="sp_nm").set_value("1:4").run()
    report = at.dataframe[1].value
    pruned = pruned_rows(report)
    assert (pruned["kept_fraction"] == 0.25).all()
    assert len(at.get("download_button")) == 4  # masks, weights, report, notebook


def test_sparsify_bad_inputs_keep_app_running():
    at = goto(app(), "sparsify")
    at.selectbox(key="sp_nm").set_value(OTHER_NM).run()
    at.number_input(key="sp_n").set_value(4).run()  # N = M
    assert any("1 <= N < M" in e.value for e in at.error)
    at.number_input(key="sp_n").set_value(2).run()
    at.text_input(key="sp_include").set_value("no_such_layer").run()
    assert any("selection is empty" in e.value for e in at.error)
    at.text_input(key="sp_include").set_value("(unclosed").run()
    assert any("not a valid regular expression" in e.value for e in at.error)
    at.text_input(key="sp_include").set_value("").run()
    at.number_input(key="sp_m").set_value(7).run()  # 64 inputs: not a multiple of 7
    report = at.dataframe[1].value
    assert report["skipped_reason"].str.contains("not a multiple of M=7").any()
    assert not at.exception


def test_unstructured_global(mlp):
    at = goto(app(), "sparsify")
    at.radio(key="sp_pattern").set_value("unstructured").run()
    at.slider(key="sp_sparsity").set_value(70).run()
    at.radio(key="sp_scope").set_value("global").run()
    report = at.dataframe[1].value
    kept = (report["kept_fraction"] * report["shape"].map(lambda s: eval(s.replace("×", "*")))).sum()
    total = report["shape"].map(lambda s: eval(s.replace("×", "*"))).sum()
    assert kept / total == pytest.approx(0.3, abs=1e-3)


def test_masks_page_figures_and_sad():
    at = goto(app(), "masks")
    figs = figures(at)
    heat = figs[0]["data"][0]
    layer = at.selectbox(key="mask_layer").value
    mlp = sparsekit.load_model("digits:mlp")
    w = dict(mlp.module.named_modules())[layer].weight.detach()
    mask = sparsekit.nm_mask(w, 2, 4)
    z = decode(heat["z"])
    # This layer fits the 250k-cell budget, so the heatmap is the mask itself, cell for cell.
    assert z.shape == tuple(mask.shape)
    assert np.array_equal(z, mask.numpy().astype(float))
    # Compare tab: default compares magnitude with random; SAD equals an XOR count done here.
    rnd = sparsekit.sparsify(mlp, SparsifyConfig(method="random")).masks[layer]
    sad_metric = next(m for m in at.metric if m.label.startswith("SAD, this layer"))
    assert int(sad_metric.value.replace(",", "")) == int((mask != rnd).sum())


def test_shared_model_not_mutated_across_sessions():
    first = app("digits:mlp")
    loaded = first.session_state["_loaded"]
    before = tensor_digest(*[p for p in loaded.module.parameters()])
    a = goto(first, "sparsify")
    a.radio(key="sp_pattern").set_value("unstructured").run()
    a.slider(key="sp_sparsity").set_value(90).run()
    b = app("digits:mlp")
    assert b.session_state["_loaded"] is loaded  # the same shared object...
    assert tensor_digest(*[p for p in loaded.module.parameters()]) == before  # ...still dense
    assert b.dataframe[0].value["value"].iloc[0] >= 95.0


def test_minilm_model_and_sparsify():
    at = app("minilm")
    assert at.dataframe[1].value.shape[0] == 36
    at = goto(at, "sparsify")
    quality = at.dataframe[0].value
    assert 0.5 < quality["sparse"].iloc[0] < 1.0  # 2:4 magnitude moves the embeddings, but not to noise


def test_hf_source_refuses_paths_outside_roots(tmp_path, monkeypatch):
    root = tmp_path / "models"
    root.mkdir()
    (root / "not-a-model").mkdir()
    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(root))
    at = app("hf")
    at.sidebar.text_input(key="hf_path").set_value("/etc").run()
    assert any("outside" in e.value for e in at.main.error)
    at.sidebar.text_input(key="hf_path").set_value(str(root / "not-a-model")).run()
    assert any("not a Hugging Face model directory" in e.value for e in at.main.error)
    assert not at.exception
    assert at.title[0].value == "Model"


def _upload(at, arch, name, data):
    at.selectbox(key="upload_arch").set_value(arch)
    at.file_uploader(key="upload_file").set_value((name, data, "application/octet-stream"))
    at.run()
    return at


def test_upload_weights_round_trip_and_bad_files(mlp, monkeypatch):
    from safetensors.torch import save

    at = app("upload")
    assert any("Upload a .safetensors" in c.value for c in at.sidebar.caption)
    # A pruned MLP exported by the library loads back as the user's own weights.
    pruned = sparsekit.sparsify(mlp, SparsifyConfig(pattern="unstructured", sparsity=0.5))
    good = save({k: v.contiguous() for k, v in pruned.model.state_dict().items()})
    _upload(at, "digits:mlp", "mine.safetensors", good)
    assert not at.sidebar.error, [e.value for e in at.sidebar.error]
    acc = at.dataframe[0].value["value"].iloc[0]
    assert acc == pytest.approx(mlp.quality(pruned.model)["accuracy"])
    # Corrupt bytes, a pickle in disguise, and weights of another architecture: clear messages.
    _upload(at, "digits:mlp", "bad.safetensors", b"\x00\x01garbage" * 10)
    assert any("not a valid safetensors file" in e.value for e in at.main.error)
    # The long message is on the page; the narrow sidebar has one short line, and the page does not
    # pretend no model was chosen.
    assert [e.value for e in at.sidebar.error] == ["Could not load the model: see the message on the page."]
    assert not any("Choose a model" in i.value for i in at.info)
    _upload(at, "digits:mlp", "evil.safetensors", b"\x80\x04\x95" + b"\x00" * 64)
    assert any("pickle" in e.value.lower() for e in at.main.error)
    _upload(at, "digits:cnn", "mine.safetensors", good)
    assert any("architecture" in e.value.lower() or "missing" in e.value.lower() for e in at.main.error)
    monkeypatch.setenv("SPARSEKIT_MEMORY_BUDGET_MB", "0.05")
    other = save({k: v.contiguous() * 0.5 for k, v in pruned.model.state_dict().items()})
    _upload(at, "digits:mlp", "big.safetensors", other)
    assert any("over the memory budget of 0.05 MB" in e.value for e in at.main.error)
    assert not at.exception


def test_hf_source_refuses_hub_ids_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(tmp_path))
    monkeypatch.delenv("SPARSEKIT_ALLOW_HUB", raising=False)
    at = app("hf")
    at.sidebar.text_input(key="hf_path").set_value("bert-base-uncased").run()
    assert any("hub ids are disabled" in e.value for e in at.main.error)


@pytest.mark.parametrize("name,kind,metric", [("tiny-bert", "encoder", "cosine"),
                                              ("tiny-llama", "causal-lm", "perplexity"),
                                              ("family/tiny-gpt2", "causal-lm", "perplexity")])
def test_hf_directory_models_in_the_app(model_root, name, kind, metric):
    at = app("hf")
    choices = at.sidebar.selectbox(key="hf_choice").options
    assert any(c.endswith(name) for c in choices)
    at.sidebar.selectbox(key="hf_choice").set_value(str(model_root / name)).run()
    assert not at.sidebar.error, [e.value for e in at.sidebar.error]
    loaded = at.session_state["_loaded"]
    assert loaded.kind == kind
    sp = app("hf", "sparsify")
    sp.sidebar.selectbox(key="hf_choice").set_value(str(model_root / name)).run()
    assert not sp.exception and not sp.error, [e.value for e in sp.error]
    report = sp.dataframe[1].value
    pruned = pruned_rows(report)
    assert len(pruned) > 0 and (pruned["kept_fraction"] == 0.5).all()
    assert list(loaded.quality())[0] == metric


def test_masks_page_conv_layer_and_unstructured():
    cfg = SparsifyConfig(pattern="nm", n=2, m=4)
    at = page_app("masks", "digits:cnn", TIMEOUT, config_json=cfg.to_json())
    at.run()
    assert at.selectbox(key="mask_layer").options == ["conv2", "head"]  # conv1 has 1 input channel
    at.selectbox(key="mask_layer").set_value("conv2").run()
    assert not at.exception
    cnn = sparsekit.load_model("digits:cnn")
    w = cnn.module.conv2.weight.detach()
    # Channel grouping: each row of the heatmap is [kh, kw, in] flattened, 2 of every 4 channels kept.
    z = decode(figures(at)[0]["data"][0]["z"])
    want = sparsekit.nm_mask(w, 2, 4, dim=1).permute(0, 2, 3, 1).reshape(32, -1).numpy().astype(float)
    assert np.array_equal(z, want)
    groups = next(f for f in figures(at) if "groups" in json.dumps(f.get("layout", {}).get("title", {})))
    assert groups
    un = SparsifyConfig(pattern="unstructured", sparsity=0.7)
    at = page_app("masks", "digits:cnn", TIMEOUT, config_json=un.to_json())
    at.run()
    assert not at.exception
    caption = " ".join(c.value for c in at.caption)
    assert "70% unstructured" in " ".join(m.value for m in at.markdown) + caption
    assert not any("N:M group inspector" == s.value for s in at.subheader)


def test_first_use_trains_with_progress_then_loads(tmp_path, no_bundled, monkeypatch):
    from sparsekit.models.digits import digits_model_cached

    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "fresh-cache"))
    assert not digits_model_cached("mlp")
    at = app("digits:mlp")
    assert not at.sidebar.error and at.session_state["_loaded"] is not None
    assert digits_model_cached("mlp")
    assert at.dataframe[0].value["value"].iloc[0] >= 95.0


def test_result_store_is_an_lru_with_per_key_locks():
    from ui.state import _Results

    store = _Results(size=2)
    store.put(("m", "a"), "A")
    store.put(("m", "b"), "B")
    assert store.get(("m", "a")) == "A"  # a is now the most recent
    lock_b = store.key_lock(("m", "b"))
    assert store.key_lock(("m", "b")) is lock_b
    store.put(("m", "c"), "C")  # evicts b, the least recently used
    assert store.get(("m", "b")) is None and store.get(("m", "a")) == "A" and store.get(("m", "c")) == "C"
    assert store.key_lock(("m", "b")) is not lock_b  # its lock went with it


def test_interrupted_sparsify_stores_nothing(mlp, monkeypatch):
    from ui import state

    state._results.clear()
    config = SparsifyConfig(pattern="nm", n=2, m=4, method="wanda")
    calls = []

    def interrupted(loaded, cfg, progress=None):
        calls.append(cfg)
        progress(0.3, "halfway")
        raise KeyboardInterrupt  # what a rerun does to a running script, as far as this code sees

    monkeypatch.setattr(state.sparsekit, "sparsify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        state.sparsified("k", mlp, config)
    assert state._results().get(("k", config.to_json())) is None
    monkeypatch.undo()
    first = state.sparsified("k", mlp, config)
    assert state.sparsified("k", mlp, config) is first  # computed once, then shared
    assert len(calls) == 1


def test_sparsify_page_calibrated_method(mlp):
    at = goto(app(), "sparsify")
    at.selectbox(key="sp_method").set_value("sparsegpt").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    res = sparsekit.sparsify(mlp, SparsifyConfig(pattern="nm", n=2, m=4, method="sparsegpt"))
    quality = at.dataframe[0].value
    assert quality["sparse"].iloc[0] == pytest.approx(mlp.quality(res.model)["accuracy"])
    assert not at.get("progress")  # the per-layer progress bar is gone once the result is shown


def test_sparsify_page_calibration_order(vit):
    at = app("digits:vit", "sparsify")
    assert not at.get("radio") or all(r.key != "sp_order" for r in at.radio)  # magnitude: no order choice
    at.selectbox(key="sp_method").set_value("wanda").run()
    assert not at.exception, at.exception
    assert at.radio(key="sp_order").value == "block"
    captions = " ".join(c.value for c in at.caption)
    assert "2 transformer blocks" in captions
    block_quality = at.dataframe[0].value["sparse"].iloc[0]
    at.radio(key="sp_order").set_value("layer").run()
    assert not at.exception, at.exception
    assert "layer order" in " ".join(c.value for c in at.caption)
    layer_quality = at.dataframe[0].value["sparse"].iloc[0]
    for order, shown in (("block", block_quality), ("layer", layer_quality)):
        res = sparsekit.sparsify(vit, SparsifyConfig(method="wanda", calibration_order=order))
        assert shown == pytest.approx(vit.quality(res.model)["accuracy"])
    assert block_quality != layer_quality


def test_m_that_fits_no_layer_says_so_at_the_top(mlp):
    # 2:5 on the digits MLP: its input widths 64, 256 and 128 are not multiples of 5, so nothing is
    # pruned; the page used to show "Kept 100 %" and a green "+0" under a caption promising 40 %.
    at = goto(app(), "sparsify")
    at.selectbox(key="sp_nm").set_value(OTHER_NM).run()
    at.number_input(key="sp_m").set_value(5).run()
    assert not at.exception, at.exception
    banner = at.warning[0].value
    widths = [m.weight.shape[1] for m in mlp.module.modules() if isinstance(m, torch.nn.Linear)]
    fits = [m for m in range(2, 33) if all(w % m == 0 for w in widths)]
    assert "nothing was pruned" in banner and "M = 5" in banner
    assert f"M values that fit every layer: {', '.join(map(str, fits))}." in banner
    removed = next(m for m in at.metric if m.label == "Layers with weights removed")
    assert removed.value == f"0 / {len(widths)}"
    quality = next(m for m in at.metric if m.label == mlp.metric_names["accuracy"])
    assert quality.delta in (None, "")  # no "+0" badge when nothing changed
    # A fitting M takes the banner away again.
    at.number_input(key="sp_m").set_value(8).run()
    assert not at.warning


def test_zero_sparsity_removes_no_weights_and_says_so():
    at = goto(app(), "sparsify")
    at.radio(key="sp_pattern").set_value("unstructured").run()
    at.slider(key="sp_sparsity").set_value(0).run()
    removed = next(m for m in at.metric if m.label == "Layers with weights removed")
    assert removed.value.startswith("0 / ")


def test_calibrated_method_on_minilm_waits_for_apply():
    at = app("minilm", "sparsify")
    assert not at.get("button") or all(b.key != "sp_apply" for b in at.button)  # magnitude: live
    at.selectbox(key="sp_method").set_value("wanda").run()
    assert not at.exception, at.exception
    # Nothing is computed for Wanda yet: the magnitude result stays, with the Apply button.
    assert any("press Apply" in i.value for i in at.info)
    assert "magnitude" in at.session_state["config_json"]
    at.button(key="sp_apply").click().run()
    assert not at.exception, at.exception
    assert "wanda" in at.session_state["config_json"]
    assert not any("press Apply" in i.value for i in at.info)


def test_model_page_start_here_numbers_and_no_server_paths():
    at = app("minilm")
    assert at.expander[0].label.startswith("Start here")
    steps = at.expander[0].markdown[0].value
    assert [line.split("**")[1] for line in steps.splitlines()] == [
        "Model", "Sparsify", "Masks", "Attention", "Training & topology"]
    assert next(m for m in at.metric if m.label == "Kind").value == "text encoder"
    details = at.dataframe[-1].value
    loaded = at.session_state["_loaded"]
    server_path = loaded.info["path"]
    assert server_path.startswith("/")
    assert not details["value"].str.contains(str(Path(server_path).parent), regex=False).any()
    assert (details["value"] == "…/" + Path(server_path).name).any()
    title = figures(at)[0]["layout"]["title"]["text"]
    assert title.split("<br>")[0] == "parameters by layer type"  # the count sits on a second line


def test_metric_text_uses_fixed_decimals():
    from ui.format import metric_text

    assert [metric_text(v) for v in (97.2222, 97.5, 0.98765, 1.0)] == ["97.22", "97.50", "0.9877", "1.0000"]


def test_shown_path_hides_the_server_layout(tmp_path, monkeypatch):
    from ui.format import shown_path

    root = tmp_path / "zoo"
    (root / "family" / "m").mkdir(parents=True)
    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(root))
    assert shown_path(str(root / "family" / "m")) == "zoo/family/m"
    assert shown_path("/opt/secret/place/model") == "…/model"


def test_minilm_changes_wait_for_apply_unless_live():
    at = app("minilm", "sparsify")
    first = at.dataframe[1].value  # the first view computes 2:4 magnitude at once
    assert (pruned_rows(first)["kept_fraction"] == 0.5).all()
    at.selectbox(key="sp_nm").set_value("1:4").run()
    assert any("press Apply" in i.value for i in at.info)
    assert (at.dataframe[1].value["kept_fraction"] == first["kept_fraction"]).all()  # still 2:4
    at.checkbox(key="sp_live").check().run()
    report = at.dataframe[1].value
    assert (pruned_rows(report)["kept_fraction"] == 0.25).all()
    at.selectbox(key="sp_nm").set_value("4:8").run()  # live now: no Apply needed
    assert not any("press Apply" in i.value for i in at.info)
    assert not at.exception


def test_preload_hands_over_once_and_falls_back_on_failure():
    from ui import preload

    preload.start("digits:mlp")
    preload.start("digits:mlp")  # a second start does not load twice
    loaded = preload.take("digits:mlp")
    assert loaded is not None and loaded.spec == "digits:mlp"
    assert loaded.quality() == sparsekit.load_model("digits:mlp").quality()
    assert preload.take("digits:mlp") is None  # handed over once; the cached loader keeps it after that
    preload.start("digits:no-such-model")
    assert preload.take("digits:no-such-model") is None  # the loader then reports the error itself
    assert preload.take("never-started") is None


def test_bad_values_in_the_url_fall_back_to_defaults():
    # A shared link is user input: unknown options and out-of-range numbers must not break the page.
    at = page_app("sparsify", "digits:mlp", TIMEOUT)
    at.query_params["sp_nm"] = "9:9"
    at.query_params["sp_method"] = "nonsense"
    at.query_params["sp_sparsity"] = "500"
    at.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="sp_nm").value == "2:4" and at.selectbox(key="sp_method").value == "magnitude"
    entry = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    entry.query_params["model_source"] = "../../etc/passwd"
    entry.run()
    assert not entry.exception
    assert entry.sidebar.selectbox(key="model_source").value == "minilm"
