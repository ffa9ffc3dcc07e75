"""The method registry: a new method is one registration, and sparsify, the config and the app read it."""
import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.methods import CALIBRATED_METHODS, METHODS, REGISTRY, Method, get_method, register


@pytest.fixture
def inverse():
    # A made-up method (scores 1/|w|: keeps the smallest weights) registered for this test only.
    method = register(Method(name="test-inverse", label="inverse", needs_calibration=False,
                             layer_scores=lambda weight, name, config: 1.0 / weight.abs(), help="keeps the smallest |w|"))
    yield method
    del REGISTRY[method.name]


def test_registered_methods():
    assert METHODS == ("magnitude", "random", "wanda", "sparsegpt", "taylor")
    assert CALIBRATED_METHODS == ("wanda", "sparsegpt", "taylor")
    assert get_method("sparsegpt").calibration_order and not get_method("taylor").calibration_order
    assert get_method("wanda").layer_local and not get_method("magnitude").layer_local
    with pytest.raises(ValueError, match="method must be one of magnitude"):
        get_method("movement")


def test_a_new_method_is_one_registration(inverse):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 3))
    res = sparsekit.sparsify(model, sparsekit.SparsifyConfig(method="test-inverse"))
    w = model[0].weight.detach()
    # 2:4 on 1/|w| keeps the two smallest |w| of every group: the opposite of magnitude.
    magnitude = sparsekit.nm_mask(w, 2, 4)
    assert torch.equal(res.masks["0"], ~magnitude)
    assert sparsekit.SparsifyConfig(method="test-inverse", pattern="unstructured", scope="global").validate() is None


def test_registration_needs_one_way_to_score():
    with pytest.raises(ValueError, match="exactly one of"):
        register(Method(name="nothing", label="x", needs_calibration=False, help="x"))
    with pytest.raises(ValueError, match="already registered"):
        register(Method(name="magnitude", label="x", needs_calibration=False, help="x",
                        layer_scores=lambda w, n, c: w))
