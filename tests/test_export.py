"""Export: safetensors weights + masks + manifest, reloaded through the model loader; 2:4 on CUDA."""
import io
import json
import zipfile

import pytest
import torch
from safetensors.torch import load
from torch import nn

import sparsekit
from sparsekit.export import export_files, export_zip, read_export, reload_export, to_semi_structured
from sparsekit.sparsify import SparsifyConfig, sparsify


@pytest.fixture(scope="module")
def mlp(digits_cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEKIT_CACHE_DIR", str(digits_cache_dir))
        yield sparsekit.load_model("digits:mlp")


def test_round_trip_through_the_loader(mlp):
    result = sparsify(mlp, SparsifyConfig(pattern="nm", n=2, m=4, method="wanda"))
    data = export_zip(export_files(result, mlp))
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names == ["model.safetensors", "masks.safetensors", "manifest.json"]
    loaded, manifest, masks = reload_export(data)
    x = mlp.calibration[:64]
    with torch.no_grad():
        assert torch.equal(loaded.module(x), result.model(x))
    assert manifest["spec"] == "digits:mlp" and manifest["config"]["method"] == "wanda"
    assert manifest["quality"] == mlp.quality(result.model) == loaded.quality()
    assert [r["name"] for r in manifest["report"]] == [r.name for r in result.report]
    assert manifest["summary"]["layers_pruned"] == 3
    assert set(masks) == set(result.masks) and all(torch.equal(masks[k], result.masks[k]) for k in masks)
    weights = load(export_files(result, mlp)["model.safetensors"])
    assert torch.equal(weights["fc1.weight"], result.model.fc1.weight)


def test_tampered_or_foreign_exports_are_refused(mlp):
    result = sparsify(mlp, SparsifyConfig(pattern="unstructured", sparsity=0.5))
    files = export_files(result, mlp)
    with pytest.raises(ValueError, match="not a zip"):
        read_export(b"hello")
    edited = dict(files)
    state = load(files["model.safetensors"])
    state["fc1.weight"] = state["fc1.weight"] + 1
    from safetensors.torch import save

    edited["model.safetensors"] = save(state)
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        read_export(edited)
    with pytest.raises(ValueError, match="missing"):
        read_export({k: v for k, v in files.items() if k != "masks.safetensors"})
    manifest = json.loads(files["manifest.json"])
    manifest["spec"] = "hf:some-model"
    manifest["files"] = {}
    with pytest.raises(ValueError, match="cannot be reloaded"):
        reload_export({**files, "manifest.json": json.dumps(manifest).encode()})
    # A mask that claims a kept weight was pruned is caught on reload.
    masks = load(files["masks.safetensors"])
    masks["fc1.weight_mask"] = ~masks["fc1.weight_mask"]
    manifest = json.loads(files["manifest.json"])
    manifest["files"] = {}
    with pytest.raises(ValueError, match="non-zero weights where its mask says pruned"):
        reload_export({**files, "masks.safetensors": save(masks), "manifest.json": json.dumps(manifest).encode()})


@pytest.mark.parametrize("spec", [["digits:mlp"], {"name": "digits:mlp"}, None, 3])
def test_manifest_spec_that_is_not_a_string_is_refused(mlp, spec):
    # A hand-edited manifest whose spec is a list or object used to escape as a TypeError
    # (unhashable, from the lookup in BUILTIN_SPECS) instead of the documented ValueError.
    result = sparsify(mlp, SparsifyConfig(pattern="unstructured", sparsity=0.5))
    files = export_files(result, mlp)
    manifest = json.loads(files["manifest.json"])
    manifest["spec"] = spec
    with pytest.raises(ValueError, match="cannot be reloaded"):
        reload_export({**files, "manifest.json": json.dumps(manifest).encode()})

def test_semi_structured_without_cuda_skips_cleanly():
    model = nn.Sequential(nn.Linear(64, 64))
    out = to_semi_structured(sparsify(model, SparsifyConfig()))
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by test_semi_structured_on_cuda")
    assert out.available is False and out.model is None and "CUDA is not available" in out.skipped["*"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured kernels need CUDA")
def test_semi_structured_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.Linear(128, 6))
    result = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4, exclude="^3$"))
    out = to_semi_structured(result)
    if not out.available:
        pytest.skip(out.skipped["*"])
    assert out.converted == ["0", "2"] and "not 2:4" in out.skipped["3"]
    x = torch.randn(64, 128)
    with torch.no_grad():
        ref = result.model.half().cuda()(x.half().cuda())
        got = out.model(x.half().cuda())
    assert torch.allclose(got.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.slow
def test_minilm_round_trip():
    loaded = sparsekit.load_model("minilm")
    result = sparsify(loaded, SparsifyConfig(pattern="nm", n=2, m=4, method="wanda"))
    again, manifest, _ = reload_export(export_zip(export_files(result, loaded)))
    batch = loaded.preprocess(["Pruning keeps the largest weights.", "Sparse models are smaller."])
    with torch.no_grad():
        assert torch.equal(again.module(**batch).last_hidden_state, result.model(**batch).last_hidden_state)


def test_semi_structured_conversion_logic_emulated(monkeypatch):
    # The kernels need CUDA; the layer selection around them is run here on CPU with the device
    # checks answered as an H100 would and the compressor replaced by a stand-in that keeps the
    # dense weight (so outputs must match exactly) and refuses anything that is not 2:4.
    import torch.sparse

    from sparsekit.sparsify import is_2_4

    seen = []

    def fake_compress(weight):
        assert is_2_4(weight), "a non-2:4 weight reached the compressor"
        seen.append(tuple(weight.shape))
        return weight.clone()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", fake_compress)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64), nn.Linear(64, 6), nn.Linear(6, 32))
    result = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4, exclude="^2$"))
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    out = to_semi_structured(result, device="cpu", dtype=torch.float32)
    assert out.available and out.converted == ["0"] and seen == [(128, 128)]
    assert out.skipped["2"] == "weight is not 2:4 sparse"  # excluded from pruning: dense
    assert "rows a multiple of" in out.skipped["3"]  # 6 outputs: below the kernels' minimum
    assert out.skipped["4"] == "weight is not 2:4 sparse"  # 6 inputs: no groups of 4 (no crash)
    x = torch.randn(5, 128)
    with torch.no_grad():
        assert torch.equal(out.model(x), result.model(x))
    assert all(torch.equal(before[k], v) for k, v in result.model.state_dict().items())  # a copy was converted
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    old = to_semi_structured(result, device="cpu")
    assert not old.available and "Ampere" in old.skipped["*"]
