"""An interrupted calibrated ``sparsify`` (Wanda, SparseGPT) goes on from its finished layers.

The run is interrupted (KeyboardInterrupt, as Ctrl-C raises it) from its progress callback once k layers
are finished; the same call run again takes those k layers from the disk cache, computes only the
others, and returns exactly (masks, weights, notes) what an uninterrupted run returns. Bad entries are
computed again; other inputs never take them; a finished run leaves nothing behind.
"""
from __future__ import annotations

import pytest
import torch

import sparsekit
from sparsekit import SparsifyConfig, pruned_layers
from sparsekit.cache import get_cache, model_fingerprint
from sparsekit.pruned_layers import PrunedLayerStore, StoredLayer

from conftest import shared_model

pytestmark = pytest.mark.usefixtures("one_thread", "tmp_cache")


@pytest.fixture(autouse=True)
def write_at_once(monkeypatch):
    monkeypatch.setattr(pruned_layers, "CHECKPOINT_AFTER_S", 0.0)


@pytest.fixture
def computed(monkeypatch) -> list[str]:
    """Names of the layers computed (not taken from the store) by every run in the test."""
    names: list[str] = []
    real = PrunedLayerStore.put

    def put(self, name, mask, weight, note):
        names.append(name)
        real(self, name, mask, weight, note)

    monkeypatch.setattr(PrunedLayerStore, "put", put)
    return names


class Interrupt:
    """A progress callback that raises KeyboardInterrupt when the method reaches layer ``after + 1``."""

    def __init__(self, method: str, after: int) -> None:
        self.method, self.after, self.seen = method, after, 0

    def __call__(self, fraction: float, message: str) -> None:
        if message.startswith(f"{self.method}: "):
            if self.seen == self.after:
                raise KeyboardInterrupt
            self.seen += 1


def _same(a: sparsekit.SparsifyResult, b: sparsekit.SparsifyResult) -> None:
    assert list(a.masks) == list(b.masks)
    for name in a.masks:
        assert torch.equal(a.masks[name], b.masks[name]), name
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.notes == b.notes
    assert [r.kept for r in a.report] == [r.kept for r in b.report]


CASES = [
    ("digits:vit", SparsifyConfig(method="wanda", pattern="nm", n=2, m=4), 5),
    ("digits:vit", SparsifyConfig(method="sparsegpt", pattern="unstructured", sparsity=0.6), 6),
    ("digits:vit", SparsifyConfig(method="sparsegpt", pattern="nm", n=2, m=4, calibration_order="layer"), 3),
    ("digits:cnn", SparsifyConfig(method="sparsegpt", pattern="unstructured", sparsity=0.5), 1),
    ("digits:vit", SparsifyConfig(method="wanda", pattern="unstructured", sparsity=0.7, allocation="owl"), 4),
    ("lm:small", SparsifyConfig(method="sparsegpt", pattern="nm", n=2, m=4, layers="all", exclude="lm_head"), 2),
]


@pytest.mark.parametrize("spec,config,after", CASES, ids=lambda v: v.label() if hasattr(v, "label") else str(v))
def test_an_interrupted_run_goes_on_from_its_finished_layers_and_equals_an_uninterrupted_one(
        spec, config, after, computed):
    loaded = shared_model(spec)
    before = model_fingerprint(loaded.module)
    with pytest.raises(KeyboardInterrupt):
        sparsekit.sparsify(loaded, config, progress=Interrupt(config.method, after))
    finished = list(computed)
    assert len(finished) == after
    computed.clear()

    resumed = sparsekit.sparsify(loaded, config, progress=False)
    assert resumed.resumed_layers == finished  # every finished layer taken, in order ...
    assert not set(computed) & set(finished)  # ... and none of them computed again
    assert len(computed) + after == len(resumed.masks) > after

    fresh = sparsekit.sparsify(loaded, config, progress=False, resume=False)
    _same(resumed, fresh)
    assert fresh.resumed_layers == []
    # the shared model was never changed, and a finished run leaves no layer behind
    assert model_fingerprint(loaded.module) == before
    computed.clear()
    again = sparsekit.sparsify(loaded, config, progress=False)
    assert again.resumed_layers == [] and len(computed) == len(again.masks)


