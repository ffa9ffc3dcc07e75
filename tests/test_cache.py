"""cache: stable keys from JSON-serialised configs and content hashes, the disk cache location, tensor
digests and model fingerprints, checked against hashlib by hand and field-by-field changes; and a cache
consumer that promises not to trust a damaged entry (the digits weights) fed one on purpose."""
import copy
import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import diskcache
import numpy as np
import pytest
import torch
from torch import nn

from sparsekit import cache
from sparsekit.cache import cache_dir, get_cache, make_key, model_fingerprint, tensor_digest
from sparsekit.sparsify import SparsifyConfig

ROOT = Path(__file__).resolve().parents[1]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass
class Inner:
    size: int = 3
    name: str = "x"


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    ratio: float = 0.5
    flags: tuple = (1, 2)
    extra: dict = dataclasses.field(default_factory=lambda: {"b": 1, "a": None})
    blob: bytes = b"abc"
    on: bool = False


# make_key ------------------------------------------------------------------------------------------

def test_make_key_by_hand():
    # kind, then the SHA-256 of the compact JSON of the parts with sorted keys.
    assert make_key("k", {"b": 1, "a": [1, 2.5]}, "x", None, True) == \
        "k:" + sha('[{"a":[1,2.5],"b":1},"x",null,true]')
    assert make_key("k") == "k:" + sha("[]")
    # A dataclass: its type name and its fields; bytes: their SHA-256, never the bytes themselves.
    want = ('[{"__dc__":"Outer","blob":{"sha256":"%s"},"extra":{"a":null,"b":1},"flags":[1,2],'
            '"inner":{"__dc__":"Inner","name":"x","size":3},"on":false,"ratio":0.5}]') % hashlib.sha256(b"abc").hexdigest()
    assert make_key("dc", Outer()) == "dc:" + sha(want)


def test_equal_configs_give_equal_keys():
    assert make_key("s", SparsifyConfig()) == make_key("s", SparsifyConfig())
    a = SparsifyConfig(pattern="unstructured", sparsity=0.7, method="wanda", seed=3)
    b = SparsifyConfig.from_json(a.to_json())
    assert a is not b and make_key("s", a) == make_key("s", b)
    assert make_key("d", {"a": 1, "b": 2}) == make_key("d", {"b": 2, "a": 1})  # dict order is no part
    assert make_key("o", Outer()) == make_key("o", copy.deepcopy(Outer()))


