"""Saving sliced and Monarch models (safetensors + structure.json) and rebuilding them: outputs equal bit for bit
after a round trip; a missing file, a JSON that does not match the weights, a folder for another base model and
files that are not what they claim are refused with clear messages."""
from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

import sparsekit
from sparsekit.structured import MonarchConfig, MonarchLinear, load_structured, monarchize, slice_model
from sparsekit.structured.folder import STRUCTURE_FILE, WEIGHTS_FILE
from sparsekit.structured.monarch_model import MonarchResult
from sparsekit.structured.slicegpt_result import SliceResult
from tests.conftest import shared_model


def outputs(loaded, module: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        if loaded.kind == "causal-lm":
            cal = loaded.calibration
            return module(input_ids=cal["input_ids"][:6], attention_mask=cal["attention_mask"][:6]).logits
        noise = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        return module(torch.cat([loaded.calibration[:32], noise]))


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert [type(m).__name__ for m in a.modules()] == [type(m).__name__ for m in b.modules()]


CASES = {
    "lm:small sliced": ("lm:small", lambda lm: slice_model(lm, 0.2, progress=False)),
    "lm:small monarch": ("lm:small", lambda lm: monarchize(lm, MonarchConfig(blocks=8), progress=False)),
    "digits:vit sliced": ("digits:vit", lambda m: slice_model(m, 0.3, progress=False)),
    "digits:vit monarch": ("digits:vit", lambda m: monarchize(m, MonarchConfig(blocks=4), progress=False)),
    "digits:mlp monarch budget": ("digits:mlp", lambda m: monarchize(m, MonarchConfig(blocks=0, budget=0.3),
                                                                     progress=False)),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each case made once and saved once."""
    out = {}
    for case, (spec, make) in CASES.items():
        loaded = shared_model(spec)
        result = make(loaded)
        folder = tmp_path_factory.mktemp(case.replace(" ", "_").replace(":", "_"))
        assert result.save(folder) == folder
        out[case] = (loaded, result, folder)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_bit_exact(saved, case):
    loaded, result, folder = saved[case]
    assert sorted(p.name for p in folder.iterdir()) == [WEIGHTS_FILE, STRUCTURE_FILE]
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    back = load_structured(folder, base=loaded)
    # The base (shared between the app's sessions) is copied, never changed.
    after = loaded.module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(back) is type(result)
    assert back.model is not result.model and back.model is not loaded.module
    want, got = outputs(loaded, result.model), outputs(loaded, back.model)
    assert torch.equal(got, want)
    # and the model differs from the dense one (the test would pass trivially on a copy of the base)
    assert not torch.equal(outputs(loaded, loaded.module), want)
    same_state(result.model, back.model)
    assert sum(p.numel() for p in back.model.parameters()) == sum(p.numel() for p in result.model.parameters())
    fields = {f.name for f in dataclasses.fields(result)} - {"module", "model"}
    for name in fields:
        assert getattr(back, name) == getattr(result, name), name
    assert not back.model.training


def test_sizes_attributes_and_ties_are_rebuilt(saved):
    loaded, result, folder = saved["lm:small sliced"]
    back = load_structured(folder, base=loaded).model
    d = result.kept_width
    assert back.transformer.wte.embedding_dim == d and back.transformer.h[0].attn.c_attn.nx == d
    assert back.lm_head.in_features == d and back.lm_head.weight is not back.transformer.wte.weight
    # greedy generation with the KV cache runs through transformers' code at width d
    ids = loaded.calibration["input_ids"][:1, :5]
    with torch.no_grad():
        a = result.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        b = back.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
    loaded_m, mon, folder_m = saved["lm:small monarch"]
    record = json.loads((folder_m / STRUCTURE_FILE).read_text())
    assert record["tied"] == {"lm_head.weight": "transformer.wte.weight"}  # stored once, tied again
    back_m = load_structured(folder_m, base=loaded_m).model
    assert back_m.lm_head.weight is back_m.transformer.wte.weight
    projected = [r for r in mon.layers if r.projected]
    rebuilt = {n: m for n, m in back_m.named_modules() if isinstance(m, MonarchLinear)}
    assert sorted(rebuilt) == sorted(r.name for r in projected)
    assert all(rebuilt[r.name].blocks == r.blocks for r in projected)


def test_structure_json_describes_every_tensor(saved):
    _, result, folder = saved["digits:vit sliced"]
    record = json.loads((folder / STRUCTURE_FILE).read_text())
    tensors = load_file(str(folder / WEIGHTS_FILE))
    assert record["kind"] == "slicegpt" and record["base"]["spec"] == "digits:vit"
    assert {n: list(t.shape) for n, t in tensors.items()} == {n: e["shape"] for n, e in record["tensors"].items()}
    assert record["slicegpt"]["shortcuts"] == [f"blocks.{i}.{s}" for i in range(2)
                                               for s in ("attn_shortcut", "mlp_shortcut")]
    assert record["slicegpt"]["norms"]["norm"] == [result.kept_width, 64, 1e-5]
    assert {n: s for n, s in record["base"]["shapes"].items()} == {
        n: list(p.shape) for n, p in shared_model("digits:vit").module.named_parameters()}


def test_base_is_loaded_from_the_recorded_spec(saved):
    loaded, result, folder = saved["digits:vit monarch"]
    back = load_structured(folder)
    assert isinstance(back, MonarchResult) and back.base_spec == "digits:vit"
    assert torch.equal(outputs(loaded, back.model), outputs(loaded, result.model))


def test_a_bare_module_needs_a_base(tmp_path):
    vit = shared_model("digits:vit")
    result = slice_model(vit.module, 0.25, calibration=vit.calibration, progress=False)
    assert isinstance(result, SliceResult) and result.base_spec == ""
    result.save(tmp_path)
    with pytest.raises(ValueError, match="bare module .* pass base="):
        load_structured(tmp_path)
    back = load_structured(tmp_path, base=vit.module)
    assert torch.equal(outputs(vit, back.model), outputs(vit, result.model))


def test_missing_and_foreign_files(saved, tmp_path):
    loaded, _, folder = saved["digits:vit sliced"]
    with pytest.raises(ValueError, match="not a folder"):
        load_structured(tmp_path / "nowhere", base=loaded)
    for gone in (STRUCTURE_FILE, WEIGHTS_FILE):
        bad = tmp_path / f"without-{gone}"
        bad.mkdir()
        keep = STRUCTURE_FILE if gone == WEIGHTS_FILE else WEIGHTS_FILE
        (bad / keep).write_bytes((folder / keep).read_bytes())
        with pytest.raises(ValueError, match=f"has no {gone}"):
            load_structured(bad, base=loaded)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / STRUCTURE_FILE).write_text((folder / STRUCTURE_FILE).read_text())
    (pickled / WEIGHTS_FILE).write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_structured(pickled, base=loaded)
    (pickled / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes())
    (pickled / STRUCTURE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_structured(pickled, base=loaded)
    (pickled / STRUCTURE_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a sparsekit structured-model record"):
        load_structured(pickled, base=loaded)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        slice_model(loaded, 0.2, progress=False).save(folder / WEIGHTS_FILE)


def copy_folder(src, dst):
    dst.mkdir()
    for name in (STRUCTURE_FILE, WEIGHTS_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_json_that_does_not_match_the_weights(saved, tmp_path):
    loaded, _, folder = saved["digits:vit sliced"]
    record = json.loads((folder / STRUCTURE_FILE).read_text())

    def write(name, change):
        bad = copy_folder(folder, tmp_path / name)
        r = json.loads(json.dumps(record))
        change(r)
        (bad / STRUCTURE_FILE).write_text(json.dumps(r))
        return bad

    bad = write("shape", lambda r: r["tensors"]["head.weight"].update(shape=[10, 64]))
    with pytest.raises(ValueError, match=r"disagree: head.weight has shape \(10, 64\) in structure.json but "
                                         r"\(10, 44\) in model.safetensors"):
        load_structured(bad, base=loaded)
    bad = write("dtype", lambda r: r["tensors"]["head.weight"].update(dtype="float16"))
    with pytest.raises(ValueError, match="head.weight is float16 in structure.json but float32"):
        load_structured(bad, base=loaded)
    bad = write("missing", lambda r: r["tensors"].pop("blocks.0.attn_shortcut"))
    with pytest.raises(ValueError, match="stored but not described: blocks.0.attn_shortcut"):
        load_structured(bad, base=loaded)
    bad = write("norms", lambda r: r["slicegpt"]["norms"].pop("norm"))
    with pytest.raises(ValueError, match="names the norms"):
        load_structured(bad, base=loaded)
    # weights and JSON agree with each other but not with the architecture: a tensor with no place in it
    bad = copy_folder(folder, tmp_path / "extra")
    tensors = load_file(str(folder / WEIGHTS_FILE))
    tensors["blocks.0.attn.extra"] = torch.zeros(3)
    save_file(tensors, str(bad / WEIGHTS_FILE))
    r = json.loads(json.dumps(record))
    r["tensors"]["blocks.0.attn.extra"] = {"shape": [3], "dtype": "float32"}
    (bad / STRUCTURE_FILE).write_text(json.dumps(r))
    with pytest.raises(ValueError, match="blocks.0.attn.extra has no place in the rebuilt model"):
        load_structured(bad, base=loaded)
    # a tensor the architecture needs, missing from both
    bad = copy_folder(folder, tmp_path / "lacking")
    tensors = load_file(str(folder / WEIGHTS_FILE))
    del tensors["head.bias"]
    save_file(tensors, str(bad / WEIGHTS_FILE))
    r = json.loads(json.dumps(record))
    del r["tensors"]["head.bias"]
    (bad / STRUCTURE_FILE).write_text(json.dumps(r))
    with pytest.raises(ValueError, match=r"not saved \['head.bias'\]"):
        load_structured(bad, base=loaded)
    mon_loaded, _, mon_folder = saved["digits:vit monarch"]
    bad = copy_folder(mon_folder, tmp_path / "layout")
    r = json.loads((mon_folder / STRUCTURE_FILE).read_text())
    r["monarch"]["layout"] = "M = L P R"
    (bad / STRUCTURE_FILE).write_text(json.dumps(r))
    with pytest.raises(ValueError, match="Monarch layout in structure.json"):
        load_structured(bad, base=mon_loaded)


def test_a_folder_for_another_base_model(saved, model_root):
    vit, _, vit_folder = saved["digits:vit sliced"]
    with pytest.raises(ValueError, match="saved from digits:vit .*the base given is digits:mlp.*Load digits:vit"):
        load_structured(vit_folder, base=shared_model("digits:mlp"))
    with pytest.raises(ValueError, match="saved from a DigitsViT .*the base given is a DigitsMLP"):
        load_structured(vit_folder, base=shared_model("digits:mlp").module)
    lm, _, lm_folder = saved["lm:small sliced"]
    tiny = sparsekit.load_model("hf:family/tiny-gpt2")  # the same class, other sizes
    with pytest.raises(ValueError, match="saved from lm:small .*the base given is hf:"):
        load_structured(lm_folder, base=tiny)
    with pytest.raises(ValueError, match=r"saved from another GPT2LMHeadModel \(lm:small\): its dense parameters "
                                         r"differ from the base's"):
        load_structured(lm_folder, base=tiny.module)
    with pytest.raises(ValueError, match="base must be a LoadedModel or an nn.Module"):
        load_structured(vit_folder, base="digits:vit")  # type: ignore[arg-type]


def test_zip_of_the_folder(saved, tmp_path):
    import io
    import zipfile

    from sparsekit.structured import structured_zip

    loaded, result, folder = saved["digits:mlp monarch budget"]
    data = structured_zip(result, "mlp-monarch")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["mlp-monarch/model.safetensors", "mlp-monarch/structure.json"]
        assert archive.read("mlp-monarch/structure.json") == (folder / STRUCTURE_FILE).read_bytes()
        archive.extractall(tmp_path)
    back = load_structured(tmp_path / "mlp-monarch", base=loaded)
    assert torch.equal(outputs(loaded, back.model), outputs(loaded, result.model))
    with pytest.raises(ValueError, match="SliceResult or a MonarchResult"):
        structured_zip(loaded.module)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plain name"):
        structured_zip(result, "../up")