def test_other_inputs_do_not_take_the_layers_of_an_interrupted_run(computed):
    vit = shared_model("digits:vit")
    config = SparsifyConfig(method="wanda", pattern="nm", n=2, m=4)
    with pytest.raises(KeyboardInterrupt):
        sparsekit.sparsify(vit, config, progress=Interrupt("wanda", 4))
    other_pattern = sparsekit.sparsify(vit, SparsifyConfig(method="wanda", pattern="nm", n=1, m=4), progress=False)
    other_method = sparsekit.sparsify(vit, SparsifyConfig(method="sparsegpt", pattern="nm", n=2, m=4), progress=False)
    calib = vit.calibration[:16]
    other_data = sparsekit.sparsify(vit, config, progress=False, calibration=calib)
    assert other_pattern.resumed_layers == other_method.resumed_layers == other_data.resumed_layers == []
    _same(other_data, sparsekit.sparsify(vit, config, progress=False, calibration=calib, resume=False))
    assert len(sparsekit.sparsify(vit, config, progress=False).resumed_layers) == 4  # still there for its own call


def test_damaged_or_misfit_entries_are_computed_again(computed, monkeypatch):
    vit = shared_model("digits:vit")
    config = SparsifyConfig(method="sparsegpt", pattern="nm", n=2, m=4)
    keys: dict[str, str] = {}
    real = PrunedLayerStore._layer_key
    monkeypatch.setattr(PrunedLayerStore, "_layer_key",
                        lambda self, name: keys.setdefault(name, real(self, name)))
    with pytest.raises(KeyboardInterrupt):
        sparsekit.sparsify(vit, config, progress=Interrupt("sparsegpt", 3))
    written = [keys[name] for name in computed]
    assert len(written) == 3 and all(get_cache().get(k) is not None for k in written)
    cache = get_cache()
    cache.set(written[0], b"not a safetensors entry")
    misfit = StoredLayer(torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 5), "")
    cache.set(written[1], misfit.to_bytes())
    resumed = sparsekit.sparsify(vit, config, progress=False)
    assert len(resumed.resumed_layers) == 1  # only the intact third one
    _same(resumed, sparsekit.sparsify(vit, config, progress=False, resume=False))


def test_a_stored_layer_reads_back_exactly_and_refuses_bad_bytes():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(7, 13, generator=gen) > 0.5
    weight = torch.randn(7, 13, generator=gen, dtype=torch.float64) * mask
    back = StoredLayer.from_bytes(StoredLayer(mask, weight, "damp raised").to_bytes(), (7, 13))
    assert torch.equal(back.mask, mask) and back.weight is not None and torch.equal(back.weight, weight)
    assert back.weight.dtype == torch.float64 and back.note == "damp raised"
    only_mask = StoredLayer.from_bytes(StoredLayer(mask).to_bytes(), (7, 13))
    assert torch.equal(only_mask.mask, mask) and only_mask.weight is None
    with pytest.raises(ValueError, match="does not fit"):
        StoredLayer.from_bytes(StoredLayer(mask).to_bytes(), (13, 7))
    with pytest.raises(ValueError, match="unreadable"):
        StoredLayer.from_bytes(b"\x00" * 40, (7, 13))


def test_a_short_run_writes_nothing_and_resume_false_never_writes(monkeypatch, computed):
    vit = shared_model("digits:vit")
    config = SparsifyConfig(method="wanda", pattern="nm", n=2, m=4)
    monkeypatch.setattr(pruned_layers, "CHECKPOINT_AFTER_S", 3600.0)
    with pytest.raises(KeyboardInterrupt):
        sparsekit.sparsify(vit, config, progress=Interrupt("wanda", 5))
    assert sparsekit.sparsify(vit, config, progress=False).resumed_layers == []
    monkeypatch.setattr(pruned_layers, "CHECKPOINT_AFTER_S", 0.0)
    with pytest.raises(KeyboardInterrupt):
        sparsekit.sparsify(vit, config, progress=Interrupt("wanda", 5), resume=False)
    assert sparsekit.sparsify(vit, config, progress=False).resumed_layers == []