def changed(value):
    """Another value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(f"no change rule for {type(value).__name__}")


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(SparsifyConfig)])
def test_any_config_field_change_changes_the_key(field):
    base = SparsifyConfig()
    other = dataclasses.replace(base, **{field: changed(getattr(base, field))})
    assert make_key("s", other) != make_key("s", base)


def test_any_part_change_changes_the_key():
    base = make_key("o", Outer(), 1)
    variants = [
        make_key("p", Outer(), 1),  # the kind
        make_key("o", Outer(), 2),
        make_key("o", Outer(), 1, None),  # one part more
        make_key("o", Outer(inner=Inner(size=4)), 1),  # a nested field
        make_key("o", Outer(ratio=0.25), 1),
        make_key("o", Outer(flags=(2, 1)), 1),  # order inside a tuple counts
        make_key("o", Outer(extra={"b": 1, "a": 0}), 1),
        make_key("o", Outer(blob=b"abd"), 1),
        make_key("o", Outer(on=True), 1),
        make_key("o", Inner(), 1),
    ]
    assert len({base, *variants}) == len(variants) + 1


@dataclasses.dataclass
class Twin:  # same fields as Inner under another name
    size: int = 3
    name: str = "x"


def test_a_dataclass_type_is_part_of_its_key():
    assert make_key("t", Twin()) != make_key("t", Inner())


@pytest.mark.parametrize("bad", [torch.zeros(2), object(), {1, 2}, np.int64(1), Path("x"), Inner])
def test_unserialisable_parts_are_refused(bad):
    # Never a pickled or repr'd object: a key from anything that is not plain JSON data is refused.
    with pytest.raises(TypeError, match="cannot build a cache key from"):
        make_key("bad", {"a": [bad]})


def test_keys_are_the_same_in_another_process():
    # No per-process salt (str hashing is randomised per process): the same request maps to the same
    # entry after a restart.
    code = ("from sparsekit.cache import make_key; from sparsekit.sparsify import SparsifyConfig; "
            "print(make_key('s', SparsifyConfig(sparsity=0.7), {'b': b'x', 'a': (1, 2)}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == make_key("s", SparsifyConfig(sparsity=0.7), {"b": b"x", "a": (1, 2)})


# tensor_digest ------------------------------------------------------------------------------------

def hand_digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(np.ascontiguousarray(t.detach().numpy()).tobytes())
    return h.hexdigest()


def test_tensor_digest_by_hand():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, 4, generator=g), torch.arange(5, dtype=torch.int64), torch.randn(2, generator=g).half(),
               torch.zeros(0, 3), torch.tensor(7.0)]
    assert tensor_digest(*tensors) == hand_digest(*tensors)
    assert tensor_digest() == hashlib.sha256().hexdigest()


def test_tensor_digest_sees_values_dtypes_shapes_and_order():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 6, generator=g), torch.randn(3, generator=g)
    base = tensor_digest(a, b)
    bumped = a.clone()
    bumped[2, 5] = torch.nextafter(bumped[2, 5], torch.tensor(1e9))  # one ulp in one entry
    same_bytes = a.view(torch.int32)  # the same bytes read as another dtype
    digests = [tensor_digest(bumped, b), tensor_digest(same_bytes, b), tensor_digest(a.reshape(6, 4), b),
               tensor_digest(b, a), tensor_digest(a), tensor_digest(torch.cat([a.flatten(), b]))]
    assert len({base, *digests}) == len(digests) + 1
    # Layout and autograd are no part of the content.
    assert tensor_digest(a.t().contiguous().t(), b) == base
    assert tensor_digest(nn.Parameter(a.clone()), b) == base
    assert tensor_digest(a.clone(), b.clone()) == base


# model_fingerprint --------------------------------------------------------------------------------

def net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).to(dtype)


def test_model_fingerprint_equal_state_equal_fingerprint():
    a, b = net(), net()
    assert a is not b and model_fingerprint(a) == model_fingerprint(b) == model_fingerprint(copy.deepcopy(a))
    assert len(model_fingerprint(a)) == len("weights:") + 64


def test_model_fingerprint_changes_with_values_names_dtypes_and_buffers():
    base = model_fingerprint(net())
    value = net()
    with torch.no_grad():
        value[2].weight[1, 3] += 1e-3
    buffers = net()
    buffers[1].running_mean.add_(1.0)  # a buffer, not a parameter
    renamed = nn.Sequential()
    for name, module in zip(("first", "1", "2"), net()):
        renamed.add_module(name, module)
    others = [value, buffers, renamed, net(dtype=torch.float64), net(seed=1)]
    fingerprints = [model_fingerprint(m) for m in others]
    assert len({base, *fingerprints}) == len(fingerprints) + 1


def test_model_fingerprint_is_remembered_per_module(monkeypatch):
    module = net()
    first = model_fingerprint(module)

    def no_second_pass(*tensors):
        raise AssertionError("fingerprint computed again for the same module")

    monkeypatch.setattr(cache, "tensor_digest", no_second_pass)
    assert model_fingerprint(module) == first


# The cache location and the disk cache ------------------------------------------------------------

def test_cache_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", "~/elsewhere")
    assert cache_dir() == tmp_path / "home" / "elsewhere"
    monkeypatch.delenv("SPARSEKIT_CACHE_DIR")
    assert cache_dir() == tmp_path / "home" / ".cache" / "sparsekit"


def test_get_cache_follows_the_environment_and_survives_a_reopen(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "one"))
    one = get_cache()
    assert (tmp_path / "one").is_dir() and get_cache() is one  # one cache object per folder
    key = make_key("test", {"a": 1})
    one.set(key, b"payload")
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "two"))
    two = get_cache()
    assert two is not one and key not in two
    # What a restarted process sees: a fresh cache object on the same folder.
    with diskcache.Cache(str(tmp_path / "one")) as reopened:
        assert reopened.get(key) == b"payload"


# A consumer's promise: a damaged entry is recomputed, not trusted ---------------------------------

@pytest.mark.parametrize("damage", ["garbage", "stale", "not bytes"])
def test_damaged_digits_entry_is_retrained_and_replaced(damage, tmp_cache, monkeypatch):
    from safetensors.torch import load, save

    from sparsekit.models import digits

    config = digits.DEFAULT_TRAIN_CONFIGS["mlp"]
    key = make_key("digits-model", "mlp", dataclasses.asdict(config), digits.VERSION)
    planted = {
        "garbage": b"\x00not a safetensors file" * 8,
        "stale": save({"fc1.weight": torch.zeros(3, 3)}),  # readable, but not this model's tensors
        "not bytes": "a string",
    }[damage]
    get_cache().set(key, planted)
    trained = []

    def quick_train(arch, config, data, progress=None):  # a fresh model instead of a training run
        trained.append(arch)
        return digits.build_digits_model(arch).eval()

    monkeypatch.setattr(digits, "train_digits_model", quick_train)
    model, info = digits.trained_digits_model("mlp", use_bundled=False)
    assert trained == ["mlp"] and info["source"] == "trained"
    stored = get_cache().get(key)
    assert isinstance(stored, bytes) and stored != planted
    assert set(load(stored)) == set(model.state_dict())
    # The replaced entry is used next time.
    again, info = digits.trained_digits_model("mlp", use_bundled=False)
    assert info["source"] == "cache" and trained == ["mlp"]
    assert model_fingerprint(again) == model_fingerprint(model)
